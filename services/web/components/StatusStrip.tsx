"use client";

import { useEffect, useState } from "react";

import { api, Health, Stats } from "@/lib/api";
import { describeError } from "@/lib/format";

const POLL_MS = 5000;

function short(version: string | null | undefined): string {
  if (!version) return "none";
  return version.length > 14 ? `${version.slice(0, 12)}…` : version;
}

/** /health and /stats in one line: API status, model and index versions, cache hit ratio. */
export function StatusStrip({ tick }: { tick: number }) {
  const [health, setHealth] = useState<Health | null>(null);
  const [stats, setStats] = useState<Stats | null>(null);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    let live = true;
    const load = async () => {
      try {
        const [h, s] = await Promise.all([api.health(), api.stats()]);
        if (!live) return;
        setHealth(h);
        setStats(s);
        setError(null);
      } catch (e) {
        if (live) setError(describeError(e));
      }
    };
    load();
    const timer = setInterval(load, POLL_MS);
    return () => {
      live = false;
      clearInterval(timer);
    };
  }, [tick]);

  if (error) {
    return <div className="status status-down" aria-label="API status" data-testid="status">API down: {error}</div>;
  }
  if (!health || !stats) return <div className="status" aria-label="API status" data-testid="status">Connecting to the API…</div>;
  const broken = Object.entries(health.components).filter(([, c]) => !c.ok).map(([name]) => name);
  return (
    <div className={`status status-${health.status}`} aria-label="API status" data-testid="status">
      <span><b>API {health.status}</b>{broken.length ? ` (${broken.join(", ")} down)` : ""}</span>
      <span title={stats.model_version ?? ""}>model {short(stats.model_version)}</span>
      {Object.entries(stats.index_versions).map(([kind, version]) => (
        <span key={kind} title={version}>{kind} {short(version)}</span>
      ))}
      <span>cache {stats.cache.kind} {(stats.cache.hit_ratio * 100).toFixed(0)} % hits</span>
      <span>{stats.counts.users.toLocaleString("en")} users · {stats.counts.movies.toLocaleString("en")} movies</span>
    </div>
  );
}
