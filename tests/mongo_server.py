"""A MongoDB for tests: mongoeco's wire server (in memory) in its own Python 3.13 venv, or a real one.

mongoeco needs Python >= 3.13 while the project runs on 3.11, so the server runs as a subprocess:
this file, executed by the venv's Python, serves on a free loopback port, prints its URI and stops
when its standard input closes. `session_uri(config)` returns MONGO_TEST_URI when set; otherwise it
creates the venv under pytest's cache folder on first use (`pip install` of the pinned packages),
starts one server per test session, waits until pymongo can ping it, and stops it at session end.
Without a Python >= 3.13 (set MONGOECO_PYTHON to point at one) the MongoDB tests are skipped.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

SERVER_PACKAGES = ("mongoeco[wire]==4.11.0", "pymongo==4.20.0")
START_TIMEOUT_S = 60


_session_server_uri: str | None = None


def session_uri(config) -> str:
    """The URI of the test session's MongoDB (no database in its path); starts the server once."""
    global _session_server_uri
    if os.environ.get("MONGO_TEST_URI"):
        return os.environ["MONGO_TEST_URI"]
    if _session_server_uri is None:
        import pytest

        python = _python313()
        if python is None:
            pytest.skip("mongoeco needs Python >= 3.13 (none found; set MONGOECO_PYTHON or MONGO_TEST_URI)")
        cache = config.cache.mkdir("mongoeco-venv") if getattr(config, "cache", None) else None
        folder = Path(cache or Path(tempfile.gettempdir()) / "movierec-mongoeco-venv")
        folder.mkdir(parents=True, exist_ok=True)
        server = MongoecoServer(_venv_python(python, folder), folder / "server.log")
        config.add_cleanup(_stopper(server))
        _session_server_uri = server.start()
    return _session_server_uri


def _stopper(server: MongoecoServer):
    def stop() -> None:
        global _session_server_uri
        server.stop()
        _session_server_uri = None

    return stop


def with_database(uri: str, name: str) -> str:
    """`uri` with its database path set to `name`, keeping its options."""
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(path=f"/{name}"))


class MongoecoServer:
    """One mongoeco wire-server subprocess."""

    def __init__(self, python: Path, log: Path) -> None:
        self.python, self.log = python, log
        self.process: subprocess.Popen | None = None

    def start(self) -> str:
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [str(self.python), __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
            )
        # The server prints its URI once it listens; a crash closes stdout first.
        ready, _, _ = select.select([self.process.stdout], [], [], START_TIMEOUT_S)
        uri = self.process.stdout.readline().strip() if ready else ""
        if not uri:
            self.stop()
            raise RuntimeError(f"mongoeco server did not start: {self.log.read_text()[-2000:]}")
        _wait_for_ping(uri)
        return uri

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.stdin.close()  # the server's signal to stop
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()
        self.process = None


def _wait_for_ping(uri: str) -> None:
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    deadline = time.monotonic() + START_TIMEOUT_S
    with MongoClient(uri, serverSelectionTimeoutMS=1000) as client:
        while True:
            try:
                client.admin.command("ping")
                return
            except PyMongoError:
                if time.monotonic() > deadline:
                    raise


def _python313() -> str | None:
    """A working Python >= 3.13: MONGOECO_PYTHON, then pyenv's versions, then python3.13/3.14 on PATH."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [
        os.environ.get("MONGOECO_PYTHON"),
        *(str(v / "bin" / "python3") for v in sorted(pyenv.glob("3.1[3-9]*"), reverse=True)),
        shutil.which("python3.13"),
        shutil.which("python3.14"),
    ]
    check = "import sys; sys.exit(sys.version_info < (3, 13))"
    for python in filter(None, candidates):
        if subprocess.run([python, "-c", check], capture_output=True).returncode == 0:
            return python
    return None


def _venv_python(python: str, folder: Path) -> Path:
    """The venv's Python, after creating the venv and installing SERVER_PACKAGES unless already done."""
    venv, marker = folder / "venv", folder / "installed.txt"
    wanted = "\n".join(SERVER_PACKAGES)
    if not (marker.is_file() and marker.read_text() == wanted):
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             *SERVER_PACKAGES],
            check=True,
            timeout=600,
        )
        marker.write_text(wanted)
    return venv / "bin" / "python"


def _serve() -> None:
    """Run by the venv's Python: serve an in-memory database until standard input closes."""
    import asyncio

    from mongoeco.engines.memory import MemoryEngine
    from mongoeco.wire.proxy import AsyncMongoEcoProxyServer

    async def main() -> None:
        proxy = AsyncMongoEcoProxyServer(engine=MemoryEngine(), host="127.0.0.1", port=0)
        await proxy.start()
        print(proxy.address.uri, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await proxy.close()

    asyncio.run(main())


if __name__ == "__main__":
    _serve()
