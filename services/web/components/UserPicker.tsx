"use client";

import { FormEvent, useState } from "react";

import { api, ApiError } from "@/lib/api";
import { describeError } from "@/lib/format";

const NEW_USER_BASE = 100_000_000; // new users get ids far above MovieLens' (ML-32M has 200,948 users)

async function randomKnownUser(): Promise<number> {
  const users = (await api.stats()).counts.users;
  if (!users) throw new Error("The store has no users yet");
  for (let attempt = 0; attempt < 8; attempt++) {
    const id = 1 + Math.floor(Math.random() * users);
    try {
      await api.userStats(id);
      return id;
    } catch (e) {
      if (!(e instanceof ApiError) || e.status !== 404) throw e;
    }
  }
  throw new Error("No user with ratings found among 8 random ids: type one instead");
}

async function unusedUserId(): Promise<number> {
  for (let attempt = 0; attempt < 8; attempt++) {
    const id = NEW_USER_BASE + Math.floor(Math.random() * 9 * NEW_USER_BASE);
    try {
      await api.userStats(id);
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) return id;
      throw e;
    }
  }
  throw new Error("Could not find an unused user id");
}

/** Pick an existing user (by id or at random) or start a new one. */
export function UserPicker({ onPick }: { onPick: (userId: number, isNew: boolean) => void }) {
  const [text, setText] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);

  const run = async (find: () => Promise<[number, boolean]>) => {
    setBusy(true);
    setError(null);
    try {
      const [id, isNew] = await find();
      setText(String(id));
      onPick(id, isNew);
    } catch (e) {
      setError(describeError(e));
    } finally {
      setBusy(false);
    }
  };

  const submit = (event: FormEvent) => {
    event.preventDefault();
    const id = Number(text.trim());
    if (!/^\d+$/.test(text.trim()) || !Number.isSafeInteger(id)) {
      setError("user id: a whole number of 0 or more");
      return;
    }
    setError(null);
    onPick(id, false);
  };

  return (
    <form className="picker" onSubmit={submit} aria-label="Choose a user">
      <label htmlFor="user-id">User id</label>
      <input id="user-id" inputMode="numeric" autoComplete="off" value={text} placeholder="e.g. 1"
        onChange={(e) => setText(e.target.value)} />
      <button type="submit" disabled={busy}>Show</button>
      <button type="button" disabled={busy} onClick={() => run(async () => [await randomKnownUser(), false])}>
        Random user
      </button>
      <button type="button" disabled={busy} onClick={() => run(async () => [await unusedUserId(), true])}>
        New user
      </button>
      {error && <p className="error" role="alert" data-testid="picker-error">{error}</p>}
    </form>
  );
}
