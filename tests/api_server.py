"""`movierec serve` in a child process for tests that talk to the API from outside (reliability, OpenAPI)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

MOVIEREC = [sys.executable, "-c", "import sys; from movierec.cli.main import app; sys.argv[0] = 'movierec'; app()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    """`movierec serve` in a child process (settings through its environment), stopped by `stop()`."""

    def __init__(self, home: Path, log: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        variables = {**os.environ, "MOVIEREC_HOME": str(home), "INDEX_POLL_SECONDS": "60", **env}
        with open(log, "ab") as out:
            self.process = subprocess.Popen([*MOVIEREC, "serve", "--home", str(home), "--port", str(self.port)],
                                            env=variables, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"movierec serve exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"movierec serve did not answer /health: {log.read_text()[-2000:]}")

    def rss(self) -> int:
        return psutil.Process(self.process.pid).memory_info().rss

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


@pytest.fixture(scope="module")
def api_home(pattern_prepared: Path, pattern_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MOVIEREC_HOME with a trained model, a loaded SQLite store and a FAISS index."""
    from movierec.data.prepared import load_prepared
    from movierec.index.versions import build_from_model
    from movierec.store import open_store

    home = tmp_path_factory.mktemp("home")
    shutil.copytree(pattern_model, home / "model")
    with open_store(None, home / "store.sqlite") as store:
        store.load_prepared(load_prepared(pattern_prepared), progress=False)
    build_from_model(home / "model", home / "index" / "faiss")
    return home


