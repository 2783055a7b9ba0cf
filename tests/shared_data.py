"""Where the tests find the real MovieLens files: ``../shared/data`` beside the repository, or $MOVIEREC_DATA.

A test that needs one of these folders is skipped when it is missing, with a reason that starts with
"missing component" so that strict mode (MOVIEREC_STRICT_TESTS=1, what CI runs) turns it into a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("MOVIEREC_DATA") or REPO.parent / "shared" / "data")


def needs_data(relative: str) -> pytest.MarkDecorator:
    """Skip unless DATA_ROOT/relative exists (a folder or a file)."""
    path = DATA_ROOT / relative
    return pytest.mark.skipif(
        not path.exists(), reason=f"missing component: data {path} (set MOVIEREC_DATA to the folder holding {relative})"
    )
