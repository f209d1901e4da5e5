"""Command line of the BIDS App: parse, build the configuration, dispatch.

No science here, and no heavy imports at module level: ``--help`` is instant.

Usage::

    bids-amyloid BIDS_DIR OUT participant [--participant-label 01 02]
    bids-amyloid BIDS_DIR OUT group --stage cohort|pretrain|contrastive|distill|all
    bids-amyloid BIDS_DIR OUT predict --model student_T1w.pt
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from bids_amyloid import __version__
from bids_amyloid.centiloid import EQUATIONS
from bids_amyloid.errors import (
    EXIT_SESSION_FAILED,
    EXIT_USAGE,
    AppError,
    InputMissingError,
    OutputError,
    UsageError,
)

LOG = logging.getLogger("bids_amyloid")
LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")
STAGES = ("cohort", "pretrain", "contrastive", "distill", "all")
ABLATIONS = ("no-pretrain", "no-triplet", "no-feature-kd", "no-logit-kd", "no-teacher")
CONTRASTS = ("T1w", "T2w", "FLAIR", "T2starw")


class NotAvailableError(AppError):
    """The requested level is not part of this build."""

    exit_code = EXIT_SESSION_FAILED


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults only where there is one (not ``None``/``False``/empty)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, [], ()) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so ``main`` owns exit codes."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="bids-amyloid",
        description="Predict amyloid-beta PET positivity from MRI alone (BIDS App).",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("bids_dir", type=Path, help="the input BIDS dataset (never written)")
    p.add_argument("output_dir", type=Path, help="the BIDS-Derivatives output folder")
    p.add_argument("analysis_level", choices=("participant", "group", "predict"))
    p.add_argument("--version", action="version", version=f"bids-amyloid {__version__}")

    sel = p.add_argument_group("selection")
    sel.add_argument("--participant-label", "--participant_label", nargs="+", default=[],
                     metavar="LABEL", help="subjects to process, with or without 'sub-'")
    sel.add_argument("--session-label", "--session_label", nargs="+", default=[],
                     metavar="LABEL", help=("sessions to process, with or without 'ses-'; a selected MRI session "
                           "brings the PET paired with it and a selected PET its MRI session, "
                           "even from other sessions (OASIS layouts; the log says which)"))
    sel.add_argument("--bids-filter-file", type=Path, metavar="FILE",
                     help="JSON of pybids filters per query (t1w, t2w, flair, t2starw, pet)")
    sel.add_argument("--skip-bids-validation", "--skip_bids_validation", action="store_true")

    run = p.add_argument_group("running")
    run.add_argument("-w", "--work-dir", type=Path, help="scratch folder (default: OUT/work)")
    run.add_argument("--nprocs", "--n-cpus", type=int, default=1, help="sessions in parallel")
    run.add_argument("--omp-nthreads", type=int, default=1, help="threads per session")
    run.add_argument("--config", type=Path, metavar="FILE.toml", help="configuration overrides")
    run.add_argument("--seed", type=int, help="random seed (default 42)")
    run.add_argument("--device", help="auto, cpu, cuda, cuda:1 …")
    run.add_argument("--overwrite", action="store_true", help="redo finished outputs")
    run.add_argument("-v", "--verbose", action="count", default=0)
    run.add_argument("-q", "--quiet", action="count", default=0)

    data = p.add_argument_group("cohort and labels")
    data.add_argument("--contrasts", nargs="+", choices=CONTRASTS,
                      help="MRI contrasts the (student) model uses (default T1w)")
    data.add_argument("--teacher-contrasts", nargs="+", choices=CONTRASTS,
                      help="MRI contrasts the teacher sees (default: --contrasts)")
    data.add_argument("--centiloid-column",
                      help="column of scans.tsv/sessions.tsv/participants.tsv holding Centiloid "
                           "(default: the first of centiloid, centiloids, "
                           "Centiloid_fSUVR_rsf_TOT_CORTMEAN, … in any case); with "
                           "--suvr-equation, the SUVR column")
    data.add_argument("--centiloid-threshold", type=float, help="positive if CL > this")
    data.add_argument("--tracer-thresholds", metavar="TRC=CL,…",
                      help="per-tracer thresholds, e.g. PIB=16.4,AV45=20.6")
    data.add_argument("--suvr-equation", metavar="KEY[,KEY]",
                      help="convert an SUVR column to Centiloid with published equations, one "
                           f"per tracer: {', '.join(EQUATIONS)} (see bids_amyloid.centiloid)")
    data.add_argument("--pair-window-days", type=int, help="max MRI–PET distance (default 365)")

    pre = p.add_argument_group("participant level")
    pre.add_argument("--skull-strip", choices=("hdbet", "deepbet"), help="brain extraction")

    grp = p.add_argument_group("group level")
    grp.add_argument("--stage", choices=STAGES, default="all")
    grp.add_argument("--run-name", default="default", help="OUT/group/<run-name>/")
    grp.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    grp.add_argument("--teacher", type=Path, help="a teacher.pt to distil from (skips phases 1–2)")
    grp.add_argument("--ablate", nargs="+", choices=ABLATIONS, default=[],
                     help="leave out a part of the protocol; no-teacher: the MRI-only student "
                          "trained with its classification loss alone (the baseline)")
    grp.add_argument("--cv", type=int, metavar="K",
                     help="K-fold cross-validation over subjects: one run per outer fold "
                          "(fold-<k>/), out-of-fold predictions, pooled AUC, and an ensemble "
                          "of the K students for predict (K ≥ 3)")
    grp.add_argument("--cl-gap", type=float, help="Centiloid gap for triplet negatives (default 5)")
    grp.add_argument("--deterministic", action="store_true", help="bitwise-reproducible on CPU")
    grp.add_argument("--backbone", help="biomedclip (default) or a timm ViT name (random init)")
    grp.add_argument("--backbone-weights", type=Path,
                     help="BiomedCLIP weights (file or folder); or $BIDS_AMYLOID_WEIGHTS")

    prd = p.add_argument_group("predict")
    prd.add_argument("--model", type=Path, help="a student_*.pt model file")
    prd.add_argument("--saliency", action="store_true", help="write saliency maps and pages")
    prd.add_argument("--allow-training-subjects", action="store_true",
                     help="do not warn about subjects from the model's training cohort")
    return p


def clean_labels(labels: list[str], prefix: str) -> tuple[str, ...]:
    """Strip an optional ``sub-``/``ses-`` prefix and validate each label."""
    out = []
    for raw in labels:
        label = raw[len(prefix):] if raw.startswith(prefix) else raw
        if not LABEL_RE.match(label):
            raise UsageError(f"invalid {prefix.rstrip('-')} label {raw!r}: only letters and digits")
        out.append(label)
    return tuple(dict.fromkeys(out))


def parse_tracer_thresholds(text: str | None) -> dict[str, float]:
    """``"PIB=16.4,AV45=20.6"`` → ``{"PIB": 16.4, "AV45": 20.6}``."""
    if not text:
        return {}
    from bids_amyloid.tracers import normalise_tracer

    out = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--tracer-thresholds: {item!r} is not TRACER=VALUE")
        try:
            out[normalise_tracer(name.strip())] = float(value)
        except ValueError as err:
            raise UsageError(f"--tracer-thresholds: cannot read {item!r} ({err})") from err
    return out


def clean_run_name(name: str) -> str:
    """A run name becomes a folder name: letters, digits, ``-`` and ``_`` only."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise UsageError(f"invalid --run-name {name!r}: letters, digits, '-' and '_' only")
    return name


def _inside(child: Path, parent: Path) -> bool:
    child, parent = child.resolve(), parent.resolve()
    return child == parent or parent in child.parents


def check_paths(args: argparse.Namespace) -> None:
    """Inputs exist; OUT and the work dir are outside BIDS_DIR. Creates nothing."""
    bids = args.bids_dir
    if not bids.is_dir():
        raise InputMissingError(f"BIDS folder {bids} does not exist")
    if not (bids / "dataset_description.json").is_file():
        raise InputMissingError(f"{bids} has no dataset_description.json: not a BIDS dataset")
    for name, path in (("output dir", args.output_dir), ("work dir", args.work_dir)):
        if path is not None and _inside(path, bids):
            raise UsageError(f"the {name} {path} is inside the input BIDS dataset {bids}; "
                             "choose a folder outside it (the input is never written)")
    if args.model is not None and not args.model.is_file():
        raise InputMissingError(f"model file {args.model} does not exist")
    if args.teacher is not None and not args.teacher.is_file():
        raise InputMissingError(f"teacher file {args.teacher} does not exist")


def make_output_dirs(args: argparse.Namespace) -> None:
    """Create OUT (and the work dir): exit 73 if that is impossible."""
    for path in (args.output_dir, args.work_dir):
        if path is None:
            continue
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"cannot create {path}: {err}") from err
        if not os.access(path, os.W_OK):
            raise OutputError(f"cannot write into {path}")


def read_filters(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise InputMissingError(f"BIDS filter file {path} does not exist") from err
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(f"BIDS filter file {path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise UsageError(f"BIDS filter file {path} must hold a JSON object")
    return data


def config_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Only the flags the user actually typed become overrides."""
    pairs = {
        ("cohort", "contrasts"): tuple(args.contrasts) if args.contrasts else None,
        ("cohort", "centiloid_column"): args.centiloid_column,
        ("cohort", "centiloid_threshold"): args.centiloid_threshold,
        ("cohort", "suvr_equation"): args.suvr_equation,
        ("cohort", "pair_window_days"): args.pair_window_days,
        ("preproc", "skull_strip"): args.skull_strip,
        ("contrastive", "cl_gap"): args.cl_gap,
        ("model", "backbone"): args.backbone,
        ("model", "backbone_weights"): str(args.backbone_weights) if args.backbone_weights else None,
        ("train", "seed"): args.seed,
        ("train", "device"): args.device,
        ("train", "deterministic"): True if args.deterministic else None,
        ("train", "ablate"): tuple(args.ablate) if args.ablate else None,
        ("train", "cv_folds"): args.cv,
    }
    thresholds = parse_tracer_thresholds(args.tracer_thresholds)
    if thresholds:
        pairs[("cohort", "tracer_thresholds")] = thresholds
    out: dict[str, dict[str, Any]] = {}
    for (section, key), value in pairs.items():
        if value is not None:
            out.setdefault(section, {})[key] = value
    return out


def build_options(args: argparse.Namespace):  # -> RunOptions
    from bids_amyloid.options import RunOptions

    if args.nprocs < 1 or args.omp_nthreads < 1:
        raise UsageError("--nprocs and --omp-nthreads must be at least 1")
    return RunOptions(
        bids_dir=args.bids_dir.resolve(),
        output_dir=args.output_dir.resolve(),
        analysis_level=args.analysis_level,
        work_dir=args.work_dir.resolve() if args.work_dir else None,
        participant_labels=clean_labels(args.participant_label, "sub-"),
        session_labels=clean_labels(args.session_label, "ses-"),
        bids_filters=read_filters(args.bids_filter_file),
        skip_bids_validation=args.skip_bids_validation,
        nprocs=args.nprocs,
        omp_nthreads=args.omp_nthreads,
        overwrite=args.overwrite,
        stage=args.stage,
        run_name=clean_run_name(args.run_name),
        resume=args.resume,
        teacher=args.teacher.resolve() if args.teacher else None,
        teacher_contrasts=tuple(args.teacher_contrasts or ()),
        model=args.model.resolve() if args.model else None,
        saliency=args.saliency,
        allow_training_subjects=args.allow_training_subjects,
        progress=args.quiet == 0 and sys.stderr.isatty(),
    )


def setup_logging(verbose: int, quiet: int) -> None:
    level = logging.INFO - 10 * verbose + 10 * quiet
    logging.basicConfig(
        level=max(logging.DEBUG, min(logging.CRITICAL, level)),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


ENTRY_POINTS = {
    "participant": ("bids_amyloid.participant.run", "run_participant"),
    "cohort": ("bids_amyloid.cohort", "run_cohort_stage"),
    "group": ("bids_amyloid.train.run", "run_group"),
    "predict": ("bids_amyloid.predict", "run_predict"),
}


def entry_point(level: str, stage: str = "all") -> Any:
    """The ``run_*(opts, cfg) -> int`` function of a level (``group --stage cohort``: the cohort).

    A level whose module is not part of this build is a clear error, not a traceback.
    """
    import importlib

    key = "cohort" if level == "group" and stage == "cohort" else level
    module_name, func = ENTRY_POINTS[key]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] == "bids_amyloid":  # a part not in this build
            raise NotAvailableError(f"the {key} level is not available in this build "
                                    f"({err.name} is missing)") from err
        raise
    if not hasattr(module, func):
        raise NotAvailableError(f"the {key} level is not available in this build "
                                f"({module_name}.{func} is missing)")
    return getattr(module, func)


def dispatch(opts, cfg) -> int:
    """Call the level's entry point; each returns an exit code."""
    return int(entry_point(opts.analysis_level, opts.stage)(opts, cfg))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``bids-amyloid``; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as err:
        parser.print_usage(sys.stderr)
        print(str(err), file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as done:  # --help / --version
        return int(done.code or 0)
    setup_logging(args.verbose, args.quiet)
    try:
        if args.analysis_level == "predict" and args.model is None:
            raise UsageError("predict needs --model PATH (a student_*.pt file)")
        check_paths(args)
        opts = build_options(args)
        from bids_amyloid.config import ConfigError
        from bids_amyloid.config_checks import load_run_config

        if args.config is not None and not args.config.is_file():
            raise InputMissingError(f"configuration file {args.config} does not exist")
        try:
            cfg = load_run_config(args.config, config_overrides(args))
        except ConfigError as err:
            raise UsageError(str(err)) from err
        make_output_dirs(args)  # only once every argument is known to be good
        os.environ.setdefault("OMP_NUM_THREADS", str(opts.omp_nthreads))
        return dispatch(opts, cfg)
    except AppError as err:
        LOG.error("%s", err)
        return err.exit_code
    except KeyboardInterrupt:
        LOG.error("interrupted; finished outputs are kept, partial ones were never renamed")
        return 130


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
