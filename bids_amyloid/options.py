"""What the user asked a run to do (paths, selections, level options).

Science parameters live in :mod:`bids_amyloid.config`; this holds the rest,
as one frozen value built by the CLI and passed to each level.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunOptions:
    bids_dir: Path
    output_dir: Path
    analysis_level: str
    work_dir: Path | None = None
    participant_labels: tuple[str, ...] = ()  # without "sub-"
    session_labels: tuple[str, ...] = ()  # without "ses-"
    bids_filters: dict[str, Any] = field(default_factory=dict)
    skip_bids_validation: bool = False
    nprocs: int = 1
    omp_nthreads: int = 1
    overwrite: bool = False
    # group
    stage: str = "all"
    run_name: str = "default"
    resume: bool = False
    teacher: Path | None = None
    teacher_contrasts: tuple[str, ...] = ()
    # predict
    model: Path | None = None
    saliency: bool = False
    allow_training_subjects: bool = False
    progress: bool = True
