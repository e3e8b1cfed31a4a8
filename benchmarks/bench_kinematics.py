"""Benchmark: forward kinematics + 2,000 posed surface points of the Allegro hand model.

Median wall time over many runs after warm-up, float32 on the CPU, for batch 1 and batch 64, each
with 1 torch thread and with the default thread count; the JSON reports the faster setting
(small ops are dominated by per-op overhead, so threads often only add latency). Timings are noisy on a shared 2-core machine; figures are indicative.
Last line: one JSON object with ``fk_ms_b1`` and ``fk_ms_b64`` (milliseconds).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from hp_ros.core import se3
from hp_ros.core.hand import HandModel


def median_ms(fn, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return 1e3 * times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--points", type=int, default=2000)
    args = parser.parse_args()

    hand = HandModel.default(n_surface_points=args.points)
    gen = torch.Generator().manual_seed(0)
    results = {}
    default_threads = torch.get_num_threads()
    for batch, threads in ((1, 1), (1, default_threads), (64, 1), (64, default_threads)):
        torch.set_num_threads(threads)
        q = hand.random_q(batch, generator=gen)
        base = se3.se3_exp(torch.tensor([0.02, -0.01, 0.45, 0.3, -0.2, 1.0])).expand(batch, 4, 4).contiguous()

        def step():
            with torch.no_grad():
                T = hand.forward_kinematics(q, base)
                return hand.surface_points(q, link_poses=T)

        def step_grad():
            qq = q.clone().requires_grad_(True)
            T = hand.forward_kinematics(qq, base)
            hand.surface_points(qq, link_poses=T).sum().backward()

        runs = args.runs if batch == 1 else max(args.runs // 10, 50)
        fwd = median_ms(step, runs, args.warmup)
        bwd = median_ms(step_grad, max(runs // 4, 50), args.warmup // 4 + 1)
        results[batch] = min(fwd, results.get(batch, float("inf")))
        print(f"batch {batch:3d} ({threads} thread(s)): FK + {args.points} posed points {fwd:.3f} ms "
              f"(no grad), forward+backward {bwd:.3f} ms")
    torch.set_num_threads(default_threads)
    print(json.dumps({"fk_ms_b1": round(results[1], 4), "fk_ms_b64": round(results[64], 4)}))


if __name__ == "__main__":
    main()
