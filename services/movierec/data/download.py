"""Download a MovieLens zip from GroupLens, verify its checksum and unzip it.

GroupLens publishes ``<name>.zip.md5`` (``"<md5>  <name>.zip"``) beside every zip; the download is
checked against it and, where known, against the md5 recorded below. Without network access the
first request fails within the connect timeout with one DataError line.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import httpx

from movierec.data.errors import DataError

log = logging.getLogger(__name__)

BASE_URL = "https://files.grouplens.org/datasets/movielens"
CONNECT_TIMEOUT = 5.0  # seconds; a missing network must fail fast
READ_TIMEOUT = 60.0

# name → published md5 of <name>.zip (None: only the .md5 file published beside it is used;
# ml-latest-small is rebuilt from time to time, so no constant is pinned for it).
DATASETS: dict[str, str | None] = {
    "ml-32m": "d472be332d4daa821edc399621853b57",
    "ml-20m": "cd245b17a1ae2cc31bb14903e1204af3",
    "ml-1m": "c4d9eecfca2ab87c1945afe126590906",
    "ml-latest-small": None,
}
_MD5_RE = re.compile(r"\b([0-9a-fA-F]{32})\b")
_CHUNK = 1 << 20


def download(
    name: str,
    dest: str | Path,
    *,
    base_url: str | None = None,
    expected_md5: str | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
    progress: bool = True,
    force: bool = False,
    keep_zip: bool = False,
) -> Path:
    """Fetch `<base_url>/<name>.zip` into `dest`, verify it, unzip it; returns `dest/<name>`.

    `base_url` defaults to BASE_URL (GroupLens); `expected_md5` overrides the recorded md5. An
    existing non-empty `dest/<name>` folder is reused unless `force` is set.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    dest = Path(dest)
    target = dest / name
    if target.is_dir() and any(target.iterdir()) and not force:
        log.info("%s already exists; not downloading again (use force to replace it)", target)
        return target
    dest.mkdir(parents=True, exist_ok=True)
    url = f"{(base_url or BASE_URL).rstrip('/')}/{name}.zip"
    timeout = httpx.Timeout(READ_TIMEOUT, connect=connect_timeout)
    with httpx.Client(timeout=timeout, follow_redirects=True) as client:
        published = _published_md5(client, url + ".md5")
        known = expected_md5 or DATASETS[name]
        if published is None and known is None:
            raise DataError(f"no checksum: {url}.md5 is missing and none is known for {name}")
        if published is not None and known is not None and published != known.lower():
            log.warning("%s.md5 says %s, the recorded md5 is %s; the zip must match both", url, published, known)
        zip_path = dest / f"{name}.zip"
        actual = _fetch(client, url, zip_path, progress)
    for label, wanted in (("published", published), ("expected", known)):
        if wanted is not None and actual != wanted.lower():
            zip_path.unlink(missing_ok=True)
            raise DataError(f"checksum mismatch: md5 {actual}, {label} {wanted.lower()}", path=url)
    log.info("%s: md5 %s verified", zip_path, actual)
    _unzip(zip_path, dest)
    if not keep_zip:
        zip_path.unlink()
    return target if target.is_dir() else dest


def md5_file(path: str | Path) -> str:
    """Hex md5 of a file, read in 1 MiB blocks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def parse_md5(text: str) -> str | None:
    """The md5 in a ``<md5>  <file>`` (or ``MD5 (<file>) = <md5>``) line, lower-case, or None."""
    match = _MD5_RE.search(text)
    return match.group(1).lower() if match else None


def _host(url: str) -> str:
    return urlsplit(url).netloc or url


def _request_error(url: str, exc: httpx.HTTPError) -> DataError:
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TransportError | httpx.TimeoutException):
        return DataError(f"cannot reach {_host(url)}: {reason}")
    return DataError(f"download failed: {reason}", path=url)


def _published_md5(client: httpx.Client, url: str) -> str | None:
    """The md5 published at `url`, or None when the server has no such file."""
    try:
        response = client.get(url)
    except httpx.HTTPError as exc:
        raise _request_error(url, exc) from None
    if response.status_code == 404:
        log.warning("%s: not found; relying on the recorded checksum", url)
        return None
    if response.status_code != 200:
        raise DataError(f"HTTP {response.status_code}", path=url)
    md5 = parse_md5(response.text)
    if md5 is None:
        raise DataError("no md5 checksum in the response", path=url)
    return md5


def _fetch(client: httpx.Client, url: str, path: Path, progress: bool) -> str:
    """Stream `url` into `path` (via a .part file) and return its md5."""
    partial = path.with_name(path.name + ".part")
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with client.stream("GET", url) as response:
            if response.status_code != 200:
                raise DataError(f"HTTP {response.status_code}", path=url)
            total = int(response.headers.get("content-length", 0)) or None
            with open(partial, "wb") as f, _bar(progress, f"{path.name}", total) as advance:
                for block in response.iter_bytes(_CHUNK):
                    f.write(block)
                    digest.update(block)
                    advance(len(block))
    except httpx.HTTPError as exc:
        partial.unlink(missing_ok=True)
        raise _request_error(url, exc) from None
    partial.replace(path)
    return digest.hexdigest()


@contextmanager
def _bar(enabled: bool, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A rich download bar on stderr (or nothing); yields `advance(n_bytes)`."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, TimeRemainingColumn(), console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.update(task, advance=n)


def _unzip(zip_path: Path, dest: Path) -> None:
    """Extract every member under `dest`, refusing absolute paths and `..` components."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for member in archive.infolist():
                parts = PurePosixPath(member.filename).parts
                if member.filename.startswith("/") or ".." in parts:
                    raise DataError(f"unsafe member path {member.filename!r}", path=zip_path)
            for member in archive.infolist():
                target = dest / member.filename
                if member.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
    except zipfile.BadZipFile as exc:
        raise DataError(f"not a valid zip file ({exc})", path=zip_path) from None
