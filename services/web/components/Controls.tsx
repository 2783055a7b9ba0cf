"use client";

import { METHODS, Method } from "@/lib/api";
import { FormState } from "@/lib/format";

/** method, k and the filters; every change asks again (the page debounces typing). */
export function Controls({ form, genres, onChange }: {
  form: FormState;
  genres: string[];
  onChange: (form: FormState) => void;
}) {
  const set = (patch: Partial<FormState>) => onChange({ ...form, ...patch });
  const toggle = (genre: string) =>
    set({ genres: form.genres.includes(genre) ? form.genres.filter((g) => g !== genre) : [...form.genres, genre] });
  return (
    <fieldset className="controls">
      <legend>Method and filters</legend>
      <div className="row">
        <label>Method
          <select value={form.method} onChange={(e) => set({ method: e.target.value as Method })}>
            {METHODS.map((m) => <option key={m} value={m}>{m}</option>)}
          </select>
        </label>
        <label>k
          <input inputMode="numeric" size={4} value={form.k} onChange={(e) => set({ k: e.target.value })} />
        </label>
        <label>Year from
          <input inputMode="numeric" size={5} placeholder="any" value={form.yearMin}
            onChange={(e) => set({ yearMin: e.target.value })} />
        </label>
        <label>to
          <input inputMode="numeric" size={5} placeholder="any" value={form.yearMax}
            onChange={(e) => set({ yearMax: e.target.value })} />
        </label>
        <label>Min. mean rating
          <input inputMode="decimal" size={4} placeholder="any" value={form.minRating}
            onChange={(e) => set({ minRating: e.target.value })} />
        </label>
      </div>
      {genres.length > 0 && (
        <div className="genres" role="group" aria-label="Genres (any of)">
          {genres.map((genre) => (
            <label key={genre} className={form.genres.includes(genre) ? "chip on" : "chip"}>
              <input type="checkbox" checked={form.genres.includes(genre)} onChange={() => toggle(genre)} />
              {genre}
            </label>
          ))}
        </div>
      )}
    </fieldset>
  );
}
