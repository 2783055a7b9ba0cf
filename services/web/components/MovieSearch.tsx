"use client";

import { useEffect, useState } from "react";

import { api, MovieStats } from "@/lib/api";
import { describeError, title } from "@/lib/format";

const DEBOUNCE_MS = 200;

/** Search as you type; choosing a result opens it. */
export function MovieSearch({ onOpen }: { onOpen: (movie: MovieStats) => void }) {
  const [query, setQuery] = useState("");
  const [results, setResults] = useState<{ query: string; movies: MovieStats[] } | null>(null);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    const text = query.trim();
    let live = true;
    const timer = setTimeout(async () => {
      if (!text) {
        setResults(null);
        setError(null);
        return;
      }
      try {
        const found = await api.searchMovies(text, 8);
        if (live) {
          setResults({ query: text, movies: found });
          setError(null);
        }
      } catch (e) {
        if (live) setError(describeError(e));
      }
    }, DEBOUNCE_MS);
    return () => {
      live = false;
      clearTimeout(timer);
    };
  }, [query]);

  return (
    <div className="search">
      <label htmlFor="search">Search movies</label>
      <input id="search" type="search" autoComplete="off" placeholder="a title, e.g. matrix" value={query}
        onChange={(e) => setQuery(e.target.value)} />
      {error && <p className="error" role="alert">{error}</p>}
      {results && (results.movies.length === 0
        ? <p className="empty" data-testid="search-none">No title matches “{results.query}”.</p>
        : (
          <ul className="search-results" data-testid="search-results" data-query={results.query}>
            {results.movies.map((movie) => (
              <li key={movie.movie_id}>
                <button type="button" className="link" onClick={() => onOpen(movie)}>{title(movie)}</button>
              </li>
            ))}
          </ul>
        ))}
    </div>
  );
}
