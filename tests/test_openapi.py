"""The OpenAPI document matches what the API does: schemathesis against a real `movierec serve`.

Every check (no 5xx, status codes and bodies as documented, data the schema allows is accepted, data
it forbids is rejected, ...) in positive and negative modes, a bounded number of examples per
operation and a fixed seed, so the run takes seconds and repeats. Plus the document's own promises:
errors are `{"detail": "..."}` and the 4xx answers are documented.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import api_server
from api_server import Api

api_home = api_server.api_home  # the fixture
SCHEMATHESIS = [sys.executable, "-c", "import sys; from schemathesis.cli import schemathesis; "
                "sys.argv[0] = 'schemathesis'; sys.exit(schemathesis())"]
EXAMPLES = 20  # per operation and mode: 10-50 s a run on 2 cores, depending on what else runs


@pytest.fixture(scope="module")
def server(api_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    home = tmp_path_factory.mktemp("openapi") / "home"
    shutil.copytree(api_home, home)
    api = Api(home, home.parent / "serve.log", API_KEY="ops-key")
    yield api
    api.stop()


@pytest.mark.parametrize("key", [True, False], ids=["with-key", "without-key"])
def test_schemathesis_finds_no_failure(server: Api, tmp_path: Path, key: bool) -> None:
    run = subprocess.run(
        [*SCHEMATHESIS, "run", f"{server.url}/openapi.json", "--checks", "all", "--mode", "all",
         "--max-examples", str(EXAMPLES), "--seed", "1" if key else "2", "--generation-database", "none",
         "--no-color", "--request-timeout", "30", "--workers", "1", "--warnings", "off",
         *(["--header", "X-API-Key: ops-key"] if key else [])],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
             "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])})
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-8000:]
    assert "No issues found" in output and " passed" in output, output[-4000:]


def test_document_declares_error_shapes_and_statuses(server: Api) -> None:
    document = httpx.get(f"{server.url}/openapi.json").json()
    error = document["components"]["schemas"]["HTTPValidationError"]
    assert error["properties"]["detail"]["type"] == "string"  # what the API sends, not pydantic's list
    paths = document["paths"]
    assert {"401", "404", "422"} <= set(paths["/update_user"]["post"]["responses"])
    assert {"401", "422", "413"} <= set(paths["/recommend_batch"]["post"]["responses"])
    assert "404" in paths["/user_stats/{user_id}"]["get"]["responses"]
    body = document["components"]["schemas"]["RecommendRequest"]["properties"]
    genres = next(option for option in body["genres"]["anyOf"] if option.get("type") == "array")
    assert set(genres["items"]["enum"]) == {"Action", "Comedy", "Drama", "Horror"}  # the catalogue's genres
    assert body["user_id"]["maximum"] == 2**53 - 1  # exact in every JSON reader
    r = httpx.post(f"{server.url}/recommend", json={"user_id": -1})
    assert r.status_code == 422 and isinstance(r.json()["detail"], str)
