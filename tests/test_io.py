"""Atomic writes leave nothing partial behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bids_amyloid.io import atomic_path, remove_stale_temporaries, write_json


def test_failure_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "x.nii.gz"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.name.endswith(".nii.gz")
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_success_replaces_existing(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    target.write_text("old")
    write_json(target, {"b": 1, "a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_remove_stale_temporaries(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / ".tmp-x-123.nii.gz").write_bytes(b"")
    (tmp_path / "d" / "keep.nii.gz").write_bytes(b"")
    assert remove_stale_temporaries(tmp_path) == 1
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["keep.nii.gz"]


def test_permissions_follow_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "p.json", {})
    finally:
        os.umask(old)
    assert (tmp_path / "p.json").stat().st_mode & 0o777 == 0o644
