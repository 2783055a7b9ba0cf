import type { NextConfig } from "next";
import { PHASE_DEVELOPMENT_SERVER } from "next/constants";

// The API routes the page calls. `npm run dev` (port 3000) forwards them to a running API
// (MOVIEREC_API, default http://127.0.0.1:8000); the build is a static export that the API itself
// serves at /, so the page and the API share one origin and need no CORS.
const API_ROUTES = ["recommend", "update_user", "search_movies", "user_stats", "user_history",
  "popular_movies", "health", "stats"];

export default function config(phase: string): NextConfig {
  if (phase === PHASE_DEVELOPMENT_SERVER) {
    const api = (process.env.MOVIEREC_API ?? "http://127.0.0.1:8000").replace(/\/$/, "");
    return {
      async rewrites() {
        return API_ROUTES.flatMap((route) => [
          { source: `/${route}`, destination: `${api}/${route}` },
          { source: `/${route}/:rest*`, destination: `${api}/${route}/:rest*` },
        ]);
      },
    };
  }
  return { output: "export", images: { unoptimized: true }, poweredByHeader: false };
}
