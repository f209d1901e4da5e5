"""Peak memory of the running process, as the benchmarks report it (stdlib only)."""

from __future__ import annotations

import resource


def process_peak_gb() -> float:
    """This process's peak resident memory since it started (GB): ``VmHWM``.

    Not ``getrusage().ru_maxrss``: Linux carries that high-water mark across
    ``exec``, so in a spawned worker it includes the parent's resident size at
    fork time, not the process's own peak.
    """
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # no /proc: KiB, Linux-like


def peak_memory_gib(device: object) -> float:
    """Peak memory (GiB): allocated on a CUDA ``device``, else this process's resident peak."""
    if getattr(device, "type", None) == "cuda":
        import torch

        return torch.cuda.max_memory_allocated(device) / 2**30
    return process_peak_gb() * 1e9 / 2**30
