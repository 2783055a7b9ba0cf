"use client";

import { useEffect, useState } from "react";

import { api, MovieStats } from "@/lib/api";
import { describeError, title } from "@/lib/format";

import { RateControl } from "./RateControl";

/** Popular movies (optionally of some genres): to browse, and for a new user to rate a first few. */
export function PopularList({ genres, limit, heading, canRate, onOpen, onRate, tick }: {
  genres: string[];
  limit: number;
  heading: string;
  canRate: boolean;
  onOpen: (movie: MovieStats) => void;
  onRate: (movie: MovieStats, rating: number) => void;
  tick: number;
}) {
  const [movies, setMovies] = useState<MovieStats[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const key = genres.join("|");

  useEffect(() => {
    let live = true;
    api.popularMovies(limit, key ? key.split("|") : [])
      .then((found) => { if (live) { setMovies(found); setError(null); } })
      .catch((e: unknown) => { if (live) setError(describeError(e)); });
    return () => {
      live = false;
    };
  }, [key, limit, tick]);

  return (
    <section className="panel" aria-label={heading}>
      <h2>{heading}</h2>
      {error && <p className="error" role="alert">{error}</p>}
      {!movies && !error && <p className="loading">Loading…</p>}
      {movies && (
        <ol className="popular">
          {movies.map((movie) => (
            <li key={movie.movie_id}>
              <button type="button" className="link" onClick={() => onOpen(movie)}>{title(movie)}</button>
              <span className="count">{movie.rating_count?.toLocaleString("en")} ratings</span>
              {canRate && <RateControl label={title(movie)} onRate={(rating) => onRate(movie, rating)} />}
            </li>
          ))}
        </ol>
      )}
    </section>
  );
}
