// The movierec HTTP API as the page uses it: typed bodies, one error type whose message is the API's
// own `detail` (which names the field), and status 0 when the API does not answer at all.

export type Method = "torchserve" | "faiss" | "qdrant" | "popular";
export const METHODS: Method[] = ["torchserve", "faiss", "qdrant", "popular"];

export interface Movie {
  movie_id: number;
  title: string | null;
  year: number | null;
  genres: string[];
}

export interface RecommendedMovie extends Movie {
  score: number;
  because: string[];
}

export interface RecommendResponse {
  user_id: number;
  strategy: "sequence" | "popular";
  method: Method;
  served_by: string;
  model_version: string | null;
  index_version: string | null;
  cached: boolean;
  items: RecommendedMovie[];
}

export interface MovieStats extends Movie {
  rating_count: number | null;
  rating_mean: number | null;
}

export interface UserStats {
  user_id: number;
  n_ratings: number;
  mean_rating: number | null;
  first_timestamp: number;
  last_timestamp: number;
  top_genres: { genre: string; count: number }[];
}

export interface HistoryItem extends Movie {
  rating: number | null;
  timestamp: number;
}

export interface Health {
  status: "ok" | "degraded" | "down";
  components: Record<string, { ok: boolean; detail: string }>;
}

export interface Stats {
  counts: { movies: number; ratings: number; users: number };
  model_version: string | null;
  index_versions: Record<string, string>;
  cache: { kind: string; hits: number; misses: number; hit_ratio: number };
}

export interface UpdateAck {
  user_id: number;
  movie_id: number;
  rating: number;
  n_ratings: number;
}

/** The body of POST /recommend: what the form holds, numbers parsed, empty fields left out. */
export interface RecommendBody {
  user_id: number;
  k: number | string;
  method: Method;
  genres?: string[];
  year_min?: number | string;
  year_max?: number | string;
  min_rating?: number | string;
}

/** A failed call: `status` 0 when the API did not answer, else the HTTP status and the API's detail. */
export class ApiError extends Error {
  constructor(readonly status: number, readonly detail: string) {
    super(status === 0 ? detail : `${status}: ${detail}`);
    this.name = "ApiError";
  }
}

/** The readable part of an error body: FastAPI's `detail` (a string, or pydantic's list of errors). */
export function detailOf(body: unknown, fallback: string): string {
  if (body && typeof body === "object" && "detail" in body) {
    const detail = (body as { detail: unknown }).detail;
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      return detail
        .map((e: { loc?: unknown[]; msg?: string }) => {
          const loc = (e.loc ?? []).filter((p) => !["body", "query", "path"].includes(String(p)));
          return `${loc.join(".") || "body"}: ${e.msg ?? "invalid"}`;
        })
        .join("; ");
    }
  }
  return fallback;
}

type Fetch = typeof fetch;

export class Api {
  constructor(private readonly base = "", private readonly fetchImpl: Fetch = (...a) => fetch(...a)) {}

  private async call<T>(path: string, init?: RequestInit, acceptStatus: number[] = []): Promise<T> {
    let response: Response;
    try {
      response = await this.fetchImpl(this.base + path, {
        ...init,
        headers: { "content-type": "application/json", ...(init?.headers ?? {}) },
        cache: "no-store",
      });
    } catch {
      throw new ApiError(0, "The API is not answering");
    }
    const text = await response.text();
    let body: unknown = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      body = null;
    }
    if (!response.ok && !acceptStatus.includes(response.status)) {
      throw new ApiError(response.status, detailOf(body, response.statusText || `HTTP ${response.status}`));
    }
    if (body === null) throw new ApiError(response.status, `${path} did not answer with JSON`);
    return body as T;
  }

  private post<T>(path: string, body: unknown): Promise<T> {
    return this.call<T>(path, { method: "POST", body: JSON.stringify(body) });
  }

  recommend(body: RecommendBody): Promise<RecommendResponse> {
    return this.post("/recommend", body);
  }

  /** With API_KEY set on the server, writes need its value in X-API-Key (else 401). */
  updateUser(userId: number, movieId: number, rating: number, apiKey = ""): Promise<UpdateAck> {
    return this.call("/update_user", {
      method: "POST",
      body: JSON.stringify({ user_id: userId, movie_id: movieId, rating }),
      headers: apiKey ? { "x-api-key": apiKey } : {},
    });
  }

  async searchMovies(query: string, limit = 8): Promise<MovieStats[]> {
    return (await this.post<{ results: MovieStats[] }>("/search_movies", { query, limit })).results;
  }

  userStats(userId: number): Promise<UserStats> {
    return this.call(`/user_stats/${userId}`);
  }

  async userHistory(userId: number, limit = 20): Promise<HistoryItem[]> {
    return (await this.call<{ items: HistoryItem[] }>(`/user_history/${userId}?limit=${limit}`)).items;
  }

  async popularMovies(limit: number, genres: string[] = []): Promise<MovieStats[]> {
    const query = new URLSearchParams({ limit: String(limit) });
    for (const genre of genres) query.append("genres", genre);
    return (await this.call<{ results: MovieStats[] }>(`/popular_movies?${query}`)).results;
  }

  health(): Promise<Health> {
    return this.call("/health", undefined, [503]); // 503 still says which part is down
  }

  stats(): Promise<Stats> {
    return this.call("/stats");
  }
}

/** The page's client: same origin (the API serves the page; `npm run dev` forwards these routes to it). */
export const api = new Api();
