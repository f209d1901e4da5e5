"""The BIDS validator (``bids-validator-deno``), run on BIDS_DIR or on a view of selected subjects.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from bids_amyloid.errors import (
    InvalidBIDSError,
    UsageError,
)

LOG = logging.getLogger(__name__)


def validator_executable() -> str:
    """``bids-validator-deno`` next to this Python, else on PATH."""
    local = Path(sys.executable).parent / "bids-validator-deno"
    if local.is_file():
        return str(local)
    found = shutil.which("bids-validator-deno")
    if found is None:
        raise UsageError("bids-validator-deno not found (pip install bids-validator-deno), "
                         "or pass --skip-bids-validation")
    return found


def _subset_view(bids_dir: Path, subjects: tuple[str, ...], scratch: Path) -> Path:
    """A folder of symlinks: BIDS_DIR's top-level files plus the chosen subjects only."""
    view = Path(tempfile.mkdtemp(prefix=".tmp-bids-view-", dir=scratch))
    for entry in sorted(bids_dir.iterdir()):
        is_subject = entry.name.startswith("sub-") and entry.is_dir()
        if not is_subject or entry.name.removeprefix("sub-") in subjects:
            (view / entry.name).symlink_to(entry.resolve())
    return view


def validate_bids(bids_dir: Path, timeout: float = 3600.0, subjects: tuple[str, ...] = (),
                  scratch: Path | None = None) -> list[str]:
    """Run ``bids-validator-deno``; raise InvalidBIDSError if it reports errors.

    With ``subjects`` and a ``scratch`` folder, only those subjects (and the
    top-level files) are validated, through a view of symlinks in ``scratch``:
    an array job of one subject does not re-validate the whole dataset.
    Returns the warning codes (with counts) for logging.
    """
    target, view = bids_dir, None
    if subjects and scratch is not None:
        try:
            scratch.mkdir(parents=True, exist_ok=True)
            target = view = _subset_view(bids_dir, subjects, scratch)
        except OSError as err:
            LOG.info("validating all of %s (no subset view: %s)", bids_dir, err)
    cmd = [validator_executable(), "--format", "json", str(target)]
    LOG.info("validating %s%s with bids-validator-deno (skip with --skip-bids-validation)",
             bids_dir, f" (sub-{', sub-'.join(subjects)})" if view else "")
    # deno caches compiled code under ~/.cache unless told otherwise: keep $HOME
    # untouched (read-only under Apptainer) by giving it a folder of its own.
    deno_dir = Path(tempfile.mkdtemp(prefix=".tmp-deno-", dir=scratch if view else None))
    env = {**os.environ, "DENO_DIR": str(deno_dir), "DENO_NO_UPDATE_CHECK": "1"}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                              env=env)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise InvalidBIDSError(f"bids-validator-deno could not check {bids_dir}: {err}") from err
    finally:
        if view is not None:
            shutil.rmtree(view, ignore_errors=True)
        shutil.rmtree(deno_dir, ignore_errors=True)
    try:
        issues = json.loads(done.stdout)["issues"]["issues"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        tail = (done.stderr or done.stdout).strip()[-1000:]
        raise InvalidBIDSError(f"bids-validator-deno failed on {bids_dir} "
                               f"(exit {done.returncode}): {tail}") from err
    errors = [i for i in issues if i.get("severity") == "error"]
    if errors:
        lines = [f"  {i.get('code')}: {i.get('location', '')} {i.get('subCode') or ''}".rstrip()
                 for i in errors[:10]]
        more = f"\n  … and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise InvalidBIDSError(
            f"{bids_dir} is not valid BIDS ({len(errors)} errors):\n" + "\n".join(lines) + more
            + "\nrun bids-validator-deno on it for the full report, or pass --skip-bids-validation")
    counts: dict[str, int] = defaultdict(int)
    for issue in issues:
        counts[str(issue.get("code"))] += 1
    return [f"{code} ×{n}" for code, n in sorted(counts.items())]
