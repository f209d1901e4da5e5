"""Who is scanned when: subjects, their amyloid course, and their session schedule."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np

CONTRASTS = ("T1w", "T2w", "FLAIR", "T2starw")
TRACERS = ("PIB", "AV45")
POSITIVE_FRACTION = 0.4
#: Probability that an MRI session holds each contrast (T1w always).
CONTRAST_PROBABILITY = {"full": {"T2w": 0.9, "FLAIR": 0.85, "T2starw": 0.7},
                        "small": {"T2w": 1.0, "FLAIR": 0.8, "T2starw": 0.6},
                        "tiny": {"T2w": 0.0, "FLAIR": 0.0, "T2starw": 0.0}}


@dataclass(frozen=True)
class SessionPlan:
    label: str                      # without "ses-", e.g. "d0412"
    day: int                        # days since the subject's first visit
    kind: str                       # "mri" or "pet"
    contrasts: tuple[str, ...] = ()
    tracer: str | None = None


@dataclass(frozen=True)
class SubjectPlan:
    label: str                      # without "sub-"
    index: int
    sex: str                        # "M" or "F"
    age: float                      # at day 0
    head_scale: float
    positive: bool                  # amyloid group at baseline
    cl0: float                      # Centiloid at day 0
    cl_slope: float                 # Centiloid per year
    thinning_offset: float          # subject-level nuisance of cortical thickness
    ventricle_offset: float         # subject-level nuisance of ventricle size (mm)
    first_date: dt.date
    sessions: tuple[SessionPlan, ...] = field(default_factory=tuple)

    def centiloid(self, day: int) -> float:
        return self.cl0 + self.cl_slope * day / 365.25

    def age_at(self, day: int) -> float:
        return self.age + day / 365.25


#: Subject-level nuisance (sd) of cortical thinning (fraction) and ventricle growth (mm).
THINNING_OFFSET_SD = 0.04
VENTRICLE_OFFSET_SD = 0.8
#: Session-level nuisance (sd) of the same two quantities.
THINNING_SESSION_SD = 0.01
VENTRICLE_SESSION_SD = 0.2


def mri_amyloid_signal(centiloid: float) -> float:
    """The amyloid quantity the MRI changes derive from: Centiloid clipped to 0–120, / 100.

    Cortical thinning and ventricle growth are linear in it (plus age and
    nuisance); nothing else of amyloid reaches the simulated MRI.

    >>> mri_amyloid_signal(-5.0), mri_amyloid_signal(50.0), mri_amyloid_signal(300.0)
    (0.0, 0.5, 1.2)
    """
    return float(np.clip(centiloid, 0.0, 120.0) / 100.0)


def thinning(age: float, centiloid: float, offset: float) -> float:
    """Cortical thinning (fraction of CSF-adjacent GM lost): age, amyloid, nuisance."""
    amyloid = mri_amyloid_signal(centiloid)
    return float(np.clip(0.06 + 0.004 * (age - 70.0) + 0.10 * amyloid + offset, 0.0, 0.45))


def ventricle_growth(age: float, centiloid: float, offset: float) -> float:
    """Ventricle enlargement (mm of growth into surrounding tissue)."""
    amyloid = mri_amyloid_signal(centiloid)
    return float(np.clip(0.6 + 0.08 * (age - 70.0) + 1.6 * amyloid + offset, 0.0, 5.0))


def plan_cohort(n_subjects: int, seed: int, size: str) -> list[SubjectPlan]:
    """Plan ``n_subjects`` subjects: ⌈0.4·N⌉ amyloid positive, alternating main tracer."""
    if n_subjects < 1:
        raise ValueError(f"need at least one subject, not {n_subjects}")
    if size not in CONTRAST_PROBABILITY:
        raise ValueError(f"size must be one of {sorted(CONTRAST_PROBABILITY)}, not {size!r}")
    rng = np.random.default_rng([seed, 0])
    n_pos = int(np.ceil(POSITIVE_FRACTION * n_subjects - 1e-9))
    positive = np.zeros(n_subjects, dtype=bool)
    positive[rng.permutation(n_subjects)[:n_pos]] = True
    return [_plan_subject(i, bool(positive[i]), seed, size) for i in range(n_subjects)]


def _plan_subject(index: int, positive: bool, seed: int, size: str) -> SubjectPlan:
    rng = np.random.default_rng([seed, 1, index])
    sex = "M" if rng.random() < 0.5 else "F"
    age = float(np.clip(rng.uniform(60.0, 82.0) + (3.0 if positive else 0.0), 55.0, 90.0))
    scale = float(np.clip(rng.normal(1.0 + (0.03 if sex == "M" else -0.03), 0.035), 0.88, 1.12))
    if positive:
        cl0, slope = rng.uniform(25.0, 110.0), rng.normal(3.5, 1.5)
    else:
        cl0, slope = float(np.clip(rng.normal(0.0, 6.0), -15.0, 12.0)), rng.normal(0.3, 0.4)
    sessions = _schedule(rng, index, size)
    first = dt.date(2005, 1, 1) + dt.timedelta(days=int(rng.integers(0, 3650)))
    return SubjectPlan(label=f"{index + 1:03d}", index=index, sex=sex, age=round(age, 1),
                       head_scale=scale, positive=positive, cl0=float(cl0),
                       cl_slope=float(slope),
                       thinning_offset=float(rng.normal(0.0, THINNING_OFFSET_SD)),
                       ventricle_offset=float(rng.normal(0.0, VENTRICLE_OFFSET_SD)), first_date=first,
                       sessions=sessions)


def _schedule(rng: np.random.Generator, index: int, size: str) -> tuple[SessionPlan, ...]:
    """MRI visits ~1–3 years apart (one in tiny size), a PET near most of them, extras.

    Every third subject (index 2, 5, …; not in tiny size) gets a last PET more
    than 365 days after its last MRI; subjects alternate PiB/AV45 as main tracer and some
    (full size, or index 3, 7, … in small and tiny size) also get the other tracer.
    """
    n_mri = int(rng.integers(2, 4)) if size == "full" else 1 + index % 2 if size == "small" else 1
    mri_days = [0]
    for _ in range(n_mri - 1):
        mri_days.append(mri_days[-1] + int(rng.integers(350, 1100)))
    tracer = TRACERS[index % 2]
    other = TRACERS[(index + 1) % 2]
    pet: list[tuple[int, str]] = []
    for k, day in enumerate(mri_days):
        if k == 0 or (size == "full" and rng.random() < 0.8):
            pet.append((day + _offset(rng), tracer))
    second = rng.random() < 0.35 if size == "full" else index % 4 == 3
    if second:
        pet.append((int(rng.choice(mri_days)) + _offset(rng), other))
    if index % 3 == 2 and size != "tiny":
        pet.append((mri_days[-1] + int(rng.integers(400, 800)), tracer))
    shift = -min([*mri_days, *(d for d, _ in pet)])
    probs = CONTRAST_PROBABILITY[size]
    taken: set[int] = set()
    out: list[SessionPlan] = []
    for k, day in enumerate(mri_days):
        have = tuple(c for c in CONTRASTS
                     if c == "T1w" or (index == 0 and k == 0) or rng.random() < probs[c])
        out.append(SessionPlan(label=f"d{day + shift:04d}", day=day + shift, kind="mri",
                               contrasts=have))
        taken.add(day + shift)
    for day, trc in pet:
        d = day + shift
        while d in taken:  # MRI and PET never share a day; two PETs neither
            d += 1
        taken.add(d)
        out.append(SessionPlan(label=f"d{d:04d}", day=d, kind="pet", tracer=trc))
    return tuple(sorted(out, key=lambda s: s.day))


def _offset(rng: np.random.Generator) -> int:
    """Days between an MRI and its nearby PET: 15–200, either side."""
    return int(rng.integers(15, 200)) * (1 if rng.random() < 0.6 else -1)
