"""The command line: exit codes, label validation, path refusals, fast --help."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bids_amyloid import cli
from bids_amyloid.errors import (
    EXIT_CANNOT_CREATE_OUTPUT,
    EXIT_INPUT_MISSING,
    EXIT_INVALID_BIDS,
    EXIT_NOTHING_SELECTED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
)
from tests.bids_builders import simple_dataset


@pytest.fixture
def bids(tmp_path: Path) -> Path:
    return simple_dataset(tmp_path / "bids", n_subjects=10).root


def cohort(bids: Path, out: Path, *extra: str) -> int:
    return cli.main([str(bids), str(out), "group", "--stage", "cohort", "-q", *extra])


# ----------------------------------------------------------------- --help / --version


def test_help_is_fast_and_imports_no_torch():
    code = ("import sys, time; t = time.perf_counter(); from bids_amyloid.cli import main; "
            "rc = main(['--help']); "
            "heavy = [m for m in ('torch', 'ants', 'bids', 'pandas', 'open_clip', 'nibabel') "
            "if m in sys.modules]; "
            "print('RESULT', rc, ','.join(heavy) or '-', time.perf_counter() - t)")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    wall = time.perf_counter() - start
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT"))
    _, rc, heavy, seconds = line.split()
    assert rc == "0" and heavy == "-", f"--help imported {heavy}"
    assert float(seconds) < 1.0, f"--help took {seconds} s inside Python"
    assert wall < 10.0
    assert "participant" in done.stdout and "--participant-label" in done.stdout


def test_version(capsys):
    assert cli.main(["--version"]) == EXIT_OK
    assert "bids-amyloid" in capsys.readouterr().out


# ----------------------------------------------------------------- labels


def test_clean_labels_strips_prefixes_and_deduplicates():
    assert cli.clean_labels(["sub-01", "02", "sub-01"], "sub-") == ("01", "02")
    assert cli.clean_labels(["ses-M000", "d0129"], "ses-") == ("M000", "d0129")
    for bad in ("../x", "sub-", "01/02", "a b", "sub-01_ses-1", "x;rm"):
        with pytest.raises(UsageError, match="invalid"):
            cli.clean_labels([bad], "sub-")


@pytest.mark.parametrize("flag", ["--participant-label", "--participant_label"])
def test_bad_label_is_a_usage_error_and_creates_nothing(bids, tmp_path, flag):
    out = tmp_path / "out"
    assert cli.main([str(bids), str(out), "group", "--stage", "cohort", flag, "../x"]) \
        == EXIT_USAGE
    assert not out.exists()
    assert cli.main([str(bids), str(out), "participant", "--session-label", "../../etc"]) \
        == EXIT_USAGE


def test_sub_prefix_is_stripped_end_to_end(bids, tmp_path):
    # 5 negatives (odd) are needed for a 5-fold split; sub-08 and sub-10 are left out
    labels = ["sub-01", "02", "sub-03", "04", "sub-05", "06", "sub-07", "09"]
    assert cohort(bids, tmp_path / "out", "--participant_label", *labels,
                  "--skip-bids-validation") == EXIT_OK
    text = (tmp_path / "out/group/default/cohort.tsv").read_text()
    assert sorted(line.split("\t")[0] for line in text.splitlines()[1:]) == [
        "sub-" + label.removeprefix("sub-") for label in labels]


def test_options_built_from_the_command_line(bids, tmp_path):
    args = cli.build_parser().parse_args([str(bids), str(tmp_path / "o"), "group",
                                          "--participant-label", "sub-07",
                                          "--session-label", "ses-01",
                                          "--tracer-thresholds", "11CPIB=16.4,florbetapir=20.6",
                                          "--contrasts", "T1w", "T2w"])
    opts = cli.build_options(args)
    assert opts.participant_labels == ("07",) and opts.session_labels == ("01",)
    overrides = cli.config_overrides(args)
    assert overrides["cohort"]["tracer_thresholds"] == {"PIB": 16.4, "AV45": 20.6}
    assert overrides["cohort"]["contrasts"] == ("T1w", "T2w")
    assert "train" not in overrides  # flags not typed are not overrides
    for bad in ("PIB", "PIB=high", "FDG=1"):
        with pytest.raises(UsageError):
            cli.parse_tracer_thresholds(bad)


# ----------------------------------------------------------------- exit codes


def test_exit_0_cohort(bids, tmp_path, capsys):
    assert cohort(bids, tmp_path / "out") == EXIT_OK  # with validation
    assert (tmp_path / "out/group/default/cohort.tsv").is_file()
    assert (tmp_path / "out/dataset_description.json").is_file()
    assert "positive_pct" in capsys.readouterr().out


def test_exit_16_invalid_bids(bids, tmp_path):
    sidecar = bids / "sub-01/ses-01/pet/sub-01_ses-01_trc-AV45_pet.json"
    data = json.loads(sidecar.read_text())
    del data["TracerName"]
    sidecar.write_text(json.dumps(data))
    assert cohort(bids, tmp_path / "out") == EXIT_INVALID_BIDS
    assert cohort(bids, tmp_path / "out", "--skip-bids-validation") == EXIT_OK


def test_exit_18_nothing_selected(bids, tmp_path):
    assert cohort(bids, tmp_path / "out", "--participant-label", "99",
                  "--skip-bids-validation") == EXIT_NOTHING_SELECTED
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"t1w": {"acquisition": "nonexistent"},
                                   "t2w": {"acquisition": "nonexistent"},
                                   "pet": {"tracer": "FBB"}}))
    assert cohort(bids, tmp_path / "out", "--bids-filter-file", str(filters),
                  "--skip-bids-validation") == EXIT_NOTHING_SELECTED


def test_exit_64_usage(bids, tmp_path):
    out = str(tmp_path / "out")
    assert cli.main([str(bids), out, "sideways"]) == EXIT_USAGE
    assert cli.main([str(bids), out, "group", "--no-such-flag"]) == EXIT_USAGE
    assert cli.main([str(bids), out, "predict"]) == EXIT_USAGE  # needs --model
    assert cli.main([str(bids), out, "group", "--run-name", "../up"]) == EXIT_USAGE
    assert cli.main([str(bids), out, "group", "--nprocs", "0"]) == EXIT_USAGE
    bad_json = tmp_path / "filters.json"
    bad_json.write_text("{not json")
    assert cli.main([str(bids), out, "group", "--bids-filter-file", str(bad_json)]) == EXIT_USAGE
    bad_key = tmp_path / "keys.json"
    bad_key.write_text(json.dumps({"bold": {"task": "rest"}}))
    assert cohort(bids, tmp_path / "out", "--bids-filter-file", str(bad_key),
                  "--skip-bids-validation") == EXIT_USAGE
    config = tmp_path / "c.toml"
    config.write_text("[cohort]\nno_such_setting = 1\n")
    assert cli.main([str(bids), out, "group", "--config", str(config)]) == EXIT_USAGE
    assert cohort(bids, tmp_path / "out", "--suvr-equation", "made-up",
                  "--skip-bids-validation") == EXIT_USAGE


@pytest.mark.parametrize("inside", ["derivatives/amyloid", ".", "sub-01/out"])
def test_output_dir_inside_bids_is_refused(bids, inside):
    before = sorted(p.relative_to(bids) for p in bids.rglob("*"))
    assert cohort(bids, bids / inside) == EXIT_USAGE
    assert sorted(p.relative_to(bids) for p in bids.rglob("*")) == before


def test_work_dir_inside_bids_is_refused(bids, tmp_path):
    assert cohort(bids, tmp_path / "out", "-w", str(bids / "work")) == EXIT_USAGE
    assert not (bids / "work").exists()


def test_exit_66_input_missing(bids, tmp_path):
    out = str(tmp_path / "out")
    assert cli.main([str(tmp_path / "nowhere"), out, "participant"]) == EXIT_INPUT_MISSING
    (tmp_path / "empty").mkdir()
    assert cli.main([str(tmp_path / "empty"), out, "participant"]) == EXIT_INPUT_MISSING
    assert cli.main([str(bids), out, "predict", "--model", str(tmp_path / "no.pt")]) \
        == EXIT_INPUT_MISSING
    assert cli.main([str(bids), out, "group", "--bids-filter-file",
                     str(tmp_path / "none.json")]) == EXIT_INPUT_MISSING
    assert cli.main([str(bids), out, "group", "--config", str(tmp_path / "none.toml")]) \
        == EXIT_INPUT_MISSING


def test_exit_73_cannot_create_output(bids, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert cohort(bids, blocker / "out") == EXIT_CANNOT_CREATE_OUTPUT
    assert cohort(bids, tmp_path / "out", "-w", str(blocker / "work")) \
        == EXIT_CANNOT_CREATE_OUTPUT


def test_missing_level_module_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(cli.ENTRY_POINTS, "predict", ("bids_amyloid.not_built_yet", "run"))
    with pytest.raises(cli.NotAvailableError, match="not available"):
        cli.entry_point("predict")
    assert cli.entry_point("group", "cohort").__name__ == "run_cohort_stage"
