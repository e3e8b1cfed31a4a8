"""Baseline figures of ``bench_graph.py`` (kept apart from its timing code): per run the demo's
``score`` gives ``frozen`` / ``hand_only`` (:mod:`hp_ros.core.baselines`) on the frames the graph
posed; pooled here over the runs, weighted by those frames, with the tracker's ratio to the better
baseline per metric (the figures ``bench_ekf.py`` reports offline)."""
from __future__ import annotations

import numpy as np


def baseline_summary(runs: list) -> dict:
    """``{"adds_ratio_to_baseline", "rot_ratio_to_baseline", "baselines": {name: {adds_mean_cm,
    rot_err_mean_deg}}}`` pooled over ``runs`` (results of :func:`hp_ros.tools.demo.run_pipeline`);
    empty when no run has baselines."""
    runs = [r for r in runs if r.get("baselines")]
    if not runs:
        return {}
    w = np.array([r["n_matched"] for r in runs], dtype=float)

    def pooled(get, key):
        return float(np.sum([get(r)[key] * wi for r, wi in zip(runs, w)]) / w.sum())

    tracker = {k: pooled(lambda r: r["tracker_compared"], k) for k in ("adds_mean_cm", "rot_err_mean_deg")}
    names = runs[0]["baselines"].keys()
    base = {n: {k: round(pooled(lambda r: r["baselines"][n], k), 3) for k in ("adds_mean_cm", "rot_err_mean_deg")}
            for n in names}
    best = {k: min(b[k] for b in base.values()) for k in ("adds_mean_cm", "rot_err_mean_deg")}
    return {"adds_ratio_to_baseline": round(tracker["adds_mean_cm"] / best["adds_mean_cm"], 3),
            "rot_ratio_to_baseline": round(tracker["rot_err_mean_deg"] / best["rot_err_mean_deg"], 3),
            "baselines": base}
