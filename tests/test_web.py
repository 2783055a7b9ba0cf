"""The web page (services/web, a Next.js static export) in real Chromium against a real `movierec serve`.

Debian's Chromium (`apt-get install chromium`) is driven by Playwright for Python (its driver ships in
the wheel; Playwright's own browser download is not used). The API is started by the tests on a free
loopback port, serving the small pattern model of conftest.py (every user watches 1 → 2 → ... → 40, so
the next movie is known). Each step leaves a screenshot in build/web-screenshots/ (the README's comes
from there). The page must be built first: `make web` (what `make test` does when Node >= 20 is present).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from movierec.api.app import create_app
from movierec.data.prepared import load_prepared
from movierec.index.versions import build_from_model
from movierec.settings import Settings
from movierec.store import open_store

REPO = Path(__file__).resolve().parents[1]
WEB_OUT = REPO / "services" / "web" / "out"
SHOTS = REPO / "build" / "web-screenshots"
MOVIEREC = [sys.executable, "-c", "import sys; from movierec.cli.main import app; sys.argv[0] = 'movierec'; app()"]
TIMEOUT_MS = 15_000


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def need_page() -> None:
    if not (WEB_OUT / "index.html").is_file():
        pytest.skip("the web page is not built: make web (Node >= 20: npm ci && npm run build in services/web)")


@pytest.fixture(scope="module")
def web_home(pattern_prepared: Path, pattern_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MOVIEREC_HOME with the pattern model, a loaded SQLite store and a FAISS index."""
    home = tmp_path_factory.mktemp("web-home")
    shutil.copytree(pattern_model, home / "model")
    with open_store(None, home / "store.sqlite") as store:
        store.load_prepared(load_prepared(pattern_prepared), progress=False)
    build_from_model(home / "model", home / "index" / "faiss")
    return home


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    """`movierec serve` in a child process, serving the built page; `wait_ready()` before use."""

    def __init__(self, home: Path, log: Path, **settings: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "MOVIEREC_WEB_DIR": str(WEB_OUT), "INDEX_POLL_SECONDS": "0.5", **settings}
        self.log_path = log
        self.log = log.open("wb")
        self.process = subprocess.Popen([*MOVIEREC, "serve", "--home", str(home), "--port", str(self.port)],
                                        env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 90) -> Api:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"movierec serve exited with {self.process.returncode}: "
                                   f"{self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"movierec serve did not answer /health within {timeout:.0f} s: "
                           f"{self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def servers(web_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Api]]:
    """Two APIs started together (their start-up overlaps): "open", and "keyed" with API_KEY set, which
    a test stops to see the page's error state. Each serves its own copy of web_home."""
    need_page()
    started: dict[str, Api] = {}
    try:
        for name, settings in (("open", {}), ("keyed", {"API_KEY": "web-test-key"})):
            home = tmp_path_factory.mktemp(f"web-api-{name}") / "home"
            shutil.copytree(web_home, home)
            started[name] = Api(home, home.parent / "serve.log", **settings)
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture(scope="module")
def api(servers: dict[str, Api]) -> Api:
    return servers["open"]


@pytest.fixture(scope="module")
def browser() -> Iterator:
    executable = chromium()
    if executable is None:
        pytest.skip("no chromium on PATH for the browser tests: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=["--disable-gpu"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser, request: pytest.FixtureRequest) -> Iterator:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    try:
        yield tab
    finally:
        SHOTS.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(SHOTS / f"{request.node.name}-end.png"), full_page=True)
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def show_user(page, user_id: int) -> None:
    page.get_by_label("User id").fill(str(user_id))
    page.get_by_label("User id").press("Enter")  # the form submits from the keyboard
    wait_settled(page)


def wait_settled(page) -> None:
    """Until the recommendations have been answered (cards, none, or an error)."""
    page.wait_for_selector("[data-testid=recs][data-state=ok], [data-testid=recs-error]")


def cards(page) -> list[dict]:
    return page.eval_on_selector_all("[data-testid=card]", """els => els.map(e => ({
        movie_id: Number(e.dataset.movieId), title: e.querySelector('h3').textContent,
        genres: e.querySelector('[data-testid=card-genres]').textContent.split(' · '),
        because: e.querySelector('.because')?.textContent ?? ''}))""")


def wait_for_cards(page, predicate: str) -> list[dict]:
    """Wait until the settled list satisfies a JS predicate over the cards (`cs`), then return them."""
    page.wait_for_function(f"""() => {{
        const recs = document.querySelector('[data-testid=recs]');
        if (!recs || recs.dataset.state !== 'ok') return false;
        const cs = [...document.querySelectorAll('[data-testid=card]')].map(e => ({{
            id: Number(e.dataset.movieId), genres: e.querySelector('[data-testid=card-genres]').textContent}}));
        return {predicate};
    }}""")
    return cards(page)


# -- the API serves the page, its routes unchanged --------------------------------------------------------

def test_api_serves_the_page_and_keeps_its_routes(api: Api) -> None:
    index = httpx.get(api.url + "/")
    assert index.status_code == 200 and "text/html" in index.headers["content-type"]
    assert "<title>movierec</title>" in index.text
    scripts = re.findall(r'src="(/_next/static/[^"]+\.js)"', index.text)
    assert scripts and all(httpx.get(api.url + s).status_code == 200 for s in scripts)
    assert httpx.get(api.url + "/health").json()["status"] in ("ok", "degraded")
    body = httpx.post(api.url + "/recommend", json={"user_id": 1, "k": 3}).json()
    assert len(body["items"]) == 3
    assert httpx.get(api.url + "/openapi.json").json()["info"]["title"] == "movierec"
    assert httpx.get(api.url + "/metrics").text.startswith("#")
    missing = httpx.get(api.url + "/no/such/page")
    assert missing.status_code == 404 and "text/html" in missing.headers["content-type"]
    # an API route's own errors stay JSON, not the page's 404
    unknown = httpx.get(api.url + "/user_stats/999999")
    assert unknown.status_code == 404 and unknown.json()["detail"] == "user_id: 999999 has no ratings"
    assert httpx.post(api.url + "/", json={}).status_code == 405  # the page is read-only


def test_without_a_built_page_the_api_says_how_to_get_one(web_home: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    shutil.copytree(web_home, home)
    with TestClient(create_app(Settings(movierec_home=home, movierec_web_dir=tmp_path / "nowhere"))) as client:
        page = client.get("/")
        assert page.status_code == 200 and "make web" in page.text and "/docs" in page.text
        assert client.post("/recommend", json={"user_id": 1, "k": 2}).status_code == 200
        assert client.get("/no/such/page").status_code == 404


def test_user_history_lists_the_newest_ratings_first(web_home: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    shutil.copytree(web_home, home)
    with TestClient(create_app(Settings(movierec_home=home))) as client:
        client.post("/update_user", json={"user_id": 3, "movie_id": 21, "rating": 2.5})
        items = client.get("/user_history/3?limit=4").json()["items"]
        assert len(items) == 4 and items[0]["movie_id"] == 21 and items[0]["rating"] == 2.5
        assert items[0]["title"] == "Movie 21 (2011)" and items[0]["genres"]
        assert [i["timestamp"] for i in items] == sorted((i["timestamp"] for i in items), reverse=True)
        assert client.get("/user_history/999999").status_code == 404
        assert "limit" in client.get("/user_history/3?limit=0").json()["detail"]


# -- in the browser ---------------------------------------------------------------------------------------

def test_existing_user_gets_k_cards_then_steers_them(api: Api, page) -> None:
    page.goto(api.url + "/")
    page.wait_for_selector("[data-testid=recs-empty]")
    page.wait_for_selector("[data-testid=status] >> text=API")
    shot(page, "01-empty")
    show_user(page, 1)
    found = cards(page)
    assert len(found) == 10
    assert page.get_by_test_id("strategy").inner_text() == "strategy: sequence"
    assert all(c["because"].startswith("because you watched Movie") for c in found)
    assert page.get_by_test_id("n-ratings").inner_text().isdigit()
    page.wait_for_selector("[data-testid=history] li")
    shot(page, "02-user-1")

    page.get_by_label("k", exact=True).fill("4")
    wait_for_cards(page, "cs.length === 4")

    page.get_by_role("group", name="Genres (any of)").get_by_label("Horror").check()
    horror = wait_for_cards(page, "cs.length > 0 && cs.every(c => c.genres.split(' · ').includes('Horror'))")
    assert all("Horror" in c["genres"] for c in horror)
    shot(page, "03-genre-horror")

    page.get_by_label("Method").select_option("faiss")
    page.wait_for_selector("[data-testid=served-by] >> text=served by faiss")
    assert page.get_by_test_id("strategy").inner_text() == "strategy: sequence"
    page.get_by_label("Method").select_option("popular")
    page.wait_for_selector("[data-testid=strategy] >> text=strategy: popular")
    assert page.get_by_test_id("latency").inner_text().endswith("ms")
    shot(page, "04-method-popular")


def test_rating_the_top_card_removes_it_and_updates_the_history(api: Api, page, record_property) -> None:
    page.goto(api.url + "/")
    show_user(page, 2)
    before = cards(page)
    top = before[0]
    n_before = int(page.get_by_test_id("n-ratings").inner_text())
    page.get_by_label(f"Your rating of {top['title'].split('. ', 1)[1]}").select_option("4.5")
    page.get_by_role("button", name=f"Rate {top['title'].split('. ', 1)[1]}").click()
    after = wait_for_cards(page, f"cs.length === 10 && !cs.some(c => c.id === {top['movie_id']})")
    assert top["movie_id"] not in {c["movie_id"] for c in after}
    page.wait_for_function(f"document.querySelector('[data-testid=n-ratings]')?.textContent === '{n_before + 1}'")
    assert page.locator("[data-testid=history] li").first.inner_text().startswith(top["title"].split(". ", 1)[1])
    assert "★★★★½" in page.locator("[data-testid=history] li").first.inner_text()
    update = page.get_by_test_id("update-latency")
    record_property("rating_to_new_list_ms", update.get_attribute("data-ms"))  # reported by bench/web.py
    shot(page, "05-rated-top-card")


def test_search_as_you_type_and_open_a_movie(api: Api, page) -> None:
    page.goto(api.url + "/")
    page.get_by_label("Search movies").press_sequentially("movie 3", delay=30)
    first = page.locator('[data-testid=search-results][data-query="movie 3"] button').first
    assert first.inner_text().startswith("Movie 3")
    first.focus()
    page.keyboard.press("Enter")  # keyboard-usable
    detail = page.get_by_test_id("movie-detail")
    assert detail.get_by_role("heading").inner_text() == first.inner_text()
    assert "ratings" in detail.inner_text() and "Choose a user to rate it." in detail.inner_text()
    shot(page, "06-search-open")
    page.get_by_label("Search movies").fill("zzzz no such title")
    page.wait_for_selector("[data-testid=search-none]")
    detail.get_by_role("heading").focus()
    page.keyboard.press("Escape")
    assert page.get_by_test_id("movie-detail").count() == 0


def test_new_user_goes_from_popular_to_sequence_after_a_few_ratings(api: Api, page) -> None:
    page.goto(api.url + "/")
    page.get_by_role("button", name="New user").click()
    page.wait_for_selector("[data-testid=profile] >> text=(new)")
    wait_settled(page)
    assert page.get_by_test_id("strategy").inner_text() == "strategy: popular"
    shot(page, "07-new-user")
    for n, movie in enumerate((5, 6, 7), start=1):
        search = page.get_by_label("Search movies")
        search.fill(f"Movie {movie} (")
        page.locator(f'[data-testid=search-results][data-query="Movie {movie} ("] button').first.click()
        detail = page.get_by_test_id("movie-detail")
        assert detail.get_by_role("heading").inner_text().startswith(f"Movie {movie} (")
        detail.get_by_role("button", name=re.compile("^Rate ")).click()
        page.wait_for_selector(f"[data-testid=notice] >> text={n} ratings now")
        wait_settled(page)
    page.wait_for_selector("[data-testid=strategy] >> text=strategy: sequence")
    top = cards(page)[0]
    assert top["movie_id"] == 8  # the pattern: 5 → 6 → 7 → 8
    assert "Movie 7" in top["because"]
    shot(page, "08-new-user-sequence")


def test_unknown_user_and_bad_input_show_the_apis_detail(api: Api, page) -> None:
    page.goto(api.url + "/")
    show_user(page, 987654)
    assert "user_id: 987654 has no ratings" in page.get_by_test_id("unknown-user").inner_text()
    assert page.get_by_test_id("strategy").inner_text() == "strategy: popular"
    page.get_by_label("k", exact=True).fill("5000")
    page.wait_for_selector("[data-testid=recs-error]")
    error = page.get_by_test_id("recs-error")
    assert error.get_attribute("data-status") == "422"
    assert "k: Input should be less than or equal to 1000" in error.inner_text()
    shot(page, "09-bad-input")
    page.get_by_label("User id").fill("abc")
    page.get_by_role("button", name="Show").click()
    assert "user id" in page.get_by_test_id("picker-error").inner_text()


def test_phone_width_needs_no_sideways_scrolling(api: Api, browser) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    context.set_default_timeout(TIMEOUT_MS)
    phone = context.new_page()
    try:
        phone.goto(api.url + "/")
        phone.get_by_role("button", name="Random user").tap()
        wait_settled(phone)
        assert len(cards(phone)) == 10
        user = int(re.fullmatch(r"User (\d+)", phone.get_by_test_id("profile").get_by_role("heading").first
                                .inner_text()).group(1))
        assert 1 <= user <= 300 and phone.get_by_label("User id").input_value() == str(user)
        assert re.search(rf"\?user={user}$", phone.url)
        widths = phone.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], f"page is {widths[0]} px wide on a {widths[1]} px screen"
        shot(phone, "10-phone")
    finally:
        context.close()


def test_api_key_then_api_down(servers: dict[str, Api], page) -> None:
    """The server with API_KEY set: a rating asks for the key, works with it; then the server stops."""
    server = servers["keyed"]
    try:
        page.goto(server.url + "/?user=5")  # a link can name the user
        wait_settled(page)
        assert page.get_by_role("heading", name="User 5").count() == 1 and len(cards(page)) == 10
        top = cards(page)[0]
        page.locator("[data-testid=card]").first.get_by_role("button", name=re.compile("^Rate ")).click()
        page.wait_for_selector("[data-testid=notice] >> text=X-API-Key")
        assert top["movie_id"] in {c["movie_id"] for c in cards(page)}  # not rated: still listed
        page.get_by_label("API key for ratings").fill("web-test-key")
        page.locator("[data-testid=card]").first.get_by_role("button", name=re.compile("^Rate ")).click()
        wait_for_cards(page, f"!cs.some(c => c.id === {top['movie_id']})")
        assert page.get_by_test_id("notice").inner_text().startswith("Rated ")
    finally:
        server.stop()
    page.get_by_label("k", exact=True).fill("3")
    page.wait_for_selector("[data-testid=recs-error]")
    assert "not answering" in page.get_by_test_id("recs-error").inner_text()
    page.wait_for_selector("[data-testid=status] >> text=API down")
    shot(page, "11-api-down")
    page.get_by_role("button", name="Retry").click()  # still down: the error stays, the page does not break
    page.wait_for_selector("[data-testid=recs-error] >> text=not answering")

