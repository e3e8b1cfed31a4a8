"""Calibration of the published score (:mod:`hp_ros.core.ekf.confidence`): the reliability table.

Runs ``bench_ekf.py``'s filter variants (``dynamics``, ``fingertips``, ``center``, ``both``,
``+depth``: from drifting to precise) on the synthetic sequences, through the tracking node's own
per-frame path (:class:`hp_ros.core.ekf.FrameTracker`), and pools every frame after the first:
its score, its ADD-S against ground truth, its state and whether it was predicted only. Prints
per score bin the number of frames, their mean score and the fraction with ADD-S < 1 cm
(reliability: it should rise with the score, and match the mean score for a calibrated score),
and the mean score of tracked, predicted-only and LOST frames.

LAST line: one JSON object: ``bins`` (lower edges), ``n``, ``mean_score``, ``frac_adds_lt_1cm`` per
bin, ``monotonic`` (over bins with >= ``--min-bin`` frames), ``ece`` (expected calibration error:
frame-weighted |fraction - mean score|), ``score_tracked``, ``score_predicted``, ``score_lost``.

Usage: ``.venv/bin/python benchmarks/bench_confidence.py [--seconds 8] [--seeds 0 1] [--variants ...]``
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

_spec = importlib.util.spec_from_file_location("bench_ekf", Path(__file__).with_name("bench_ekf.py"))
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

EDGES = (0.0, 0.2, 0.4, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0001)


def collect(seconds: float, seeds, variants, config=None) -> dict:
    """Per frame (all runs pooled): ``score``, ``adds`` [m], ``state``, ``predicted``, ``variant``."""
    from hp_ros.core import metrics
    from hp_ros.core.hand import HandModel
    from hp_ros.core.objects import ObjectModel
    from hp_ros.core.sdf import MeshSDF
    from hp_ros.core.segmentation import ModelObjectMasker

    hand = HandModel.default()
    out = {k: [] for k in ("score", "adds", "add", "state", "predicted", "variant")}
    for name in bench.OBJECTS:
        obj = ObjectModel.builtin(name)
        sdf, pts, masker = MeshSDF(obj.vertices, obj.faces), obj.surface_points(1000), None
        for seed in seeds:
            seq = bench.make_sequence(name, seconds, seed)
            obs = bench.make_observations(seq, seed)
            for v in variants:
                if v == "+depth" and masker is None:
                    masker = ModelObjectMasker(obj, seq.K, seq.width, seq.height)
                rec: dict = {}
                T, _ = bench.run_filter(seq, obs, v, hand, obj, sdf, config=config, seed=seed, record=rec,
                                        masker=masker)
                adds = metrics.add_s(seq.T_cam_obj, T, pts)
                out["score"].append(rec["score"][1:])
                out["adds"].append(np.asarray(adds)[1:])
                out["add"].append(np.asarray(metrics.add(seq.T_cam_obj, T, pts))[1:])
                out["state"].append(rec["state"][1:])
                out["predicted"].append(rec["predicted"][1:])
                out["variant"].append(np.full(len(T) - 1, v))
                print(f"  {name:12s} seed {seed} {v:10s} ADD-S mean {100 * np.mean(adds):.2f} cm, score mean "
                      f"{np.mean(rec['score'][1:]):.3f}", flush=True)
    return {k: np.concatenate(v) for k, v in out.items()}


def reliability(score: np.ndarray, good: np.ndarray, min_bin: int, good_add: np.ndarray = None) -> dict:
    """Per bin of :data:`EDGES`: frames, mean score, fraction ``good`` (and ``good_add``); monotonic
    rise and ECE."""
    n, ms, fr, fa = [], [], [], []
    for lo, hi in zip(EDGES[:-1], EDGES[1:]):
        sel = (score >= lo) & (score < hi)
        n.append(int(sel.sum()))
        ms.append(float(score[sel].mean()) if sel.any() else float("nan"))
        fr.append(float(good[sel].mean()) if sel.any() else float("nan"))
        if good_add is not None:
            fa.append(round(float(good_add[sel].mean()), 4) if sel.any() else float("nan"))
    full = [f for f, k in zip(fr, n) if k >= min_bin]
    monotonic = all(b >= a for a, b in zip(full, full[1:]))
    ece = sum(k * abs(f - m) for k, f, m in zip(n, fr, ms) if k) / max(sum(n), 1)
    return {"bins": [round(e, 2) for e in EDGES[:-1]], "n": n, "mean_score": [round(x, 4) for x in ms],
            "frac_adds_lt_1cm": [round(x, 4) for x in fr], "frac_add_lt_1cm": fa, "monotonic": bool(monotonic),
            "ece": round(float(ece), 4)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--variants", nargs="+", default=list(bench.VARIANTS), choices=bench.VARIANTS)
    ap.add_argument("--min-bin", type=int, default=30, help="bins with fewer frames are left out of the monotonic test")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    d = collect(args.seconds, args.seeds, args.variants)
    good = d["adds"] < 0.01
    rel = reliability(d["score"], good, args.min_bin, d["add"] < 0.01)
    print(f"Reliability ({len(good)} frames; variants {', '.join(args.variants)}; seeds {args.seeds}; "
          f"{args.seconds:g} s each)")
    print(f"  {'score bin':>12s} {'frames':>7s} {'mean score':>10s} {'ADD-S < 1 cm':>12s} {'ADD < 1 cm':>10s}")
    for lo, hi, n, m, f, a in zip(EDGES[:-1], EDGES[1:], rel["n"], rel["mean_score"], rel["frac_adds_lt_1cm"],
                                  rel["frac_add_lt_1cm"]):
        print(f"  [{lo:.2f}, {min(hi, 1.0):.2f}) {n:7d} {m:10.3f} {f:12.3f} {a:10.3f}")
    tracked = (d["state"] == 1) & ~d["predicted"]
    pred = (d["state"] == 1) & d["predicted"]
    lost = d["state"] == 2
    m = lambda sel: round(float(d["score"][sel].mean()), 4) if sel.any() else None  # noqa: E731
    rel.update(score_tracked=m(tracked), score_predicted=m(pred), score_lost=m(lost),
               n_tracked=int(tracked.sum()), n_predicted=int(pred.sum()), n_lost=int(lost.sum()))
    print(f"  monotonic: {rel['monotonic']}; ECE {rel['ece']:.3f}; mean score tracked {rel['score_tracked']} "
          f"({rel['n_tracked']}), predicted only {rel['score_predicted']} ({rel['n_predicted']}), LOST "
          f"{rel['score_lost']} ({rel['n_lost']})")
    for v in args.variants:
        sel = d["variant"] == v
        print(f"  {v:10s} score mean {d['score'][sel].mean():.3f}, ADD-S < 1 cm {good[sel].mean():.3f}, ADD < 1 cm "
              f"{np.mean(d['add'][sel] < 0.01):.3f}")
    print(f"load average {os.getloadavg()[0]:.2f}; wall {time.perf_counter() - t0:.0f} s")
    print(json.dumps(rel))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
