"""pybids layout and queries: which image files exist, narrowed by ``--bids-filter-file``.

The layout is built with ``validate=False``; its database lives in the work dir or
in memory, never in BIDS_DIR. Several runs of one contrast in a session: the lowest
``run`` (then the file name) is used, and the choice is logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from bids_amyloid.errors import (
    UsageError,
)
from bids_amyloid.options import RunOptions

LOG = logging.getLogger(__name__)
NIFTI_EXTENSIONS = [".nii.gz", ".nii"]
BASE_QUERIES: dict[str, dict[str, Any]] = {
    "t1w": {"datatype": "anat", "suffix": "T1w"},
    "t2w": {"datatype": "anat", "suffix": "T2w"},
    "flair": {"datatype": "anat", "suffix": "FLAIR"},
    "t2starw": {"datatype": "anat", "suffix": "T2starw"},
    "pet": {"datatype": "pet", "suffix": "pet"},
}
QUERY_OF_CONTRAST = {"T1w": "t1w", "T2w": "t2w", "FLAIR": "flair", "T2starw": "t2starw"}
IGNORED_FOLDERS = re.compile(r"^/(code|models|sourcedata|stimuli|derivatives|work)(/|$)")


def _fingerprint(root: Path) -> str:
    """Hash of every file's relative path, size and mtime (cache key of the layout)."""
    digest = hashlib.sha256(f"{root.resolve()}\0index_metadata=False\n".encode())
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(folder) / name
            try:
                st = path.stat()
            except OSError:
                continue
            digest.update(f"{path.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def build_layout(bids_dir: Path, work_dir: Path | None, subjects: tuple[str, ...] = ()) -> Any:
    """A pybids layout of ``bids_dir`` (``validate=False``).

    With ``subjects``, only their folders are indexed (array jobs stay fast) and
    nothing is cached. Otherwise the database is cached under
    ``work_dir/pybids/<fingerprint>`` (built under a temporary name, then renamed),
    so a changed dataset gets a new index. BIDS_DIR itself is never written.
    """
    import bids
    from bids.layout.validation import ALWAYS_IGNORE

    ignore: list[Any] = [IGNORED_FOLDERS, *ALWAYS_IGNORE]
    if subjects:
        keep = "|".join(re.escape(s) for s in subjects)
        ignore.append(re.compile(rf"^/sub-(?!({keep})(/|$))"))
    # Sidecars are not indexed (3x faster on big datasets): the one field needed,
    # TracerName, is read by sidecar_metadata() for PET files only.
    indexer = bids.BIDSLayoutIndexer(validate=False, ignore=ignore, index_metadata=False)
    if subjects or work_dir is None:
        return bids.BIDSLayout(bids_dir, validate=False, indexer=indexer)
    cache = work_dir / "pybids" / _fingerprint(bids_dir)
    if (cache / "layout_index.sqlite").is_file():
        LOG.debug("pybids: reusing the index in %s", cache)
        return bids.BIDSLayout(bids_dir, validate=False, database_path=cache, indexer=indexer)
    tmp = cache.with_name(f".tmp-{cache.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        LOG.warning("cannot cache the pybids index in %s (%s): indexing in memory", cache, err)
        return bids.BIDSLayout(bids_dir, validate=False, indexer=indexer)
    bids.BIDSLayout(bids_dir, validate=False, database_path=tmp, indexer=indexer)
    try:
        os.replace(tmp, cache)
    except OSError:  # another process cached the same dataset first
        shutil.rmtree(tmp, ignore_errors=True)
    return bids.BIDSLayout(bids_dir, validate=False, database_path=cache, indexer=indexer)


def _query(key: str, filters: dict[str, Any]) -> dict[str, Any]:
    """Base query of ``key`` with the user's filters (null → entity absent, "*" → any)."""
    from bids.layout import Query

    query = dict(BASE_QUERIES[key])
    for entity, value in filters.get(key, {}).items():
        if value is None:
            query[entity] = Query.NONE
        elif value == "*":
            query[entity] = Query.ANY
        else:
            query[entity] = value
    query["extension"] = NIFTI_EXTENSIONS
    return query


def check_filters(filters: dict[str, Any]) -> None:
    """``--bids-filter-file`` keys must be query names mapping to objects."""
    unknown = sorted(set(filters) - set(BASE_QUERIES))
    if unknown:
        raise UsageError(f"--bids-filter-file: unknown keys {unknown}; "
                         f"allowed: {', '.join(BASE_QUERIES)}")
    for key, value in filters.items():
        if not isinstance(value, dict):
            raise UsageError(f"--bids-filter-file: {key!r} must map to an object of entities")


def query_files(layout: Any, key: str, opts: RunOptions) -> list[Path]:
    query = _query(key, opts.bids_filters)
    if opts.participant_labels:
        query["subject"] = list(opts.participant_labels)
    # --session-label is applied after pairing (bids.pairing.select_sessions), not here
    try:
        return [Path(p) for p in layout.get(return_type="filename", **query)]
    except (ValueError, TypeError) as err:
        raise UsageError(f"--bids-filter-file: pybids refused the {key!r} query: {err}") from err


def name_entities(path: Path) -> dict[str, str]:
    """``sub-01_ses-2_trc-AV45_pet.nii.gz`` → ``{"sub": "01", "ses": "2", "trc": "AV45"}``.

    Parsed from the file name (pybids already matched it; asking its database
    per file is far slower on large datasets).
    """
    stem = path.name.split(".")[0]
    pairs = (part.split("-", 1) for part in stem.split("_")[:-1] if "-" in part)
    return {key: value for key, value in pairs}


def entity_labels(path: Path) -> tuple[str, str]:
    ents = name_entities(path)
    return ents["sub"], ents.get("ses", "")


def _run_key(path: Path) -> tuple[int, str]:
    run = name_entities(path).get("run", "0")
    return (int(run) if run.isdigit() else 0), path.name


def pick_run(files: list[Path], what: str) -> Path:
    """The lowest ``run`` (then file name) of ``files``; logs the choice if several."""
    ordered = sorted(files, key=_run_key)
    if len(ordered) > 1:
        LOG.info("%s: %d candidates, using %s (lowest run, then name; others: %s) — "
                 "narrow it with --bids-filter-file", what, len(ordered), ordered[0].name,
                 ", ".join(f.name for f in ordered[1:]))
    return ordered[0]


def sidecar_metadata(path: Path, root: Path) -> dict[str, Any]:
    """JSON metadata of ``path`` by the BIDS inheritance principle.

    Every ``*_<suffix>.json`` from the file's folder up to ``root`` whose
    entities are a subset of the file's applies; more specific ones (deeper,
    then more entities) override less specific ones.
    """
    stem = path.name.split(".")[0]
    *entities, suffix = stem.split("_")
    chain: list[tuple[int, int, Path]] = []
    folder, depth = path.parent, 0
    while True:
        for candidate in folder.glob(f"*{suffix}.json"):
            *cand_entities, cand_suffix = candidate.name[: -len(".json")].split("_")
            if cand_suffix == suffix and set(cand_entities) <= set(entities):
                chain.append((-depth, len(cand_entities), candidate))
        if folder == root or folder.parent == folder:
            break
        folder, depth = folder.parent, depth + 1
    merged: dict[str, Any] = {}
    for _, _, candidate in sorted(chain):
        try:
            data = json.loads(candidate.read_text())
        except (OSError, json.JSONDecodeError) as err:
            LOG.warning("%s: unreadable sidecar (%s); ignored", candidate, err)
            continue
        if isinstance(data, dict):
            merged.update(data)
    return merged
