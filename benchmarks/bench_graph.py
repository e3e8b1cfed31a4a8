"""Live-graph benchmark: the real node graph (separate processes over loopback DDS, started from
``hp_ros.graph`` as the launch file does) tracking replayed synthetic sequences at 1.0x rate.

For each variant (``processes``: one process per node, the package's Fast DDS profile, shared
memory + UDP on 127.0.0.1, the default; ``single``: the three nodes in one process,
``hp_ros.nodes.graph_process``, same profile; ``udp``: one process per node, the rmw default transport) and each object x seed, :func:`hp_ros.tools.demo.run_pipeline`
generates the sequence, starts the three nodes, replays the bag and scores the published poses.
Printed per run and per variant: frames posed / frames, output rate, latency p50/p95 (tracker
publish time minus the replay's publish time of the frame, both writers' source timestamps), CPU
% per process during the replay (100 = one core), final state; and the per-node stage medians the
nodes report in /diagnostics (where a frame's time goes).

LAST line: one JSON object with the default variant's figures pooled over its runs:
``posed_fraction``, ``output_hz`` (median), ``latency_ms_p50``, ``latency_ms_p95`` (pooled
frames), ``final_tracking_fraction``, ``adds_mean_cm`` and ``rot_err_mean_deg`` (means over the
matched frames of all runs), ``max_penetration_mm`` (the largest of all runs),
``segmentation_rate_hz`` (median), ``cpu_ms_per_frame`` (per process, CPU ms per camera frame
from /proc, median over runs; ``replay`` stands in for the drivers), ``cpu_ms_per_frame_total``
(the three nodes), ``final_rot_err_deg`` (each run's last posed frame), ``refine_wall_s_median`` / ``refine_cpu_s_median`` (the
refinement node's wall and CPU seconds per request in the running graph, from its /diagnostics; median
over runs of each run's median), ``cpu_ms_per_frame_tracking`` / ``_tracking_total`` (the same from one second
after the first pose: a cold start's search and the fallback frames before it left out), plus the machine (``cpu_model``, ``cores``, ``cpu_ref_ms``: a fixed
single-threaded workload, :mod:`hp_ros.tools.machine`, measured before the hogs start),
``cpu_hog``, ``load_avg_1min`` and per-variant figures under ``variants``; and beside the accuracy the
baselines (``baselines``: ``frozen`` / ``hand_only`` on the same posed frames, graph_baselines.py) with
``adds_ratio_to_baseline`` / ``rot_ratio_to_baseline`` (tracker over the better baseline; ``--motion lab``:
the arm-carried sequences of issue 29).

``--cpu-hog N`` runs N busy-loop processes beside the graph for the whole benchmark: a robot
controller taking cores on the same small PC.

Usage: ``scripts/run_isolated.sh .venv/bin/python benchmarks/bench_graph.py [--seeds 0 1 2]
[--objects builtin:cracker_box builtin:soup_can] [--variants processes single udp] [--duration 8]
[--cpu-hog 1]``
(about 45 s per run on 2 cores).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


# variant -> run_pipeline arguments
VARIANTS = {"processes": {"transport": "loopback", "single_process": False},
            "single": {"transport": "loopback", "single_process": True},
            "udp": {"transport": "udp", "single_process": False}}


def run_variant(variant: str, objects, seeds, duration: float, work: Path, motion: str = "classic",
                initial_offset=None, keep: bool = False) -> dict:
    from graph_baselines import baseline_summary

    from hp_ros.tools.demo import run_pipeline

    runs = []
    for obj in objects:
        for seed in seeds:
            r = run_pipeline(work / f"{variant}-{obj.split(':')[-1]}-{seed}", object_spec=obj, duration=duration,
                             initial_offset=initial_offset,
                             seed=seed, log=lambda *a: None, motion=motion, **VARIANTS[variant])
            runs.append(r)
            if keep:   # the published poses, for a look at single frames (stamp_ns, (N, 4, 4))
                est = r.get("estimates") or {}
                np.savez(work / f"{variant}-{obj.split(':')[-1]}-{seed}" / "estimates.npz",
                         stamps_ns=np.array(sorted(est), dtype=np.int64),
                         T_cam_obj=np.array([est[s] for s in sorted(est)]).reshape(-1, 4, 4))
            stages = {name.split(": ")[-1].split("/")[-1]: {k.split(".", 1)[1]: v for k, v in vals.items()
                                                          if k.startswith("stage_ms.")}
                      for name, vals in r.get("diagnostics", {}).items()}
            print(f"[{variant}] {obj} seed {seed}: posed {r['n_matched']}/{r['n_frames']}, "
                  f"{r['output_rate_hz']:.1f} Hz, latency p50 {r['latency_ms_median']:.0f} ms / p95 "
                  f"{r['latency_ms_p95']:.0f} ms, ADD-S {r['adds_mean_cm']:.2f} cm, final {r['final_state']}, "
                  f"rotation {r['rot_err_mean_deg']:.2f} deg, max penetration {r['max_penetration_mm']:.2f} mm, "
                  f"segmentation {r['segmentation_rate_hz']:.1f} Hz, CPU % {r.get('cpu_percent')}, "
                  f"CPU ms/frame {r.get('cpu_ms_per_frame')} (nodes {r.get('cpu_ms_per_frame_total')}; once tracking "
                  f"{r.get('cpu_ms_per_frame_tracking_total')})", flush=True)
            print(f"        stage medians [ms]: {stages}; final rotation error {_final_rot(r)} deg; refinement "
                  f"{_refine_figure(r, 'refine_wall_s_median')} s wall / {_refine_figure(r, 'refine_cpu_s_median')} s "
                  f"CPU per request (median)", flush=True)
    lat = np.concatenate([np.asarray(r["latencies_ms"], float) for r in runs if r["latencies_ms"]] or [np.zeros(0)])
    adds = [f["adds_cm"] for r in runs for f in r["per_frame"] if f["matched"]]
    rots = [f["rot_err_deg"] for r in runs for f in r["per_frame"] if f["matched"]]
    geo = [f["rot_err_geodesic_deg"] for r in runs for f in r["per_frame"] if f["matched"]]
    cpu_ms = {}
    for r in runs:
        for k, v in r.get("cpu_ms_per_frame", {}).items():
            cpu_ms.setdefault(k, []).append(v)
    cpu_trk = {}
    for r in runs:
        for k, v in (r.get("cpu_ms_per_frame_tracking") or {}).items():
            cpu_trk.setdefault(k, []).append(v)
    trk_totals = [r["cpu_ms_per_frame_tracking_total"] for r in runs if r.get("cpu_ms_per_frame_tracking_total")]
    cpu = {}
    for r in runs:
        for k, v in r.get("cpu_percent", {}).items():
            cpu.setdefault(k, []).append(v)
    out = {
        "posed_fraction": round(sum(r["n_matched"] for r in runs) / max(1, sum(r["n_frames"] for r in runs)), 3),
        # from each run's first pose on (a cold start poses nothing before its first answer)
        "posed_fraction_after_first_pose": round(sum(sum(f["matched"] for f in _from_first(r)) for r in runs)
                                                 / max(1, sum(len(_from_first(r)) for r in runs)), 3),
        # over the runs that posed (a run never posed has NaN); ``runs_never_posed`` counts the others
        "time_to_first_pose_s_median": _median_or_none([r.get("time_to_first_pose_s") for r in runs], 2),
        "runs_never_posed": sum(not r["n_matched"] for r in runs),
        "output_hz": round(float(np.median([r["output_rate_hz"] for r in runs])), 2),
        "latency_ms_p50": round(float(np.percentile(lat, 50)), 1) if lat.size else float("nan"),
        "latency_ms_p95": round(float(np.percentile(lat, 95)), 1) if lat.size else float("nan"),
        "final_tracking_fraction": round(sum(r["final_state"] == "TRACKING" for r in runs) / len(runs), 3),
        "adds_mean_cm": round(float(np.mean(adds)), 3) if adds else float("nan"),
        # a can's spin about its axis is not counted (metrics.axis_error_deg); the full angle beside
        "rot_err_mean_deg": round(float(np.mean(rots)), 2) if rots else float("nan"),
        "rot_err_geodesic_mean_deg": round(float(np.mean(geo)), 2) if geo else float("nan"),
        "max_penetration_mm": round(float(max(r["max_penetration_mm"] for r in runs)), 2),
        "segmentation_rate_hz": round(float(np.median([r["segmentation_rate_hz"] for r in runs])), 2),
        "cpu_ms_per_frame": {k: round(float(np.median(v)), 2) for k, v in cpu_ms.items()},
        "cpu_ms_per_frame_total": round(float(np.median([r["cpu_ms_per_frame_total"] for r in runs])), 2),
        # from 1 s after the first pose (what tracking costs, without a cold start's search)
        "cpu_ms_per_frame_tracking": {k: round(float(np.median(v)), 2) for k, v in cpu_trk.items()},
        "cpu_ms_per_frame_tracking_total": round(float(np.median(trk_totals)), 2) if trk_totals else None,
        "cpu_percent_median": {k: float(np.median(v)) for k, v in cpu.items()},
        "final_states": [r["final_state"] for r in runs],
        "final_rot_err_deg": [_final_rot(r) for r in runs],
        # the refinement node's requests in the running graph (its /diagnostics): median over runs of
        # each run's median wall / CPU seconds per request (a cold start's search included)
        **{k: _median_or_none([_refine_figure(r, k) for r in runs])
           for k in ("refine_wall_s_median", "refine_cpu_s_median")},
        **baseline_summary(runs),
    }
    print(f"[{variant}] pooled over {len(runs)} runs: {out}", flush=True)
    return out


def _final_rot(r: dict):
    """Rotation error [deg] of a run's last posed frame (None: never posed)."""
    last = [f["rot_err_deg"] for f in r["per_frame"] if f["matched"]]
    return round(float(last[-1]), 2) if last else None


def _refine_figure(r: dict, key: str):
    """A figure of the refinement node's last /diagnostics in run ``r`` (None: no request answered)."""
    vals = next((v for name, v in r.get("diagnostics", {}).items() if name.endswith("refinement_node")), {})
    return float(vals[key]) if key in vals else None


def _median_or_none(values: list, digits: int = 3):
    """Median of the finite ``values`` (None: none)."""
    values = [v for v in values if v is not None and np.isfinite(v)]
    return round(float(np.median(values)), digits) if values else None


def _from_first(r: dict) -> list:
    """A run's per-frame records from its first posed frame on."""
    frames = r["per_frame"]
    first = next((i for i, f in enumerate(frames) if f["matched"]), len(frames))
    return frames[first:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--objects", nargs="+", default=["builtin:cracker_box", "builtin:soup_can"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=["processes"], choices=list(VARIANTS),
                    help="graph variants (see the module docstring); the first is the default reported in the "
                         "JSON line")
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--motion", default="lab", choices=("classic", "lab"),
                    help="synthetic motion (hp_ros.core.synth): lab (the default: an arm carries the hand, gaiting, /tf) or classic (hand base fixed)")
    ap.add_argument("--cpu-hog", type=int, default=0, metavar="N",
                    help="run N busy-loop processes beside the graph (a stand-in for a robot controller)")
    ap.add_argument("--initial-offset", nargs=2, type=float, default=None, metavar=("M", "DEG"),
                    help="start the tracker from the first frame's ground truth moved by M metres and DEG degrees "
                         "(default: no initial pose, the graph cold-starts as in a lab)")
    ap.add_argument("--keep", default=None, metavar="DIR",
                    help="keep each run's folder (node logs, the synthetic bag, the published poses in "
                         "estimates.npz) in DIR instead of a temporary one")
    args = ap.parse_args()
    from hp_ros.core.objects import BUILTIN_OBJECTS
    from hp_ros.tools import machine

    for spec in args.objects:  # a readable error before any graph starts (was a traceback from the generator)
        name = spec[len("builtin:"):] if spec.startswith("builtin:") else None
        if (name is not None and name not in BUILTIN_OBJECTS) or (name is None and not Path(spec).is_file()):
            hint = f" (write builtin:{spec})" if spec in BUILTIN_OBJECTS else ""
            ap.error(f"--objects {spec}: not a built-in object ({', '.join('builtin:' + b for b in BUILTIN_OBJECTS)}) "
                     f"nor a mesh file{hint}")
    if args.keep and Path(args.keep).exists() and any(Path(args.keep).iterdir()):
        ap.error(f"--keep {args.keep}: the folder is not empty (each run writes its own bag there); "
                 "give a new or empty one")
    here = machine.describe()  # before the hogs start: the machine's own speed
    print(f"machine: {here['cpu_model']}, {here['cores']} cores, CPU reference {here['cpu_ref_ms']} ms "
          f"(hp_ros.tools.machine), load average {here['load_avg_1min']} at start; cpu hogs {args.cpu_hog}",
          flush=True)
    results = {}
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.cpu_hog)]
    try:
        with tempfile.TemporaryDirectory(prefix="hp_ros_bench_graph_") as tmp:
            if args.keep:
                tmp = str(Path(args.keep).resolve())
                Path(tmp).mkdir(parents=True, exist_ok=True)
            for v in args.variants:
                results[v] = run_variant(v, args.objects, args.seeds, args.duration, Path(tmp), args.motion,
                                         tuple(args.initial_offset) if args.initial_offset else None,
                                         keep=bool(args.keep))
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    default = results[args.variants[0]]
    summary = {k: default[k] for k in ("posed_fraction", "posed_fraction_after_first_pose",
                                        "time_to_first_pose_s_median", "runs_never_posed", "output_hz", "latency_ms_p50", "latency_ms_p95",
                                        "final_tracking_fraction", "adds_mean_cm", "rot_err_mean_deg",
                                        "rot_err_geodesic_mean_deg", "max_penetration_mm", "segmentation_rate_hz", "cpu_ms_per_frame",
                                        "cpu_ms_per_frame_total", "cpu_ms_per_frame_tracking",
                                        "cpu_ms_per_frame_tracking_total", "final_rot_err_deg",
                                        "refine_wall_s_median", "refine_cpu_s_median")}
    summary.update({k: default[k] for k in ("adds_ratio_to_baseline", "rot_ratio_to_baseline", "baselines") if k in default})
    summary.update(motion=args.motion, initial_offset=args.initial_offset, cpu_hog=args.cpu_hog,
                   cpu_model=here["cpu_model"], cores=here["cores"],
                   cpu_ref_ms=here["cpu_ref_ms"])
    summary["load_avg_1min"] = round(os.getloadavg()[0], 2)
    summary["variants"] = {v: {k: r[k] for k in ("posed_fraction", "output_hz", "latency_ms_p50", "latency_ms_p95",
                                                 "final_tracking_fraction", "adds_mean_cm", "rot_err_mean_deg",
                                                 "cpu_ms_per_frame_total")} for v, r in results.items()}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
