"""Imported by the worker that test_worker SIGKILLs: it pauses half-way through writing an index version.

The index file is written into the version's temporary folder, a marker file says so, then the
write waits (the test kills the process meanwhile). Everything else is the real build.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from movierec.index import versions

_write_files = versions._write_files


def _paused(folder: Path, index: Any, catalog: Any, manifest: dict[str, Any]) -> None:
    index.save(folder / versions.INDEX_FILE)
    Path(os.environ["MOVIEREC_TEST_MIDBUILD"]).touch()
    time.sleep(120)
    _write_files(folder, index, catalog, manifest)


versions._write_files = _paused
