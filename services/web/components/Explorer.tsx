"use client";

import { useCallback, useEffect, useRef, useState } from "react";

import { api, ApiError, Movie, MovieStats } from "@/lib/api";
import { DEFAULT_FORM, describeError, FormState, genresOf, recommendBody, stars, title } from "@/lib/format";

import { Controls } from "./Controls";
import { MovieDetail } from "./MovieDetail";
import { MovieSearch } from "./MovieSearch";
import { PopularList } from "./PopularList";
import { Profile } from "./Profile";
import { Recommendations, RecsState } from "./Recommendations";
import { StatusStrip } from "./StatusStrip";
import { UserPicker } from "./UserPicker";

const TYPING_DEBOUNCE_MS = 250;

/** The whole page: choose a user, steer the recommendations, rate, browse. */
export function Explorer() {
  const [user, setUser] = useState<{ id: number; isNew: boolean } | null>(null);
  const [form, setForm] = useState<FormState>(DEFAULT_FORM);
  const [recs, setRecs] = useState<RecsState>({ state: "idle" });
  const [allGenres, setAllGenres] = useState<string[]>([]);
  const [starterGenres, setStarterGenres] = useState<string[]>([]);
  const [opened, setOpened] = useState<MovieStats | null>(null);
  const [notice, setNotice] = useState<{ text: string; error: boolean } | null>(null);
  const [rating, setRating] = useState(false);
  const [updateMs, setUpdateMs] = useState<number | null>(null);
  const [apiKey, setApiKey] = useState("");
  const [needsKey, setNeedsKey] = useState(false);
  const [tick, setTick] = useState(0); // bumped after a rating: profile, lists and status strip refresh
  const seq = useRef(0);
  const loadedUser = useRef<number | null>(null);
  const ratedAt = useRef<number | null>(null);

  const load = useCallback(async (userId: number, current: FormState) => {
    const mine = ++seq.current;
    setRecs((prev) => ({
      state: "loading",
      previous: prev.state === "ok" ? prev.data : prev.state === "loading" ? prev.previous : undefined,
    }));
    const started = performance.now();
    try {
      const data = await api.recommend(recommendBody(userId, current));
      if (mine === seq.current) setRecs({ state: "ok", data, latencyMs: performance.now() - started });
    } catch (e) {
      if (mine === seq.current) {
        ratedAt.current = null; // a rating whose list failed has no "rating -> new list" time
        setRecs({ state: "error", message: describeError(e), status: e instanceof ApiError ? e.status : -1 });
      }
    }
  }, []);

  // Ask again whenever the user or the form changes; typing in the form is debounced.
  useEffect(() => {
    if (!user) return;
    const delay = loadedUser.current === user.id ? TYPING_DEBOUNCE_MS : 0;
    loadedUser.current = user.id;
    const timer = setTimeout(() => load(user.id, form), delay);
    return () => clearTimeout(timer);
  }, [user, form, load]);

  // The time from a rating's click to the new list on screen (shown, and read by the browser test).
  useEffect(() => {
    if (recs.state !== "ok" || ratedAt.current === null) return;
    const started = ratedAt.current;
    ratedAt.current = null;
    const frame = requestAnimationFrame(() => setUpdateMs(performance.now() - started));
    return () => cancelAnimationFrame(frame);
  }, [recs]);

  useEffect(() => {
    if (allGenres.length) return;
    let live = true;
    api.popularMovies(1000).then((movies) => { if (live) setAllGenres(genresOf(movies)); }).catch(() => undefined);
    return () => {
      live = false;
    };
  }, [allGenres.length, tick]);

  const pick = (id: number, isNew: boolean) => {
    window.history.replaceState(null, "", `?user=${id}`);
    seq.current++; // an answer for the previous user is not shown
    loadedUser.current = null;
    setUser({ id, isNew });
    setRecs({ state: "loading" });
    setUpdateMs(null);
    setNotice(null);
    setStarterGenres([]);
  };

  // A link to the page can name its user: /?user=42 (the address follows the chosen user).
  useEffect(() => {
    const named = new URLSearchParams(window.location.search).get("user");
    // the address is known only in the browser (the page is prerendered), so this cannot be initial state
    // eslint-disable-next-line react-hooks/set-state-in-effect
    if (named && /^\d+$/.test(named)) pick(Number(named), false);
  }, []);

  const rate = async (movie: Movie, value: number) => {
    if (!user) return;
    const started = performance.now();
    setRating(true);
    try {
      const ack = await api.updateUser(user.id, movie.movie_id, value, apiKey);
      setNotice({ text: `Rated ${title(movie)} ${stars(value)} (${value.toFixed(1)}); ${ack.n_ratings} ratings now.`,
        error: false });
      ratedAt.current = started;
      await load(user.id, form);
      setTick((t) => t + 1);
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) setNeedsKey(true);
      setNotice({ text: `Rating not saved: ${describeError(e)}`, error: true });
    } finally {
      setRating(false);
    }
  };

  const retry = () => {
    setTick((t) => t + 1);
    if (user) load(user.id, form);
  };

  return (
    <>
      <header className="top">
        <h1>movierec</h1>
        <p className="tagline">Sequential movie recommendations (gSASRec): pick a user, rate, watch the list move.</p>
        <StatusStrip tick={tick} />
      </header>
      <main className="layout">
        <div className="main-col">
          <UserPicker onPick={pick} />
          <MovieSearch onOpen={setOpened} />
          {opened && <MovieDetail movie={opened} canRate={user !== null} onRate={rate}
            onClose={() => setOpened(null)} />}
          {notice && <p className={notice.error ? "error" : "notice"} role={notice.error ? "alert" : "status"}
            data-testid="notice">{notice.text}</p>}
          {needsKey && (
            <label className="api-key">API key for ratings (the server has API_KEY set)
              <input type="password" autoComplete="off" value={apiKey} onChange={(e) => setApiKey(e.target.value)} />
            </label>
          )}
          <Controls form={form} genres={allGenres} onChange={setForm} />
          <Recommendations recs={recs} onRate={rate} onRetry={retry} updateMs={updateMs} rating={rating} />
        </div>
        <aside className="side-col">
          {user && <Profile key={user.id} userId={user.id} isNew={user.isNew} tick={tick} />}
          {user?.isNew && allGenres.length > 0 && (
            <div className="genres starter" role="group" aria-label="Genres you like">
              {allGenres.map((genre) => {
                const on = starterGenres.includes(genre);
                return (
                  <label key={genre} className={on ? "chip on" : "chip"}>
                    <input type="checkbox" checked={on} onChange={() => setStarterGenres(
                      on ? starterGenres.filter((g) => g !== genre) : [...starterGenres, genre])} />
                    {genre}
                  </label>
                );
              })}
            </div>
          )}
          <PopularList genres={user?.isNew ? starterGenres : form.genres} limit={user?.isNew ? 8 : 10}
            heading={user?.isNew ? "Popular picks: rate a few you like" : "Popular movies"}
            canRate={user?.isNew ?? false} onOpen={setOpened} onRate={rate} tick={tick} />
        </aside>
      </main>
    </>
  );
}
