"""The web page at `/`: the Next.js static export (services/web, built into services/web/out).

The files are served by the router's fallback (`router.default`), which Starlette calls only when no
route matched: every API route, including ones added after this is installed, keeps precedence over
a file of the same name, and an unknown path gets the page's 404.html. Without a built page, `/`
explains how to build one and the API runs as before.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

log = logging.getLogger("movierec.api")

NOT_BUILT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>movierec API</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem">
<h1>movierec API</h1>
<p>The API is running; its web page has not been built (or MOVIEREC_WEB_DIR names no built page).</p>
<p>Build it with Node.js 20 or later: <code>make web</code> (or <code>npm ci &amp;&amp; npm run build</code> in
<code>services/web</code>), then restart the API. Or set <code>MOVIEREC_WEB_DIR</code> to a built page.</p>
<p>Meanwhile: <a href="/docs">the OpenAPI docs</a>, <a href="/health">/health</a>, <a href="/stats">/stats</a>.</p>
</body></html>
"""


def install_web(app: FastAPI, web_dir: Path) -> bool:
    """Serve the page in `web_dir` for every path no API route matches; True when there is a page."""
    if (web_dir / "index.html").is_file():
        app.router.default = StaticFiles(directory=web_dir, html=True)
        log.info("web page served at /", extra={"fields": {"web_dir": str(web_dir)}})
        return True
    reason = f"{web_dir} has no index.html" if web_dir.exists() else f"{web_dir} does not exist"
    log.warning("no web page: %s", reason, extra={"fields": {"web_dir": str(web_dir)}})

    @app.get("/", include_in_schema=False, response_class=HTMLResponse)
    def no_web_page() -> HTMLResponse:
        return HTMLResponse(NOT_BUILT)

    return False
