"use client";

import { useEffect, useRef } from "react";

import { MovieStats } from "@/lib/api";
import { title } from "@/lib/format";

import { RateControl } from "./RateControl";

/** One movie opened from the search or the popular list; rate it when a user is chosen. */
export function MovieDetail({ movie, canRate, onRate, onClose }: {
  movie: MovieStats;
  canRate: boolean;
  onRate: (movie: MovieStats, rating: number) => void;
  onClose: () => void;
}) {
  const heading = useRef<HTMLHeadingElement>(null);
  useEffect(() => heading.current?.focus(), [movie.movie_id]);
  const name = title(movie);
  return (
    <section className="detail" aria-label={`Movie ${name}`} data-testid="movie-detail"
      onKeyDown={(e) => e.key === "Escape" && onClose()}>
      <h2 tabIndex={-1} ref={heading}>{name}</h2>
      <p>{movie.genres.join(" · ") || "no genres listed"}</p>
      <p>
        {movie.rating_count != null ? `${movie.rating_count.toLocaleString("en")} ratings` : "no ratings"}
        {movie.rating_mean != null && `, mean ${movie.rating_mean.toFixed(2)}`}
      </p>
      {canRate ? <RateControl label={name} onRate={(rating) => onRate(movie, rating)} />
        : <p className="hint">Choose a user to rate it.</p>}
      <button type="button" onClick={onClose}>Close</button>
    </section>
  );
}
