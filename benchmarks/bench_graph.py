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
frames), ``final_tracking_fraction``, ``adds_mean_cm`` (mean over matched frames of all runs),
plus ``load_avg_1min`` and per-variant figures under ``variants``.

Usage: ``scripts/run_isolated.sh .venv/bin/python benchmarks/bench_graph.py [--seeds 0 1 2]
[--objects builtin:cracker_box builtin:soup_can] [--variants processes single udp] [--duration 8]``
(about 45 s per run on 2 cores).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np


# variant -> run_pipeline arguments
VARIANTS = {"processes": {"transport": "loopback", "single_process": False},
            "single": {"transport": "loopback", "single_process": True},
            "udp": {"transport": "udp", "single_process": False}}


def run_variant(variant: str, objects, seeds, duration: float, work: Path) -> dict:
    from hp_ros.tools.demo import run_pipeline

    runs = []
    for obj in objects:
        for seed in seeds:
            r = run_pipeline(work / f"{variant}-{obj.split(':')[-1]}-{seed}", object_spec=obj, duration=duration,
                             seed=seed, log=lambda *a: None, **VARIANTS[variant])
            runs.append(r)
            stages = {name.split(": ")[-1].split("/")[-1]: {k.split(".", 1)[1]: v for k, v in vals.items()
                                                          if k.startswith("stage_ms.")}
                      for name, vals in r.get("diagnostics", {}).items()}
            print(f"[{variant}] {obj} seed {seed}: posed {r['n_matched']}/{r['n_frames']}, "
                  f"{r['output_rate_hz']:.1f} Hz, latency p50 {r['latency_ms_median']:.0f} ms / p95 "
                  f"{r['latency_ms_p95']:.0f} ms, ADD-S {r['adds_mean_cm']:.2f} cm, final {r['final_state']}, "
                  f"CPU % {r.get('cpu_percent')}", flush=True)
            print(f"        stage medians [ms]: {stages}", flush=True)
    lat = np.concatenate([np.asarray(r["latencies_ms"], float) for r in runs if r["latencies_ms"]] or [np.zeros(0)])
    adds = [f["adds_cm"] for r in runs for f in r["per_frame"] if f["matched"]]
    cpu = {}
    for r in runs:
        for k, v in r.get("cpu_percent", {}).items():
            cpu.setdefault(k, []).append(v)
    out = {
        "posed_fraction": round(sum(r["n_matched"] for r in runs) / max(1, sum(r["n_frames"] for r in runs)), 3),
        "output_hz": round(float(np.median([r["output_rate_hz"] for r in runs])), 2),
        "latency_ms_p50": round(float(np.percentile(lat, 50)), 1) if lat.size else float("nan"),
        "latency_ms_p95": round(float(np.percentile(lat, 95)), 1) if lat.size else float("nan"),
        "final_tracking_fraction": round(sum(r["final_state"] == "TRACKING" for r in runs) / len(runs), 3),
        "adds_mean_cm": round(float(np.mean(adds)), 3) if adds else float("nan"),
        "cpu_percent_median": {k: float(np.median(v)) for k, v in cpu.items()},
        "final_states": [r["final_state"] for r in runs],
    }
    print(f"[{variant}] pooled over {len(runs)} runs: {out}", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--objects", nargs="+", default=["builtin:cracker_box", "builtin:soup_can"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=["processes", "single", "udp"], choices=list(VARIANTS),
                    help="graph variants (see the module docstring); the first is the default reported in the "
                         "JSON line")
    ap.add_argument("--duration", type=float, default=8.0)
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores at start", flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="hp_ros_bench_graph_") as tmp:
        for v in args.variants:
            results[v] = run_variant(v, args.objects, args.seeds, args.duration, Path(tmp))
    default = results[args.variants[0]]
    summary = {k: default[k] for k in ("posed_fraction", "output_hz", "latency_ms_p50", "latency_ms_p95",
                                        "final_tracking_fraction", "adds_mean_cm")}
    summary["load_avg_1min"] = round(os.getloadavg()[0], 2)
    summary["variants"] = {v: {k: r[k] for k in ("posed_fraction", "output_hz", "latency_ms_p50", "latency_ms_p95",
                                                 "final_tracking_fraction", "adds_mean_cm")} for v, r in results.items()}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
