"""Centiloid-aware negative mining for the phase-2 triplets.

For an anchor (one MRI–PET pair), the negative is the PET of *another subject*
whose Centiloid differs by at least ``gap`` (docs/protocol.md: δ = 5). Fallback 1:
the other subject's sample with the largest |ΔCL|; fallback 2 (no usable
Centiloid): any other subject's sample. The pool is the training set; the
negative's PET is then read from its memory-mapped slice cache.

Example
-------
>>> import numpy as np
>>> pool = NegativePool(["a", "a", "b", "c"], [10.0, 12.0, 13.0, 40.0])
>>> idx, kinds = pool.mine([0], gap=5.0, rng=np.random.default_rng(0))
>>> int(idx[0]), kinds[0]
(3, 'gap')
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

GAP, FARTHEST, ANY = "gap", "farthest", "any"


class NegativePool:
    """The samples negatives are drawn from: subject ids and Centiloid values."""

    def __init__(self, subjects: Sequence[str], centiloids: Sequence[float]) -> None:
        self.subjects = np.asarray(subjects, dtype=object)
        self.centiloids = np.asarray(centiloids, dtype=float)
        if self.subjects.shape != self.centiloids.shape:
            raise ValueError("subjects and centiloids differ in length")
        if np.unique(self.subjects).size < 2:
            raise ValueError("negative mining needs samples from at least two subjects")

    def __len__(self) -> int:
        return int(self.subjects.size)

    def mine_one(self, subject: str, centiloid: float, gap: float,
                 rng: np.random.Generator) -> tuple[int, str]:
        """Index of one negative for an anchor of ``subject`` with ``centiloid``, and its rule."""
        other = self.subjects != subject
        if not other.any():
            raise ValueError(f"no sample of another subject than {subject} for a negative")
        delta = np.abs(self.centiloids - centiloid)
        usable = other & np.isfinite(delta)
        candidates = np.flatnonzero(usable & (delta >= gap))
        if candidates.size:
            return int(rng.choice(candidates)), GAP
        if usable.any():
            masked = np.where(usable, delta, -np.inf)
            farthest = np.flatnonzero(masked == masked.max())
            return int(rng.choice(farthest)), FARTHEST
        return int(rng.choice(np.flatnonzero(other))), ANY

    def mine(self, anchors: Sequence[int], gap: float, rng: np.random.Generator,
             anchor_subjects: Sequence[str] | None = None,
             anchor_centiloids: Sequence[float] | None = None) -> tuple[list[int], list[str]]:
        """Negatives for a batch of anchors.

        By default anchors are indices into the pool itself; pass
        ``anchor_subjects``/``anchor_centiloids`` for anchors from elsewhere.
        """
        subjects = (list(anchor_subjects) if anchor_subjects is not None
                    else [self.subjects[i] for i in anchors])
        cls = (list(anchor_centiloids) if anchor_centiloids is not None
               else [self.centiloids[i] for i in anchors])
        picks = [self.mine_one(s, float(c), gap, rng) for s, c in zip(subjects, cls, strict=True)]
        return [p[0] for p in picks], [p[1] for p in picks]
