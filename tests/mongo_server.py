"""A MongoDB for tests: mongoeco's wire server (in memory) in its own Python 3.13 venv, or a real one.

mongoeco needs Python >= 3.13 while the project runs on 3.11, so the server runs as a subprocess:
this file, executed by the venv's Python, serves on a free loopback port, prints its URI and stops
when its standard input closes.

The venv is made by the install step, not by a test run:

    python tests/mongo_server.py --install .venv/mongoeco [--strict]     # what `make test-deps` runs

finds a Python >= 3.13 (MONGOECO_PYTHON, pyenv's versions, python3.13/python3.14 on PATH), creates the
venv and installs the pinned packages; without such a Python it says what to install and exits 0
(status 2 with --strict). `session_uri(config)` returns MONGO_TEST_URI when set; otherwise it starts
one server per test session from the venv at $MONGOECO_VENV (default .venv/mongoeco), waits until
pymongo can ping it, and stops it at session end. Without the venv the MongoDB tests are skipped as a
missing component, which strict mode (CI) turns into failures.
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
REPO = Path(__file__).resolve().parents[1]
MISSING = (
    "missing component: the MongoDB wire test server ({reason}); install a Python >= 3.13 (pyenv install 3.13,"
    " or MONGOECO_PYTHON=/path/to/python3.13) and run `make test-deps`, or set MONGO_TEST_URI to a MongoDB"
)


_session_server_uri: str | None = None


def session_uri(config) -> str:
    """The URI of the test session's MongoDB (no database in its path); starts the server once."""
    global _session_server_uri
    if os.environ.get("MONGO_TEST_URI"):
        return os.environ["MONGO_TEST_URI"]
    if _session_server_uri is None:
        import pytest

        folder = venv_folder()
        python = installed_python(folder)
        if python is None:
            pytest.skip(MISSING.format(reason=f"no venv with {' '.join(SERVER_PACKAGES)} at {folder}"))
        log = Path(tempfile.mkdtemp(prefix="movierec-mongoeco-")) / "server.log"
        server = MongoecoServer(python, log)
        config.add_cleanup(_stopper(server))
        _session_server_uri = server.start()
    return _session_server_uri


def venv_folder() -> Path:
    """Where the install step puts the server's venv: $MONGOECO_VENV, else .venv/mongoeco in the repository."""
    return Path(os.environ.get("MONGOECO_VENV") or REPO / ".venv" / "mongoeco")


def installed_python(folder: Path) -> Path | None:
    """The venv's Python if the venv holds exactly SERVER_PACKAGES (its marker says so), else None."""
    python, marker = folder / "bin" / "python", folder / "installed.txt"
    if python.is_file() and marker.is_file() and marker.read_text() == "\n".join(SERVER_PACKAGES):
        return python
    return None


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


def python313() -> str | None:
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


def install(folder: Path, strict: bool = False) -> int:
    """Create the server's venv at `folder` (unless it is there already); exit status for the command line."""
    if installed_python(folder):
        return 0
    python = python313()
    if python is None:
        print(("error: " if strict else "note: ") + MISSING.format(reason="no Python >= 3.13 found"), file=sys.stderr)
        return 2 if strict else 0
    print(f"installing the MongoDB wire test server ({' '.join(SERVER_PACKAGES)}) into {folder} with {python}")
    shutil.rmtree(folder, ignore_errors=True)
    subprocess.run([python, "-m", "venv", str(folder)], check=True)
    subprocess.run(
        [str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         *SERVER_PACKAGES],
        check=True,
        timeout=900,
    )  # fmt: skip
    (folder / "installed.txt").write_text("\n".join(SERVER_PACKAGES))
    return 0


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
    if len(sys.argv) >= 3 and sys.argv[1] == "--install":
        sys.exit(install(Path(sys.argv[2]), strict="--strict" in sys.argv[3:]))
    _serve()
