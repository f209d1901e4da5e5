"""A ``group`` run killed with SIGKILL in the middle of phase 2, then ``--resume``d.

The run is a real subprocess (``python -m bids_amyloid.cli``), killed as soon as phase 2
has saved the checkpoint of its first epoch (``checkpoints/contrastive/last.pt``). The
resumed run must skip phase 1 (its checkpoints untouched, its log rows unchanged, the
log saying so), continue phase 2 after the saved epoch, and end with the metrics,
predictions and training log of an uninterrupted run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from train_fixtures import small_toml, synthetic_run

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("resume")]

CONFIG = small_toml(n_train_slices=4, contrastive_epochs=6, accumulation=1,
                    contrastive_extra="patience = 10\n")
TIMEOUT_S = 300


def _argv(bids: Path, out: Path, config: Path, run: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bids_amyloid.cli", str(bids), str(out), "group",
            "--stage", "all", "--config", str(config), "--run-name", run, "--deterministic",
            "--device", "cpu", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _kill_in_phase_2(argv: list[str], run: Path) -> None:
    """Start the run; SIGKILL it once phase 2 has checkpointed an epoch."""
    last = run / "checkpoints" / "contrastive" / "last.pt"
    proc = subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not last.is_file():
            assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before phase 2"
            assert time.monotonic() < deadline, "phase 2 did not checkpoint in time"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


def test_sigkill_in_phase_2_then_resume(tmp_path: Path) -> None:
    out = tmp_path / "out"
    bids, _ = synthetic_run(out, n_subjects=12, n_kept=8, run_name="killed", second_pet=())
    (out / "group" / "whole").mkdir(parents=True)
    shutil.copy(out / "group" / "killed" / "cohort.tsv", out / "group" / "whole" / "cohort.tsv")
    config = tmp_path / "resume.toml"
    config.write_text(CONFIG)
    killed, whole = out / "group" / "killed", out / "group" / "whole"

    _kill_in_phase_2(_argv(bids, out, config, "killed"), killed)
    assert (killed / "checkpoints" / "pretrain" / "done.json").is_file()
    assert not (killed / "checkpoints" / "contrastive" / "done.json").is_file()  # mid phase 2
    assert not (killed / "metrics.tsv").exists()
    pretrain = _mtimes(killed / "checkpoints" / "pretrain")
    log_before = pd.read_csv(killed / "training.tsv", sep="\t")
    assert set(log_before["phase"]) == {"pretrain", "contrastive"}
    saved_epochs = int((log_before["phase"] == "contrastive").sum())
    assert 1 <= saved_epochs < 6

    resumed = subprocess.run(_argv(bids, out, config, "killed", "--resume"), env=_env(),
                             capture_output=True, text=True, timeout=TIMEOUT_S)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "pretrain: already finished" in resumed.stderr
    assert f"contrastive: resuming after epoch {saved_epochs - 1}" in resumed.stderr
    assert _mtimes(killed / "checkpoints" / "pretrain") == pretrain   # phase 1 not re-run

    done = subprocess.run(_argv(bids, out, config, "whole"), env=_env(), capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]

    for name in ("metrics.tsv", "predictions.tsv"):
        pd.testing.assert_frame_equal(pd.read_csv(killed / name, sep="\t"),
                                      pd.read_csv(whole / name, sep="\t"))
    log_a = pd.read_csv(killed / "training.tsv", sep="\t")
    log_b = pd.read_csv(whole / "training.tsv", sep="\t")
    cols = [c for c in log_a.columns if c not in ("seconds", "samples_per_s")]
    pd.testing.assert_frame_equal(log_a[cols], log_b[cols])
    # the pretrain rows written before the kill are the ones kept
    early = [c for c in cols if c in log_before.columns]
    first = log_before[log_before["phase"] == "pretrain"][early].reset_index(drop=True)
    pd.testing.assert_frame_equal(first, log_a[log_a["phase"] == "pretrain"][early]
                                  .reset_index(drop=True), check_dtype=False)
