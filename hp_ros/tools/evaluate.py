"""``hp-ros eval BAG [BAG ...]``: score estimated object poses against the ground truth in a bag.

Without ``--est`` the estimates come from running the pipeline offline on the bag itself
(:mod:`hp_ros.tools.offline`: segmentation and frame tracker in this process, as fast as the
CPU allows; ``--params-file``, ``--set``, ``--initial-offset``); several bags run in ``--jobs``
processes, one report folder each under ``OUT`` plus ``summary.json`` and ``summary.png``.

Ground truth: ``/hp_ros/ground_truth/object_pose`` (geometry_msgs/PoseStamped) by default.
Estimates (``--est``): a second bag (topic ``--est-topic``, PoseStamped or
PoseWithCovarianceStamped, default ``/hp_ros/object_pose``), a CSV with the header
``stamp_ns,x,y,z,qx,qy,qz,qw``, or a JSON list of ``{"stamp_ns": int, "T": 4x4}`` /
``{"stamp_ns": int, "position": [3], "orientation": [x, y, z, w]}``. Frames are matched by
header stamp (``--tolerance-ms``). Model points (``--object``) come from a mesh (trimesh,
surface samples) or a point file (.npy / .txt / .xyz, N x 3, metres).

Writes ``OUT/metrics.json`` (scalars of :func:`hp_ros.core.metrics.evaluate_sequence`),
``OUT/per_frame.csv``, ``OUT/error_over_time.png``, ``OUT/accuracy_curve.png`` and prints a
summary table.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np

GT_TOPIC = "/hp_ros/ground_truth/object_pose"
EST_TOPIC = "/hp_ros/object_pose"
POSE_TYPES = ("geometry_msgs/msg/PoseStamped", "geometry_msgs/msg/PoseWithCovarianceStamped")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", nargs="+", help="rosbag2 with the ground-truth object pose (several: "
                                               "offline runs, one report each)")
    parser.add_argument("--out", required=True, help="report folder (created)")
    parser.add_argument("--est", default=None,
                        help="estimates: a second bag, a .csv or a .json (see the module docs)")
    parser.add_argument("--object", default=None, metavar="MESH_OR_POINTS",
                        help="object mesh (.obj/.ply/.stl...) or points (.npy/.txt/.xyz) in metres")
    parser.add_argument("--gt-topic", default=GT_TOPIC, help=f"ground-truth topic (default {GT_TOPIC})")
    parser.add_argument("--est-topic", default=EST_TOPIC, help=f"estimate topic in --est bag (default {EST_TOPIC})")
    parser.add_argument("--symmetric", action="store_true", help="object is symmetric (ADD-S is the primary metric)")
    parser.add_argument("--tolerance-ms", type=float, default=5.0, help="stamp matching tolerance (default 5 ms)")
    parser.add_argument("--auc-max-cm", type=float, default=10.0, help="AUC threshold range (default 10 cm)")
    parser.add_argument("--n-points", type=int, default=2000, help="surface samples taken from a mesh")
    off = parser.add_argument_group("offline run (no --est)")
    off.add_argument("--params-file", default=None, help="the nodes' parameter YAML (default: the package's "
                                                         "config/allegro_tracking.yaml when present)")
    off.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                     help="parameter overrides for both nodes (YAML values: --set object_backend=color)")
    off.add_argument("--initial-offset", nargs=2, type=float, default=None, metavar=("M", "DEG"),
                     help="start the tracker from the first ground-truth pose moved by M metres and DEG "
                          "degrees (as the demo); default: the initial_pose parameter")
    off.add_argument("--jobs", type=int, default=1, help="bags evaluated in parallel processes")


# ----------------------------------------------------------------------------- loading


def read_pose_topic(bag: str | Path, topic: str) -> dict[int, np.ndarray]:
    """{header stamp ns: (4, 4)} from a PoseStamped / PoseWithCovarianceStamped topic of a bag."""
    from hp_ros.io.bag import bag_summary, read_bag
    from hp_ros.io.msgs import header_stamp_ns, pose_to_matrix

    summary = bag_summary(bag)
    if topic not in summary.topics:
        raise ValueError(f"topic {topic} not in {bag} (it has: {', '.join(sorted(summary.topics)) or 'nothing'})")
    if summary.topics[topic] not in POSE_TYPES:
        raise ValueError(f"topic {topic} has type {summary.topics[topic]}, expected one of {POSE_TYPES}")
    return {header_stamp_ns(m): pose_to_matrix(m) for _, _, _, m in read_bag(bag, topics=[topic])}


def _pose_from_xyzq(p, q) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    q = np.asarray(q, dtype=np.float64)
    if q.shape != (4,) or not np.linalg.norm(q) > 1e-9:
        raise ValueError(f"bad quaternion {q.tolist()}")
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat(q / np.linalg.norm(q)).as_matrix()
    T[:3, 3] = np.asarray(p, dtype=np.float64).reshape(3)
    return T


def read_estimates(path: str | Path, topic: str = EST_TOPIC) -> dict[int, np.ndarray]:
    """Estimates from a bag, CSV or JSON (formats in the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"estimates not found: {path}")
    if path.suffix == ".csv":
        out = {}
        with open(path, newline="") as f:
            rows = csv.DictReader(f)
            need = {"stamp_ns", "x", "y", "z", "qx", "qy", "qz", "qw"}
            if not need <= set(rows.fieldnames or ()):
                raise ValueError(f"{path}: CSV needs the columns {sorted(need)}, has {rows.fieldnames}")
            for r in rows:
                out[int(r["stamp_ns"])] = _pose_from_xyzq(
                    [float(r[k]) for k in "xyz"], [float(r[k]) for k in ("qx", "qy", "qz", "qw")])
        return out
    if path.suffix == ".json":
        items = json.loads(path.read_text())
        if isinstance(items, dict):
            items = items.get("poses", items.get("estimates"))
        if not isinstance(items, list):
            raise ValueError(f"{path}: expected a JSON list of poses")
        out = {}
        for it in items:
            if "T" in it:
                T = np.asarray(it["T"], dtype=np.float64)
                if T.shape != (4, 4):
                    raise ValueError(f"{path}: 'T' must be 4x4")
            else:
                T = _pose_from_xyzq(it["position"], it["orientation"])
            out[int(it["stamp_ns"])] = T
        return out
    return read_pose_topic(path, topic)


def load_model_points(path: str | Path, n_points: int = 2000, seed: int = 0) -> np.ndarray:
    """``(N, 3)`` model points from a point file or surface samples of a mesh."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"object model not found: {path}")
    if path.suffix == ".npy":
        pts = np.load(path)
    elif path.suffix in (".txt", ".xyz"):
        pts = np.loadtxt(path)
    else:
        import trimesh

        mesh = trimesh.load(path, force="mesh")
        pts, _ = trimesh.sample.sample_surface(mesh, n_points, seed=seed)
    pts = np.asarray(pts, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] < 3 or len(pts) == 0:
        raise ValueError(f"{path}: expected N x 3 points, got shape {pts.shape}")
    return pts[:, :3]


# ----------------------------------------------------------------------------- report


def write_report(result: dict, out_dir: str | Path, auc_max_cm: float = 10.0) -> Path:
    """metrics.json, per_frame.csv and PNG plots for an :func:`evaluate_sequence` result."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scalars = {k: v for k, v in result.items() if k not in ("per_frame", "estimates")}  # estimates: arrays
    scalars = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in scalars.items()}
    (out / "metrics.json").write_text(json.dumps(scalars, indent=2) + "\n")
    frames = result["per_frame"]
    cols = ["stamp_ns", "matched", "add_cm", "adds_cm", "rot_err_deg", "rot_err_geodesic_deg", "trans_err_cm"]
    with open(out / "per_frame.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(frames)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hp_ros.core.metrics import accuracy_curve

    t0 = frames[0]["stamp_ns"] if frames else 0
    t = np.array([(f["stamp_ns"] - t0) * 1e-9 for f in frames])

    def col(key):
        return np.array([np.nan if f[key] is None else f[key] for f in frames], dtype=float)

    fig, ax = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    ax[0].plot(t, col("add_cm"), label="ADD")
    ax[0].plot(t, col("adds_cm"), label="ADD-S")
    ax[0].plot(t, col("trans_err_cm"), label="translation", alpha=0.7)
    ax[0].set_ylabel("error [cm]")
    ax[0].legend(loc="upper right")
    ax[1].plot(t, col("rot_err_deg"), color="tab:red")
    ax[1].set_ylabel("rotation error [deg]")
    ax[1].set_xlabel("time [s]")
    fig.tight_layout()
    fig.savefig(out / "error_over_time.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 4))
    for key, label in (("add_cm", "ADD"), ("adds_cm", "ADD-S")):
        e = np.nan_to_num(col(key), nan=np.inf) / 100.0
        tau, acc = accuracy_curve(e, auc_max_cm / 100.0)
        auc_key = "add_auc" if key == "add_cm" else "adds_auc"
        ax.plot(tau * 100, acc, label=f"{label} (AUC {result[auc_key]:.3f})")
    ax.set_xlabel("threshold [cm]")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "accuracy_curve.png", dpi=100)
    plt.close(fig)
    return out


def print_summary(result: dict, out_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"hp-ros eval  ({result['n_matched']}/{result['n_frames']} frames matched)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, fmt in (("add_mean_cm", "{:.2f} cm"), ("adds_mean_cm", "{:.2f} cm"), ("adds_max_cm", "{:.2f} cm"),
                     ("add_auc", "{:.3f}"), ("adds_auc", "{:.3f}"), ("trans_err_mean_cm", "{:.2f} cm"),
                     ("rot_err_mean_deg", "{:.2f} deg")):
        v = result[key]
        table.add_row(key, "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v))
    for name, b in result.get("baselines", {}).items():
        table.add_row(f"baseline {name}", f"ADD-S {b['adds_mean_cm']:.2f} cm, rot {b['rot_err_mean_deg']:.2f} deg")
    for key in ("adds_ratio_to_baseline", "rot_ratio_to_baseline"):
        if key in result:
            table.add_row(key, f"{result[key]:.3f}")
    console = Console()
    console.print(table)
    console.print(f"report: {out_dir}")


def _overrides(items) -> dict:
    import yaml

    out = {}
    for it in items or []:
        if "=" not in it:
            raise ValueError(f"--set expects NAME=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def _params_file(args):
    if args.params_file:
        if not Path(args.params_file).is_file():
            raise FileNotFoundError(f"params file not found: {args.params_file}")
        return args.params_file
    from hp_ros.graph import default_params_file

    default = default_params_file()
    return default if Path(default).is_file() else None


def evaluate_bag(bag: str, est, out: Path, args, log=print) -> dict:
    """One bag's report (``est``: estimates by stamp, or None to run the pipeline offline)."""
    from hp_ros.core.metrics import evaluate_sequence

    if not Path(bag).exists():
        raise FileNotFoundError(f"bag not found: {bag}")
    gt = read_pose_topic(bag, args.gt_topic)
    if not gt:
        raise ValueError(f"no ground-truth poses on {args.gt_topic} in {bag}")
    offline = None
    if est is None:
        from hp_ros.tools.offline import run_offline

        offline = run_offline(bag, _params_file(args), _overrides(args.set),
                              tuple(args.initial_offset) if args.initial_offset else None, args.gt_topic, log=log)
        est = offline.poses
    if args.object is not None:
        points = load_model_points(args.object, args.n_points)
    elif offline is not None:
        points = offline.model_points
    else:
        raise ValueError("--object MESH_OR_POINTS is required to compute ADD / ADD-S")
    from hp_ros.tools.eval_baselines import bag_baselines, symmetry_axis_of_points

    result = evaluate_sequence(gt, est, points, symmetric=args.symmetric,
                               tolerance_ns=int(args.tolerance_ms * 1e6), auc_max_m=args.auc_max_cm / 100,
                               symmetry_axis=symmetry_axis_of_points(points) if args.symmetric else None)

    result.update(bag_baselines(bag, gt, est, points, args.symmetric))
    if offline is not None:
        result["offline"] = {"frames": offline.frames, "segmented": offline.segmented, "posed": len(offline.poses),
                             "cpu_s": round(offline.cpu_s, 3), "wall_s": round(offline.wall_s, 3),
                             "startup_s": round(offline.startup_s, 3), "bag_s": round(offline.bag_s, 3),
                             "counts": offline.counts}
    write_report(result, out, args.auc_max_cm)
    return result


def _evaluate_job(job):
    bag, out, args = job
    result = evaluate_bag(bag, None, Path(out), args, log=lambda *a: None)
    return {k: v for k, v in result.items() if k != "per_frame"}


def _summary(results: dict, out: Path) -> None:
    """summary.json and summary.png (ADD-S and rotation error per bag) of several bags."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rich.console import Console
    from rich.table import Table

    (out / "summary.json").write_text(json.dumps(results, indent=1, default=float))
    table = Table(title="hp-ros eval: offline runs")
    for col in ("bag", "frames", "posed", "ADD-S mean [cm]", "rot mean [deg]", "CPU s / bag s"):
        table.add_column(col)
    for name, r in results.items():
        o = r.get("offline", {})
        table.add_row(name, str(o.get("frames", "")), str(o.get("posed", "")), f"{r['adds_mean_cm']:.3f}",
                      f"{r['rot_err_mean_deg']:.2f}", f"{o.get('cpu_s', float('nan')):.1f} / {o.get('bag_s', float('nan')):.1f}")
    Console().print(table)
    fig, ax = plt.subplots(1, 2, figsize=(8, 3))
    names = list(results)
    ax[0].bar(names, [results[n]["adds_mean_cm"] for n in names])
    ax[0].set_ylabel("ADD-S mean [cm]")
    ax[1].bar(names, [results[n]["rot_err_mean_deg"] for n in names])
    ax[1].set_ylabel("rotation error mean [deg]")
    for a in ax:
        a.tick_params(axis="x", rotation=45, labelsize=7)
    fig.tight_layout()
    fig.savefig(out / "summary.png", dpi=100)
    plt.close(fig)


def run(args) -> int:
    if args.est is not None:
        if len(args.bag) != 1:
            raise ValueError("--est scores one bag: give one BAG")
        result = evaluate_bag(args.bag[0], read_estimates(args.est, args.est_topic), Path(args.out), args)
        print_summary(result, Path(args.out))
        return 0
    for b in args.bag:
        if not Path(b).exists():
            raise FileNotFoundError(f"bag not found: {b}")
    if len(args.bag) == 1:
        result = evaluate_bag(args.bag[0], None, Path(args.out), args)
        print_summary(result, Path(args.out))
        return 0
    out = Path(args.out)
    names = [Path(b).name or f"bag{i}" for i, b in enumerate(args.bag)]
    if len(set(names)) < len(names):
        names = [f"{i:02d}_{n}" for i, n in enumerate(names)]
    jobs = [(b, str(out / n), args) for b, n in zip(args.bag, names)]
    if args.jobs > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(args.jobs, len(jobs))) as pool:
            results = pool.map(_evaluate_job, jobs)
    else:
        results = [_evaluate_job(j) for j in jobs]
    _summary(dict(zip(names, results)), out)
    return 0
