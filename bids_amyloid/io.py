"""Atomic file writing: write to a temporary name beside the target, then rename.

A run killed mid-write leaves no partial file under a final name. Every TSV
of the app goes through :func:`write_tsv`: ``n/a`` for missing values (BIDS),
``\n`` line ends, floats in their shortest exact form (what ``repr`` gives), so
a value read back is the value written and same inputs give the same bytes.

Example
-------
>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> with atomic_path(d / "a.txt") as tmp:
...     _ = tmp.write_text("hello")
>>> (d / "a.txt").read_text()
'hello'
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd

TMP_MARK = ".tmp-"


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path in ``target``'s folder; rename it to ``target`` on success.

    The temporary name keeps ``target``'s suffixes (``.nii.gz``, ``.npy``) so
    libraries that pick a format by extension still work.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes[-2:]) if target.name.endswith(".nii.gz") else target.suffix
    fd, name = tempfile.mkstemp(prefix=TMP_MARK + target.name.split(".")[0] + "-",
                                suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs follow the umask
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(target: Path | str, text: str) -> Path:
    """Write ``text`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return Path(target)


def write_json(target: Path | str, data: Any) -> Path:
    """Write ``data`` as indented JSON atomically."""
    return write_text(target, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def to_tsv(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """TSV text of ``frame``; an empty frame with ``columns`` gives just that header.

    >>> import pandas as pd
    >>> to_tsv(pd.DataFrame({"a": [0.1, None], "b": ["x", "y"]}))
    'a\\tb\\n0.1\\tx\\nn/a\\ty\\n'
    """
    if columns is not None and frame.empty:
        frame = frame.reindex(columns=list(columns))
    return frame.to_csv(sep="\t", index=False, na_rep="n/a", lineterminator="\n")


def write_tsv(target: Path | str, frame: pd.DataFrame, columns: Sequence[str] | None = None
              ) -> Path:
    """Write :func:`to_tsv` of ``frame`` to ``target`` atomically."""
    return write_text(target, to_tsv(frame, columns))


def remove_stale_temporaries(folder: Path | str) -> int:
    """Delete temporaries left by a killed run below ``folder``; return how many."""
    count = 0
    for path in Path(folder).rglob(TMP_MARK + "*"):
        if path.is_file():
            path.unlink()
            count += 1
    return count
