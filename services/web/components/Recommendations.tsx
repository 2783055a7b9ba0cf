"use client";

import { RecommendedMovie, RecommendResponse } from "@/lib/api";
import { becauseText, formatMs, formatScore, title } from "@/lib/format";

import { RateControl } from "./RateControl";

export type RecsState =
  | { state: "idle" }
  | { state: "loading"; previous?: RecommendResponse }
  | { state: "ok"; data: RecommendResponse; latencyMs: number }
  | { state: "error"; message: string; status: number };

function Card({ movie, rank, onRate, busy }: {
  movie: RecommendedMovie;
  rank: number;
  onRate: (movie: RecommendedMovie, rating: number) => void;
  busy: boolean;
}) {
  const name = title(movie);
  const because = becauseText(movie.because);
  return (
    <li className="card" data-testid="card" data-movie-id={movie.movie_id}>
      <h3><span className="rank">{rank}.</span> {name}</h3>
      <p className="genres-line" data-testid="card-genres">{movie.genres.join(" · ")}</p>
      <p className="score">score <b>{formatScore(movie.score)}</b></p>
      {because && <p className="because">{because}</p>}
      <RateControl label={name} disabled={busy} onRate={(rating) => onRate(movie, rating)} />
    </li>
  );
}

/** The top-k as cards, with strategy, served_by and latency; loading, empty and error states. */
export function Recommendations({ recs, onRate, onRetry, updateMs, rating }: {
  recs: RecsState;
  onRate: (movie: RecommendedMovie, rating: number) => void;
  onRetry: () => void;
  updateMs: number | null;
  rating: boolean;
}) {
  if (recs.state === "idle") {
    return <p className="empty" data-testid="recs-empty">Pick a user, a random one or a new one to see recommendations.</p>;
  }
  if (recs.state === "error") {
    return (
      <div className="error-box" role="alert" data-testid="recs-error" data-status={recs.status}>
        <p>{recs.message}</p>
        <button type="button" onClick={onRetry}>Retry</button>
      </div>
    );
  }
  const data = recs.state === "ok" ? recs.data : recs.previous;
  if (!data) return <p className="loading" aria-busy="true" data-testid="recs-loading">Loading recommendations…</p>;
  return (
    <section aria-label="Recommendations" aria-busy={recs.state === "loading"} data-testid="recs"
      data-state={recs.state}>
      <p className="meta" data-testid="recs-meta">
        <span className={`strategy strategy-${data.strategy}`} data-testid="strategy">strategy: {data.strategy}</span>
        <span>method {data.method}</span>
        <span data-testid="served-by">served by {data.served_by}</span>
        {recs.state === "ok" && <span data-testid="latency">{formatMs(recs.latencyMs)}</span>}
        {data.cached && <span>cached</span>}
        {updateMs !== null && <span data-testid="update-latency" data-ms={updateMs.toFixed(1)}>
          rating → new list {formatMs(updateMs)}</span>}
        {recs.state === "loading" && <span>updating…</span>}
      </p>
      {data.items.length === 0
        ? <p className="empty" data-testid="recs-none">No movie matches these filters.</p>
        : (
          <ol className="cards">
            {data.items.map((movie, i) => (
              <Card key={movie.movie_id} movie={movie} rank={i + 1} onRate={onRate} busy={rating} />
            ))}
          </ol>
        )}
    </section>
  );
}
