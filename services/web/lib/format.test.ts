import { describe, expect, it } from "vitest";

import { Api, ApiError, detailOf } from "./api";
import { becauseText, DEFAULT_FORM, describeError, genresOf, RATING_STEPS, recommendBody, stars, title } from "./format";

describe("recommendBody", () => {
  it("leaves out empty filters and parses numbers", () => {
    expect(recommendBody(7, DEFAULT_FORM)).toEqual({ user_id: 7, k: 10, method: "torchserve" });
    const body = recommendBody(7, { ...DEFAULT_FORM, method: "faiss", k: " 5 ", genres: ["Drama"], yearMin: "1990",
      yearMax: "", minRating: "3.5" });
    expect(body).toEqual({ user_id: 7, k: 5, method: "faiss", genres: ["Drama"], year_min: 1990, min_rating: 3.5 });
  });

  it("sends text that is not a number as is, so the API names the field", () => {
    expect(recommendBody(1, { ...DEFAULT_FORM, k: "ten" }).k).toBe("ten");
  });
});

describe("wording", () => {
  it("rates in half steps from 5 down to 0.5", () => {
    expect(RATING_STEPS).toEqual([5, 4.5, 4, 3.5, 3, 2.5, 2, 1.5, 1, 0.5]);
    expect(stars(3.5)).toBe("★★★½");
    expect(stars(0.5)).toBe("½");
  });

  it("says because with the names it was given", () => {
    expect(becauseText([])).toBe("");
    expect(becauseText(["A"])).toBe("because you watched A");
    expect(becauseText(["A", "B", "C"])).toBe("because you watched A, B and C");
  });

  it("adds the year to a title only when it is not there", () => {
    expect(title({ movie_id: 1, title: "Heat (1995)", year: 1995, genres: [] })).toBe("Heat (1995)");
    expect(title({ movie_id: 1, title: "Heat", year: 1995, genres: [] })).toBe("Heat (1995)");
    expect(title({ movie_id: 9, title: null, year: null, genres: [] })).toBe("movie 9");
  });

  it("collects genres", () => {
    const movies = [{ movie_id: 1, title: "a", year: null, genres: ["Drama", "Action"] },
      { movie_id: 2, title: "b", year: null, genres: ["(no genres listed)", "Drama"] }];
    expect(genresOf(movies)).toEqual(["Action", "Drama"]);
  });
});

describe("errors", () => {
  it("reads FastAPI's detail, string or list", () => {
    expect(detailOf({ detail: "k: Input should be less than or equal to 1000" }, "x"))
      .toBe("k: Input should be less than or equal to 1000");
    expect(detailOf({ detail: [{ loc: ["body", "k"], msg: "bad" }] }, "x")).toBe("k: bad");
    expect(detailOf("<html>", "Not Found")).toBe("Not Found");
  });

  it("turns an unreachable API and HTTP errors into sentences", async () => {
    const down = new Api("", () => Promise.reject(new TypeError("fetch failed")));
    const error = await down.stats().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ApiError);
    expect((error as ApiError).status).toBe(0);
    expect(describeError(error)).toMatch(/not answering/);

    const notFound = new Api("", () => Promise.resolve(new Response(JSON.stringify({ detail: "user_id: 5 has no ratings" }),
      { status: 404 })));
    const missing = await notFound.userStats(5).catch((e: unknown) => e);
    expect((missing as ApiError).status).toBe(404);
    expect(describeError(missing)).toBe("user_id: 5 has no ratings");
  });

  it("accepts /health's 503 body, which says what is down", async () => {
    const body = { status: "down", components: { store: { ok: false, detail: "no db" } } };
    const api = new Api("", () => Promise.resolve(new Response(JSON.stringify(body), { status: 503 })));
    expect((await api.health()).status).toBe("down");
  });
});
