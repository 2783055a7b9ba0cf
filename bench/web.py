"""How fast the web page is, in Debian's Chromium against a real `movierec serve` (issue 16's targets).

    python bench/web.py [--home artifacts] [--repeat 5]

Needs the built page (`make web`), chromium on PATH and a MOVIEREC_HOME with a model, store and index
(`make demo` makes artifacts/). The home is copied to a temporary folder first: the ratings this
script makes do not reach it. Prints one Markdown table under a line naming the machine:

* page JavaScript: the gzipped size of every script index.html loads (target <= 200 kB);
* first contentful paint of / (a fresh browser context each time, so nothing is cached; target <= 1 s);
* first list: from pressing Enter on a user id to the cards on screen;
* rating -> new list: from the click on a card's Rate button to the updated list on screen, as the
  page itself measures it (`data-ms` of its "rating -> new list" line; target <= 300 ms).
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_web import WEB_OUT, Api, chromium  # noqa: E402  (the tests' server wrapper)

# the list after a rating: answered, the rated movie gone, and the page's new "rating -> new list" figure
RATED = """([top, previous]) => {
    const figure = document.querySelector('[data-testid=update-latency]');
    const recs = document.querySelector('[data-testid=recs]');
    return figure && figure.dataset.ms !== previous && recs && recs.dataset.state === 'ok'
        && !document.querySelector(`[data-testid=card][data-movie-id="${top}"]`);
}"""


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def script_sizes() -> tuple[int, int, int]:
    """(number of scripts, raw bytes, gzipped bytes) of what index.html loads."""
    index = (WEB_OUT / "index.html").read_text()
    scripts = sorted(set(re.findall(r'src="(/_next/static/[^"]+\.js)"', index)))
    raw = [(WEB_OUT / s.lstrip("/")).read_bytes() for s in scripts]
    return len(scripts), sum(len(r) for r in raw), sum(len(gzip.compress(r, 9)) for r in raw)


def median_p95(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"{statistics.median(ordered):.0f} / {p95:.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=REPO / "artifacts", help="MOVIEREC_HOME to copy and serve")
    parser.add_argument("--repeat", type=int, default=5, help="page loads and ratings to measure")
    parser.add_argument("--user", type=int, default=1, help="an existing user of the home's store")
    args = parser.parse_args()
    if not (WEB_OUT / "index.html").is_file():
        sys.exit("error: the web page is not built: make web")
    executable = chromium()
    if executable is None:
        sys.exit("error: no chromium on PATH: apt-get install chromium")
    if not (args.home / "model").is_dir():
        sys.exit(f"error: {args.home} has no model/: run make demo first, or pass --home")

    from playwright.sync_api import sync_playwright

    n_scripts, raw, gz = script_sizes()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        shutil.copytree(args.home, home, ignore=shutil.ignore_patterns("prepared", "data", "runs"))
        server = Api(home, Path(tmp) / "serve.log").wait_ready()
        fcp, first_list, rating = [], [], []
        version = ""
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=executable, args=["--disable-gpu"])
                version = browser.version
                for i in range(args.repeat + 1):  # the first load warms the server and the OS cache: not counted
                    context = browser.new_context(viewport={"width": 1280, "height": 900})
                    page = context.new_page()
                    page.goto(server.url + "/")
                    page.wait_for_function("performance.getEntriesByName('first-contentful-paint').length > 0")
                    paint = page.evaluate("performance.getEntriesByName('first-contentful-paint')[0].startTime")
                    page.get_by_label("User id").fill(str(args.user))
                    started = time.perf_counter()
                    page.get_by_label("User id").press("Enter")
                    page.wait_for_selector("[data-testid=recs][data-state=ok] [data-testid=card]")
                    listed = (time.perf_counter() - started) * 1000
                    if i:
                        fcp.append(paint)
                        first_list.append(listed)
                    context.close()
                context = browser.new_context(viewport={"width": 1280, "height": 900})
                page = context.new_page()
                page.goto(server.url + "/")
                page.get_by_label("User id").fill(str(args.user))
                page.get_by_label("User id").press("Enter")
                previous = None
                for i in range(args.repeat + 1):
                    page.wait_for_selector("[data-testid=recs][data-state=ok] [data-testid=card]")
                    top = page.locator("[data-testid=card]").first
                    top_id = top.get_attribute("data-movie-id")
                    top.get_by_role("button", name=re.compile("^Rate ")).click()
                    page.wait_for_function(RATED, arg=[top_id, previous])
                    previous = page.get_by_test_id("update-latency").get_attribute("data-ms")
                    if i:
                        rating.append(float(previous or "nan"))
                context.close()
                browser.close()
        finally:
            server.stop()

    print(f"# {cpu_name()}, {os.cpu_count()} cores, Chromium {version}, {datetime.now(UTC):%Y-%m-%d}, git {git_sha()}, "
          f"home {args.home.name}, {args.repeat} repeats (median / p95)")
    print("| what | measured | target |")
    print("|---|---|---|")
    print(f"| page JavaScript ({n_scripts} scripts) | {gz / 1000:.0f} kB gzipped ({raw / 1000:.0f} kB raw) | <= 200 kB |")
    print(f"| first contentful paint of / (ms) | {median_p95(fcp)} | <= 1000 |")
    print(f"| user id -> first list on screen (ms) | {median_p95(first_list)} | |")
    print(f"| rating -> updated list on screen (ms) | {median_p95(rating)} | <= 300 |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
