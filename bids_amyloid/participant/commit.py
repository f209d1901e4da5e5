"""Move a staged unit into OUT so that a sidecar always marks a finished file.

The old sidecars are removed first, then the data files are moved in, then the
new sidecars, each move atomic: a run killed at any moment leaves at worst
data files without sidecars, which the next run redoes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bids_amyloid.io import atomic_path
from bids_amyloid.participant.outputs import Output


def commit(stage: Path, out: Path, outputs: list[Output]) -> None:
    """Move a unit's staged files into ``out``: old sidecars out, data in, sidecars last.

    Every staged file (figures included) is moved; ``outputs`` names the sidecars
    that mark completion, which are written only after all data files are in place.
    """
    missing = [str(p.relative_to(stage)) for o in outputs for p in {o.path, o.sidecar}
               if not p.is_file()]
    if missing:
        raise RuntimeError(f"nothing committed: outputs missing from the staging folder: "
                           f"{', '.join(sorted(missing))}")
    staged = sorted(p for p in stage.rglob("*") if p.is_file())
    markers = {o.sidecar.relative_to(stage) for o in outputs}
    for rel in markers:
        (out / rel).unlink(missing_ok=True)
    data = [p for p in staged if p.relative_to(stage) not in markers]
    last = [p for p in staged if p.relative_to(stage) in markers]
    for src in data + last:
        _move_atomic(src, out / src.relative_to(stage))


def _move_atomic(src: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        try:
            os.replace(src, tmp)
        except OSError:  # another file system: copy instead
            shutil.copyfile(src, tmp)
