// Pure helpers of the page: what the form sends and how answers read. Tested by format.test.ts.

import { ApiError, Method, Movie, RecommendBody } from "./api";

export interface FormState {
  method: Method;
  k: string;
  genres: string[];
  yearMin: string;
  yearMax: string;
  minRating: string;
}

export const DEFAULT_FORM: FormState = { method: "torchserve", k: "10", genres: [], yearMin: "", yearMax: "", minRating: "" };

/** A number when the text is one, else the text itself: the API then says which field is wrong. */
export function numberOrText(text: string): number | string {
  const trimmed = text.trim();
  const value = Number(trimmed);
  return trimmed !== "" && Number.isFinite(value) ? value : trimmed;
}

/** The POST /recommend body for a user and the form; empty optional fields are left out. */
export function recommendBody(userId: number, form: FormState): RecommendBody {
  const body: RecommendBody = { user_id: userId, k: numberOrText(form.k), method: form.method };
  if (form.genres.length) body.genres = [...form.genres];
  if (form.yearMin.trim()) body.year_min = numberOrText(form.yearMin);
  if (form.yearMax.trim()) body.year_max = numberOrText(form.yearMax);
  if (form.minRating.trim()) body.min_rating = numberOrText(form.minRating);
  return body;
}

/** 5.0, 4.5, ..., 0.5: the ratings /update_user accepts. */
export const RATING_STEPS: number[] = Array.from({ length: 10 }, (_, i) => (10 - i) / 2);

/** "★★★½" for 3.5: whole stars and a half. */
export function stars(rating: number): string {
  const whole = Math.floor(rating);
  return "★".repeat(whole) + (rating - whole >= 0.5 ? "½" : "");
}

export function title(movie: Movie): string {
  const name = movie.title ?? `movie ${movie.movie_id}`;
  return movie.year != null && !name.includes(`(${movie.year})`) ? `${name} (${movie.year})` : name;
}

/** "because you watched A, B and C" from the `because` field, or "" when it is empty. */
export function becauseText(because: string[]): string {
  if (!because.length) return "";
  const names = because.length === 1 ? because[0] : `${because.slice(0, -1).join(", ")} and ${because.at(-1)}`;
  return `because you watched ${names}`;
}

export function formatScore(score: number): string {
  return Math.abs(score) >= 100 ? score.toFixed(0) : score.toFixed(3);
}

export function formatMs(ms: number): string {
  return ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`;
}

export function formatDate(unixSeconds: number): string {
  return new Date(unixSeconds * 1000).toISOString().slice(0, 10);
}

/** Every genre of these movies, sorted, without "(no genres listed)". */
export function genresOf(movies: Movie[]): string[] {
  const all = new Set(movies.flatMap((m) => m.genres));
  all.delete("(no genres listed)");
  return [...all].sort();
}

/** What the page says about a failed call. */
export function describeError(error: unknown): string {
  if (error instanceof ApiError) {
    if (error.status === 0) return "The API is not answering. Is it running? (make demo, or movierec serve)";
    if (error.status >= 500) return `The API failed (${error.status}): ${error.detail}`;
    return error.detail;
  }
  return error instanceof Error ? error.message : String(error);
}
