"""Per-epoch schedules of the three training phases, as pure functions.

Each function maps an epoch number (0-based) and the phase's configuration to
one value, so the loop, the tests and ``training.tsv`` all agree on it.

Example
-------
>>> from bids_amyloid.config import DistillConfig, PretrainConfig
>>> clip_norm(PretrainConfig().clip_schedule, 3)
2.0
>>> round(focal_margin(DistillConfig(), 20), 6), round(kd_temperature(DistillConfig(), 20), 6)
(1.2, 1.0)
"""

from __future__ import annotations

from bids_amyloid.config import DistillConfig


def clip_norm(schedule: tuple[tuple[int, float], ...], epoch: int) -> float:
    """Gradient-clipping norm: the value of the last ``(start_epoch, norm)`` entry reached.

    Phase 1 uses ``((0, 1.0), (2, 2.0), (5, 5.0))``: 1.0 in epochs 0–1,
    2.0 in 2–4, 5.0 from epoch 5.
    """
    if not schedule:
        raise ValueError("empty clipping schedule")
    ordered = sorted(schedule)
    value = ordered[0][1]
    for start, norm in ordered:
        if epoch >= start:
            value = norm
    return float(value)


def anticollapse_weight(epoch: int) -> float:
    """Phase-2 weight ``s`` of the anti-collapse penalties.

    0.1 for epochs 0–2, then ``min(1, 0.1 + 0.1·(epoch − 3))`` (0.1 at epoch 3,
    1.0 from epoch 12).
    """
    if epoch <= 2:
        return 0.1
    return min(1.0, 0.1 + 0.1 * (epoch - 3))


def _hold_then_ramp(start: float, end: float, step: float, hold: int, epoch: int) -> float:
    """``start`` for epochs ``< hold``, then moves by ``step`` per epoch until ``end``."""
    value = start + step * max(0, epoch - hold)
    return min(value, end) if end >= start else max(value, end)


def focal_margin(cfg: DistillConfig, epoch: int) -> float:
    """MarginFocal margin: 0.3 (epochs 0–5), +0.06 per epoch, 1.2 from epoch 20."""
    return _hold_then_ramp(cfg.margin_start, cfg.margin_end, cfg.margin_step,
                           cfg.margin_hold_epochs, epoch)


def kd_temperature(cfg: DistillConfig, epoch: int) -> float:
    """Logit-KD temperature: 2.5 (epochs 0–5), −0.1 per epoch, 1.0 from epoch 20."""
    return _hold_then_ramp(cfg.temperature_start, cfg.temperature_end, -cfg.temperature_step,
                           cfg.temperature_hold_epochs, epoch)


def gap_weight(cfg: DistillConfig, epoch: int) -> float:
    """Weight of the MarginFocal gap term: 0.1 before epoch 10, 0.3 from epoch 10."""
    return cfg.gap_weight_early if epoch < cfg.gap_switch_epoch else cfg.gap_weight_late


def _ramp(pair: tuple[float, float], epochs: int, epoch: int) -> float:
    start, end = pair
    if epochs <= 0:
        return end
    frac = min(max(epoch, 0), epochs) / epochs
    return start + (end - start) * frac


def loss_weights(cfg: DistillConfig, epoch: int) -> tuple[float, float, float]:
    """Phase-3 weights ``(a, b, c)`` of MarginFocal, feature KD and logit KD.

    ``a`` goes 0.3 → 0.4 and ``b`` 0.5 → 0.4 linearly over 10 epochs (reached
    at epoch 10); ``c`` stays 0.2.
    """
    a = _ramp(cfg.focal_weight, cfg.weight_ramp_epochs, epoch)
    b = _ramp(cfg.feature_weight, cfg.weight_ramp_epochs, epoch)
    return a, b, cfg.logit_weight
