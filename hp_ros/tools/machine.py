"""What machine a figure was measured on: CPU model, cores, and a CPU speed reference.

Benchmarks print these next to their figures so a reader can scale them to another machine.
:func:`cpu_reference_ms` is a fixed single-threaded workload (pure Python and small numpy
operations, the mix the nodes run); a machine twice as fast per core gives half the value.
"""
from __future__ import annotations

import os
import platform
import time

import numpy as np


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _workload() -> float:
    acc = 0.0
    for i in range(200_000):           # interpreter speed (the nodes' callbacks, glue)
        acc += i * 0.5
    rng = np.random.default_rng(0)
    a = rng.random((240, 320))
    for _ in range(40):                # small-array numpy (the segmentation's per-frame work)
        acc += float(np.sort(a, axis=1)[:, 0].sum()) + float((a > 0.5).sum())
    return acc


def cpu_reference_ms(repeats: int = 7) -> float:
    """Median wall time [ms] of :func:`_workload` on one thread (measured in this process)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        _workload()
        times.append(1000.0 * (time.perf_counter() - t))
    return round(float(np.median(times)), 1)


def describe() -> dict:
    """``{"cpu_model", "cores", "cpu_ref_ms", "load_avg_1min"}`` of this machine, now."""
    return {"cpu_model": cpu_model(), "cores": os.cpu_count(), "cpu_ref_ms": cpu_reference_ms(),
            "load_avg_1min": round(os.getloadavg()[0], 2)}
