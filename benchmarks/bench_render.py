"""Benchmark: soft silhouette + RGB rendering, forward + backward, of a 5k-face object plus the
Allegro hand (hp_ros.core.render), at 128x128 and 256x256 RoIs.

Scene: a 5,120-face icosphere (radius 5 cm, per-vertex colours) 40 cm in front of the camera,
the default hand posed in front of it so that fingers occlude part of it. Loss = L2 mask loss
(hand + object) + L2 RGB loss (object) against a fixed target rendered at a perturbed pose;
gradients flow to the object's 6-vector pose delta and the hand vertices.

No ratio to PyTorch3D: PyTorch3D is not installed here, so no reference can be measured in the same
run on the same workload (a ratio to times copied from a document was reported before; issue 29
dropped it).

Last output line: JSON with fwd_bwd_ms_128, fwd_bwd_ms_256 and the CPU-time figures.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import trimesh

from hp_ros.core import se3
from hp_ros.core.camera import Camera
from hp_ros.core.losses import rendering_loss
from hp_ros.core.priors import Weights
from hp_ros.core.render import render


def make_scene():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.05)  # 5,120 faces
    obj_v = torch.tensor(sphere.vertices, dtype=torch.float32)
    obj_f = torch.tensor(sphere.faces, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    obj_c = torch.rand(obj_v.shape[0], 3, generator=g)
    T_obj = se3.make_pose(torch.eye(3), torch.tensor([0.0, 0.0, 0.40]))[None]
    try:
        from hp_ros.core.hand import HandModel

        hand = HandModel.default()
        # palm facing the camera's -z, fingers along camera -y, in front of the object
        R = se3.so3_exp(torch.tensor([0.0, -1.5708, 0.0]))
        base = se3.make_pose(R, torch.tensor([0.03, 0.05, 0.30]))[None]
        hand_v, hand_f, _ = hand.posed_mesh(hand.zero_q(1), base)
        hand_v = hand_v.detach()
        hand_name = f"Allegro hand ({hand_f.shape[0]} faces)"
    except Exception as exc:  # hand model not available: a box "finger"
        box = trimesh.creation.box([0.02, 0.12, 0.02])
        hand_v = torch.tensor(box.vertices, dtype=torch.float32)[None] + torch.tensor(
            [0.02, 0.0, 0.33])
        hand_f = torch.tensor(box.faces, dtype=torch.long)
        hand_name = f"box finger (hand model unavailable: {exc})"
    return obj_v, obj_f, obj_c, T_obj, hand_v, hand_f, hand_name


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=60,
                    help="timed runs per size (medians; the machine is shared, so many)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (0 = torch default); the renderer runs many small "
                         "ops, a second thread mostly adds contention on a shared 2-core CPU")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    obj_v, obj_f, obj_c, T_obj, hand_v, hand_f, hand_name = make_scene()
    cam = Camera.from_intrinsics(615.0, 615.0, 320.0, 240.0, 640, 480)
    print(f"object: icosphere {obj_f.shape[0]} faces; hand: {hand_name}; "
          f"torch threads {torch.get_num_threads()}")
    weights = Weights(rgb=1.0)  # the three rendering terms at weight 1
    results, cpu_med, cpu_p25 = {}, {}, {}
    for S in (128, 256):
        verts0 = se3.transform_points(T_obj, obj_v[None])
        # RoI around the object (as the refinement does); fingers cross it in front
        roi = cam.roi(verts0, S, margin=0.25)
        K = roi.K.to(torch.float32)
        with torch.no_grad():
            xi_t = torch.tensor([[0.005, -0.003, 0.0, 0.05, 0.0, 0.08]])
            T_t = se3.apply_delta(T_obj, xi_t)
            tgt = render([(se3.transform_points(T_t, obj_v[None]), obj_f), (hand_v, hand_f)],
                         K, S, colors=[obj_c, None])
        obs_masks = tgt.hard_masks.float()
        obs_rgb = tgt.rgb
        xi = torch.zeros(1, 6, requires_grad=True)
        hv = hand_v.clone().requires_grad_(True)

        def step():
            T = se3.apply_delta(T_obj, xi)
            out = render([(se3.transform_points(T, obj_v[None]), obj_f), (hv, hand_f)], K, S,
                         colors=[obj_c, None])
            total, _ = rendering_loss(out, obs_masks[:, 1], obs_masks[:, 0], obs_rgb,
                                      weights, hand_index=1, object_index=0)
            total.backward()
            return out

        for _ in range(args.warmup):
            step()
        times, cpu = [], []
        for _ in range(args.runs):
            t0, c0 = time.perf_counter(), time.process_time()
            out = step()
            times.append((time.perf_counter() - t0) * 1e3)
            cpu.append((time.process_time() - c0) * 1e3)
        med = statistics.median(times)
        cpu_med[S] = statistics.median(cpu)
        cpu_p25[S] = statistics.quantiles(cpu, n=4)[0]
        visible = out.hard_masks.float().sum((2, 3))[0].tolist()
        results[S] = med
        print(f"{S}x{S}: fwd+bwd median {med:.2f} ms wall (min {min(times):.2f} ms, "
              f"CPU time median {cpu_med[S]:.2f} ms, {args.runs} runs); "
              f"visible px object {visible[0]:.0f}, hand {visible[1]:.0f}")
    print(json.dumps({
        "fwd_bwd_ms_128": round(results[128], 3),
        "fwd_bwd_ms_256": round(results[256], 3),
        "cpu_ms_128": round(cpu_med[128], 3),
        "cpu_ms_256": round(cpu_med[256], 3),
        "cpu_ms_p25_128": round(cpu_p25[128], 3),
        "cpu_ms_p25_256": round(cpu_p25[256], 3),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
