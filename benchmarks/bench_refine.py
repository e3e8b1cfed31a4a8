"""Benchmark of the optimisation-based refinement (hp_ros.core.refine) on a generated sequence.

Prints:
1. an ablation table in the style of HandyPriors' Table I: the initial poses (ground truth
   perturbed by 2 cm / 15 deg), + rendering priors (mask + RGB, one frame at a time), + physics
   priors (all terms, windows of ``--window`` consecutive frames refined jointly);
2. the basin of convergence: success rate (ADD <= 5 mm) against the initial error, without and
   with the coarse hypothesis search;
3. as the LAST line, one JSON object with ``per_frame_s``, ``add_mm_init``, ``add_mm_render``,
   ``add_mm_full``, ``max_penetration_mm_full`` (+ extras).

The ablation's rows give the refiner ground-truth masks, the true joint angles and the true
camera->hand (the method's ceiling). Its row ``+ physics, full chain`` (keys ``*_chain``) gives it
what the running graph does: object and hand masks from our segmentation (the node's defaults,
no pose prior: the ``color|depth`` path a cold start or a lost track takes), the measured depth,
the published joint states (noise and bias) at the frame and the published (miscalibrated)
camera->hand.

Timings: ``per_frame_s`` is the CPU time per frame of this single-threaded process (torch threads
= 1), which equals the wall time on an idle core; the wall time is printed too (this 2-core
machine is shared with other jobs, so wall times are inflated by contention).

    .venv/bin/python benchmarks/bench_refine.py [--seed 1 --duration 2 --fps 10 --window 3]
"""
from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from hp_ros.core import metrics, se3
from hp_ros.core.camera import Camera
from hp_ros.core.hand import HandModel
from hp_ros.core.objects import ObjectModel
from hp_ros.core.refine import FrameObservation, RefineConfig, Refiner, perturb_pose
from hp_ros.core.sdf import MeshSDF, signed_distance_world
from hp_ros.core.synth import SynthConfig, generate_sequence


def frame(seq, k):
    return FrameObservation(rgb=seq.rgb[k], object_mask=seq.object_mask[k], hand_mask=seq.hand_mask[k],
                            q=seq.q_frames_true[k], T_cam_hand=seq.T_cam_hand_true,
                            stamp_ns=int(seq.frame_stamps_ns[k]))


def chain_frames(seq, obj, hand, ks):
    """FrameObservations of frames ``ks`` as the running graph has them (see the module doc), and the
    mean IoU of our object masks against the ground truth."""
    from hp_ros.core.segmentation.segmenter import Segmenter
    from hp_ros.nodes.segmentation_params import segmenter_config
    from hp_ros.tools.offline import node_parameters

    colors = [round(255.0 * float(c), 3) for rgb in seq.marker_colors for c in rgb]
    p = node_parameters("segmentation_node", None, {"marker_colors": colors, "marker_radius": float(seq.marker_radius)})
    seg = Segmenter(seq.K, seq.width, seq.height, hand, segmenter_config(p, p["marker_colors"]), object_model=obj)
    T_ch = seq.cam_hand_frames(published=True)
    out, ious = {}, []
    for k in ks:
        j = min(int(np.searchsorted(seq.joint_stamps_ns, seq.frame_stamps_ns[k])), len(seq.joint_stamps_ns) - 1)
        q = seq.joint_positions[j]
        depth = seq.depth_mm[k].astype(np.float32) / 1000.0
        r = seg.segment(seq.rgb[k], depth, q, T_ch[k], markers=False)
        gt = seq.object_mask[k] > 0
        ious.append(float((r.object_mask & gt).sum()) / max(1, int((r.object_mask | gt).sum())))
        out[k] = FrameObservation(rgb=seq.rgb[k], object_mask=r.object_mask, hand_mask=r.hand_mask, depth=depth, q=q,
                                  T_cam_hand=T_ch[k], stamp_ns=int(seq.frame_stamps_ns[k]))
    return out, float(np.mean(ious))


def evaluate(seq, obj, hand, sdf, ks, T):
    """ADD (mm), 2D projection error (px), max penetration (mm) per frame for poses T (N, 4, 4)."""
    T = np.asarray(T, float)
    gt = seq.T_cam_obj[ks]
    pts = obj.vertices.double().numpy()
    add = metrics.add(gt, T, pts) * 1000
    proj = metrics.projection_error_2d(gt, T, pts, seq.K)
    hp = hand.surface_points(torch.tensor(seq.q_frames_true[ks], dtype=torch.float32),
                             torch.tensor(seq.T_cam_hand_true, dtype=torch.float32).expand(len(ks), 4, 4))
    d, _ = signed_distance_world(sdf, hp, torch.tensor(T, dtype=torch.float32))
    pen = torch.relu(-d).amax(-1).numpy() * 1000
    return add, proj, pen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--window", type=int, default=3)
    ap.add_argument("--max-frames", type=int, default=12, help="contact frames used in the ablation")
    ap.add_argument("--trials", type=int, default=6, help="trials per initial-error level (basin)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: CPU time = wall time on an idle core)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    seq = generate_sequence(SynthConfig(duration_s=args.duration, fps=args.fps, seed=args.seed))
    print(f"generated {seq.num_frames} frames in {time.perf_counter() - t0:.1f} s "
          f"(seed {args.seed}, {args.duration} s at {args.fps} fps)")
    hand = HandModel.default()
    obj = ObjectModel.builtin("cracker_box")
    sdf = MeshSDF(obj.vertices, obj.faces)
    cam = Camera(torch.tensor(seq.K), seq.width, seq.height)
    ks = [int(k) for k in np.nonzero(seq.in_contact)[0]][: args.max_frames]
    W = max(1, args.window)
    ks = ks[: len(ks) // W * W]
    gt_pen = seq.penetration_mm[ks]
    print(f"frames {ks}: ground-truth max penetration of the generator {gt_pen.max():.2f} mm "
          f"(mean {gt_pen.mean():.2f} mm)")

    g = torch.Generator().manual_seed(0)
    T_gt = torch.tensor(seq.T_cam_obj[ks], dtype=torch.float32)
    # one perturbation per window, applied rigidly to all its frames (as a lost track would be)
    T_init = []
    for w0 in range(0, len(ks), W):
        P = perturb_pose(T_gt[w0 + W - 1], 0.02, math.radians(15), g)
        T_init.append(T_gt[w0:w0 + W] @ (se3.invert(T_gt[w0 + W - 1]) @ P))
    T_init = torch.cat(T_init)

    # warm-up (Warp kernels, caches)
    Refiner(obj, hand, RefineConfig(num_hypotheses=0)).refine([frame(seq, ks[0])], cam, T_init[0], max_iterations=2)

    rows = {}
    # initial
    rows["initial"] = evaluate(seq, obj, hand, sdf, ks, T_init) + (float("nan"), float("nan"), float("nan"))
    # + rendering: one frame at a time, mask + RGB
    ref = Refiner(obj, hand, RefineConfig(num_hypotheses=0))  # plain Adam; the search is measured below
    t, c = time.perf_counter(), time.process_time()
    out, ious = [], []
    for i, k in enumerate(ks):
        r = ref.refine([frame(seq, k)], cam, T_init[i], terms=["mask", "rgb"])
        out.append(r.T_cam_obj[0])
        ious.append(r.mask_iou[0])
    dt_render = (time.perf_counter() - t) / len(ks)
    cpu_render = (time.process_time() - c) / len(ks)
    rows["+ rendering"] = evaluate(seq, obj, hand, sdf, ks, torch.stack(out)) + (np.mean(ious), cpu_render, dt_render)
    # + physics: windows refined jointly with all terms
    t, c = time.perf_counter(), time.process_time()
    out, ious = [], []
    for w0 in range(0, len(ks), W):
        r = ref.refine([frame(seq, k) for k in ks[w0:w0 + W]], cam, T_init[w0:w0 + W])
        out.append(r.T_cam_obj)
        ious.extend(r.mask_iou.tolist())
    dt_full = (time.perf_counter() - t) / len(ks)
    cpu_full = (time.process_time() - c) / len(ks)
    rows["+ physics"] = evaluate(seq, obj, hand, sdf, ks, torch.cat(out)) + (np.mean(ious), cpu_full, dt_full)

    # + physics, full chain: the same windows with the graph's inputs (our masks, depth, measured joints, published calibration)
    chain, chain_iou = chain_frames(seq, obj, hand, ks)
    t, c = time.perf_counter(), time.process_time()
    out, ious = [], []
    for w0 in range(0, len(ks), W):
        r = ref.refine([chain[k] for k in ks[w0:w0 + W]], cam, T_init[w0:w0 + W])
        out.append(r.T_cam_obj)
        ious.extend(r.mask_iou.tolist())
    dt_chain = (time.perf_counter() - t) / len(ks)
    cpu_chain = (time.process_time() - c) / len(ks)
    rows["+ physics, full chain"] = evaluate(seq, obj, hand, sdf, ks, torch.cat(out)) + (np.mean(ious), cpu_chain,
                                                                                        dt_chain)
    print(f"\nfull chain: our object masks' IoU against the ground truth {chain_iou:.3f} (segmentation, no pose prior)")

    print(f"\nAblation ({len(ks)} frames, cracker_box, initial error 2 cm / 15 deg; window {W} for + physics)")
    print(f"{'method':<22}{'ADD mm':>9}{'2D err px':>11}{'max pen mm':>12}{'mean pen mm':>13}{'mask IoU':>10}"
          f"{'CPU s/frame':>13}{'wall s/frame':>14}")
    for name, (add, proj, pen, iou, cpu, dt) in rows.items():
        print(f"{name:<22}{add.mean():>9.2f}{proj.mean():>11.2f}{pen.max():>12.2f}{pen.mean():>13.2f}"
              f"{iou:>10.3f}{cpu:>13.3f}{dt:>14.3f}")

    # basin of convergence: single frames, all terms, success = ADD <= 5 mm
    levels = [(0.01, 7.5), (0.02, 15.0), (0.03, 22.5), (0.04, 30.0), (0.06, 45.0)]
    rng = np.random.default_rng(0)
    basin = {}
    print(f"\nBasin of convergence (success = ADD <= 5 mm, {args.trials} trials per level, single frames)")
    print(f"{'initial error':<16}{'plain Adam':>12}{'+ 32 hypotheses':>17}{'CPU s (hyp)':>13}")
    for t_err, r_err in levels:
        succ = {0: 0, 32: 0}
        dts = []
        for trial in range(args.trials):
            k = int(rng.choice(ks))
            T0 = perturb_pose(torch.tensor(seq.T_cam_obj[k], dtype=torch.float32), t_err, math.radians(r_err), g)
            for n_hyp in (0, 32):
                c = time.process_time()
                r = ref.refine([frame(seq, k)], cam, T0, num_hypotheses=n_hyp)
                a = metrics.add(seq.T_cam_obj[k][None], r.T_cam_obj.double().numpy(),
                                obj.vertices.double().numpy())[0] * 1000
                succ[n_hyp] += int(a <= 5.0)
                if n_hyp:
                    dts.append(time.process_time() - c)
        basin[f"{t_err * 100:.0f}cm/{r_err:g}deg"] = [succ[0] / args.trials, succ[32] / args.trials]
        print(f"{f'{t_err * 100:.0f} cm / {r_err:g} deg':<16}{succ[0] / args.trials:>12.2f}"
              f"{succ[32] / args.trials:>17.2f}{np.mean(dts):>13.3f}")

    result = {
        "per_frame_s": round(cpu_full, 4),
        "add_mm_init": round(float(rows["initial"][0].mean()), 3),
        "add_mm_render": round(float(rows["+ rendering"][0].mean()), 3),
        "add_mm_full": round(float(rows["+ physics"][0].mean()), 3),
        "max_penetration_mm_full": round(float(rows["+ physics"][2].max()), 3),
        "max_penetration_mm_render": round(float(rows["+ rendering"][2].max()), 3),
        "per_frame_s_render": round(cpu_render, 4),
        "per_frame_wall_s": round(dt_full, 4),
        "per_frame_wall_s_render": round(dt_render, 4),
        "gt_max_penetration_mm": round(float(gt_pen.max()), 3),
        "add_mm_full_chain": round(float(rows["+ physics, full chain"][0].mean()), 3),
        "max_penetration_mm_full_chain": round(float(rows["+ physics, full chain"][2].max()), 3),
        "per_frame_s_chain": round(cpu_chain, 4),
        "object_mask_iou_chain": round(chain_iou, 3),
        "frames": len(ks),
        "window": W,
        "basin_success_plain_vs_hypotheses": basin,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
