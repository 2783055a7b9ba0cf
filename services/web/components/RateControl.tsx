"use client";

import { useState } from "react";

import { RATING_STEPS, stars } from "@/lib/format";

/** A half-star rating: a select (keyboard-friendly) and a button that sends it. */
export function RateControl({ label, onRate, disabled }: {
  label: string;
  onRate: (rating: number) => void;
  disabled?: boolean;
}) {
  const [rating, setRating] = useState(4);
  return (
    <div className="rate">
      <select aria-label={`Your rating of ${label}`} value={rating} disabled={disabled}
        onChange={(e) => setRating(Number(e.target.value))}>
        {RATING_STEPS.map((step) => (
          <option key={step} value={step}>{step.toFixed(1)} {stars(step)}</option>
        ))}
      </select>
      <button type="button" disabled={disabled} onClick={() => onRate(rating)} aria-label={`Rate ${label}`}>
        Rate
      </button>
    </div>
  );
}
