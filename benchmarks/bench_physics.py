"""Benchmark: Warp mesh SDF forward + analytic backward for 2,000 hand points vs a ~16k-triangle mesh.

Main figure (``sdf_fwd_bwd_ms``): 2,000 points within a shell of -5 mm .. +20 mm around a
15,872-triangle UV sphere (r = 5 cm) -- the distance band in which a grasping hand's surface points
lie -- ``MeshSDF.query`` + ``backward`` w.r.t. the points, median over runs after warm-up.
Also reported: the same through ``signed_distance_world`` with gradients w.r.t. points and pose,
the YCB cracker box (15,728 triangles) when ../shared/data is present, and the Allegro model's
2,000 surface points pressed onto the built-in cracker box (the physics prior's real workload).

Usage: ``python benchmarks/bench_physics.py [--runs 50]``. Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

from hp_ros.core import se3
from hp_ros.core.sdf import MeshSDF, signed_distance_world, warm_up

N_POINTS = 2000


def shell_points(mesh: trimesh.Trimesh, n: int, seed: int = 0) -> torch.Tensor:
    """``(n, 3)`` points at signed offsets U(-5 mm, +20 mm) along the normals of surface samples."""
    pts, face = trimesh.sample.sample_surface(mesh, n, seed=seed)
    off = np.random.default_rng(seed).uniform(-0.005, 0.02, size=(n, 1))
    return torch.tensor(pts + mesh.face_normals[face] * off, dtype=torch.float32)


def time_ms(fn, runs: int) -> float:
    for _ in range(10):  # warm-up: first autograd/roma calls are slow
        fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def fwd_bwd(sdf_fn: MeshSDF, points: torch.Tensor):
    p = points.detach().requires_grad_(True)

    def run():
        s, _ = sdf_fn.query(p)
        s.sum().backward()
        p.grad = None
    return run


def fwd_bwd_world(sdf_fn: MeshSDF, points_obj: torch.Tensor):
    T = se3.pose_from_xyz_quat([0.1, -0.05, 0.4], [0.2, -0.1, 0.3, 0.93])[None]
    pw = se3.transform_points(T, points_obj[None]).detach().requires_grad_(True)
    xi = torch.zeros(1, 6, requires_grad=True)

    def run():
        s, _ = signed_distance_world(sdf_fn, pw, se3.apply_delta(T, xi))
        s.sum().backward()
        pw.grad = None
        xi.grad = None
    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args(argv)
    out = {"n_points": N_POINTS, "threads": torch.get_num_threads()}

    t0 = time.perf_counter()
    out["warm_up_s"] = round(warm_up(), 3)  # compile or cache load of the Warp kernels
    sphere = trimesh.creation.uv_sphere(radius=0.05, count=[64, 64])
    t1 = time.perf_counter()
    sdf_sphere = MeshSDF(sphere.vertices, sphere.faces)
    out["mesh_build_ms"] = round((time.perf_counter() - t1) * 1e3, 2)
    out["n_faces"] = sdf_sphere.num_faces
    pts = shell_points(sphere, N_POINTS)
    out["sdf_fwd_ms"] = round(time_ms(lambda: sdf_sphere.query(pts), args.runs), 3)
    out["sdf_fwd_bwd_world_ms"] = round(time_ms(fwd_bwd_world(sdf_sphere, pts), args.runs), 3)

    shared = Path(os.environ.get("HP_ROS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    ycb = shared / "ycb" / "eleramp_ycbv_reoriented" / "YcbCrackerBox" / "textured_simple_reoriented.obj"
    if ycb.is_file():
        m = trimesh.load(ycb, force="mesh", process=False)
        sdf_ycb = MeshSDF(m.vertices, m.faces)
        out["ycb_cracker_box_faces"] = sdf_ycb.num_faces
        out["ycb_cracker_box_sign"] = sdf_ycb.sign_method
        out["ycb_cracker_box_fwd_bwd_ms"] = round(time_ms(fwd_bwd(sdf_ycb, shell_points(m, N_POINTS)), args.runs), 3)

    try:
        from hp_ros.core.hand import HandModel
        from hp_ros.core.objects import ObjectModel
    except ImportError:
        HandModel = None
    if HandModel is not None:
        hand = HandModel.default()
        obj = ObjectModel.builtin("cracker_box")
        osdf = MeshSDF(obj.vertices, obj.faces)
        q = hand.zero_q(1)
        for k in (1, 2, 3):
            q[0, hand.joint_names.index(hand.naming.joint_name(1, k))] = 0.5
        hp = hand.surface_points(q)
        i = int(hp[0, :, 0].argmax())
        R = torch.tensor([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]])
        T = se3.make_pose(R, hp[0, i] + torch.tensor([0.03, 0.0, 0.0]))[None]
        p = hp.detach().requires_grad_(True)

        def run_hand():
            s, _ = signed_distance_world(osdf, p, T)
            s.sum().backward()
            p.grad = None
        out["hand_points_vs_builtin_cracker_box_fwd_bwd_ms"] = round(time_ms(run_hand, args.runs), 3)

    out["sdf_fwd_bwd_ms"] = round(time_ms(fwd_bwd(sdf_sphere, pts), args.runs), 3)
    out["target_ms"] = 5.0
    out["total_bench_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
