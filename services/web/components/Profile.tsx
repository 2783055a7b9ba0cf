"use client";

import { useEffect, useState } from "react";

import { api, ApiError, HistoryItem, UserStats } from "@/lib/api";
import { describeError, formatDate, stars, title } from "@/lib/format";

type ProfileState =
  | { state: "loading" }
  | { state: "ok"; stats: UserStats; history: HistoryItem[] }
  | { state: "unknown"; detail: string }
  | { state: "error"; message: string };

/** The user's stats (/user_stats) and newest ratings (/user_history); refreshed when `tick` changes. */
export function Profile({ userId, isNew, tick }: { userId: number; isNew: boolean; tick: number }) {
  const [profile, setProfile] = useState<ProfileState>({ state: "loading" });

  useEffect(() => {
    let live = true;
    (async () => {
      try {
        const [stats, history] = await Promise.all([api.userStats(userId), api.userHistory(userId, 20)]);
        if (live) setProfile({ state: "ok", stats, history });
      } catch (e) {
        if (!live) return;
        if (e instanceof ApiError && e.status === 404) setProfile({ state: "unknown", detail: e.detail });
        else setProfile({ state: "error", message: describeError(e) });
      }
    })();
    return () => {
      live = false;
    };
  }, [userId, tick]);

  return (
    <section className="panel" aria-label="User" data-testid="profile">
      <h2>User {userId}{isNew && " (new)"}</h2>
      {profile.state === "loading" && <p className="loading">Loading…</p>}
      {profile.state === "error" && <p className="error" role="alert">{profile.message}</p>}
      {profile.state === "unknown" && (isNew
        ? <p className="empty">No ratings yet: rate a few movies you like (search, or pick genres below).</p>
        : <p className="error" role="alert" data-testid="unknown-user">
          Unknown user (404: {profile.detail}). Recommendations below are popular movies; rate some, or pick
          another user.</p>)}
      {profile.state === "ok" && (
        <>
          <dl className="stats">
            <dt>ratings</dt><dd data-testid="n-ratings">{profile.stats.n_ratings}</dd>
            <dt>mean</dt><dd>{profile.stats.mean_rating?.toFixed(2) ?? "—"}</dd>
            <dt>active</dt>
            <dd>{formatDate(profile.stats.first_timestamp)} → {formatDate(profile.stats.last_timestamp)}</dd>
            <dt>top genres</dt>
            <dd>{profile.stats.top_genres.map((g) => `${g.genre} (${g.count})`).join(", ") || "—"}</dd>
          </dl>
          <h3>Latest ratings</h3>
          <ol className="history" data-testid="history">
            {profile.history.map((item) => (
              <li key={`${item.movie_id}-${item.timestamp}`}>
                {title(item)} <span className="stars">{item.rating != null ? stars(item.rating) : ""}</span>
              </li>
            ))}
          </ol>
        </>
      )}
    </section>
  );
}
