"""``hp-ros synth --out BAG``: generate a synthetic Allegro in-hand sequence as a rosbag2.

The sequence (motion, sensors, ground truth) is described in :mod:`hp_ros.core.synth`; the bag
layout in :func:`hp_ros.core.synth.write_sequence_bag`. A JSON sidecar ``hp_ros_synth.json``
beside the bag's files records the object spec, seed and configuration.
"""
from __future__ import annotations

import argparse
import math
import sys


def _slip(text: str):
    parts = text.split(":")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"slip must be TIME:DURATION:MAGNITUDE (s:s:m), got {text!r}")
    try:
        return tuple(float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"slip values must be numbers, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="bag directory to create (must not exist)")
    parser.add_argument("--object", default="builtin:cracker_box", metavar="NAME|MESH",
                        help="builtin:cracker_box, builtin:soup_can (or just the name) or a mesh file")
    parser.add_argument("--units", default="auto", choices=("auto", "m", "mm"), help="units of a mesh file")
    parser.add_argument("--duration", "--seconds", dest="duration", type=float, default=10.0, metavar="S",
                        help="sequence length in seconds (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--storage", "--format", dest="storage", default="mcap", choices=("mcap", "sqlite3"),
                        help="rosbag2 storage (default mcap)")
    parser.add_argument("--slip", action="append", type=_slip, default=[], metavar="T:DUR:MAG",
                        help="slip event: start time (s), duration (s), translation (m); repeatable")
    parser.add_argument("--calib-error-mm", type=float, default=2.0,
                        help="translation error of the published camera->hand transform (default 2 mm)")
    parser.add_argument("--calib-error-deg", type=float, default=0.5,
                        help="rotation error of the published camera->hand transform (default 0.5 deg)")
    parser.add_argument("--encoder-noise-deg", type=float, default=math.degrees(0.003),
                        help="joint encoder noise std (default 0.17 deg)")
    parser.add_argument("--no-markers", action="store_true", help="no coloured fingertip markers")
    parser.add_argument("--naming", default="wonik", choices=("wonik", "simlab"), help="joint names (default wonik)")
    parser.add_argument("--hand-urdf", default=None, metavar="PATH", help="hand URDF/xacro (default: built-in)")
    parser.add_argument("--fps", type=float, default=30.0, help="image rate (default 30)")
    parser.add_argument("--motion", default="classic", choices=("classic", "lab"),
                        help="classic: hand base fixed to the camera; lab: an arm carries the hand (10-30 cm, "
                             "/tf in the bag), finger gaiting 30-90 deg, object motion not from the contact model")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from pathlib import Path

    from hp_ros.core.synth import SynthConfig, generate_sequence, write_sequence_bag

    out = Path(args.out)
    if out.exists():
        raise ValueError(f"output {out} exists already; choose a new path")
    obj = args.object
    if obj in ("cracker_box", "soup_can"):
        obj = f"builtin:{obj}"
    if not obj.startswith("builtin:") and not Path(obj).is_file():
        raise FileNotFoundError(f"object mesh not found: {obj}")
    if args.hand_urdf is not None and not Path(args.hand_urdf).is_file():
        raise FileNotFoundError(f"hand URDF not found: {args.hand_urdf}")
    cfg = SynthConfig(object=obj, object_units=args.units, hand_urdf=args.hand_urdf, naming=args.naming,
                      duration_s=args.duration, fps=args.fps, seed=args.seed, render=False, slips=tuple(args.slip),
                      calib_error_m=args.calib_error_mm * 1e-3, calib_error_rad=math.radians(args.calib_error_deg),
                      encoder_noise_std=math.radians(args.encoder_noise_deg), markers=not args.no_markers,
                      motion=args.motion)
    seq = generate_sequence(cfg)
    if args.quiet:
        write_sequence_bag(seq, out, storage=args.storage)
    else:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("rendering + writing"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeRemainingColumn(), transient=True) as bar:
            task = bar.add_task("frames", total=seq.num_frames)
            write_sequence_bag(seq, out, storage=args.storage,
                               progress=lambda done, total: bar.update(task, completed=done))
        print(f"wrote {out} ({args.storage}): {seq.num_frames} frames, {len(seq.joint_stamps_ns)} joint states, "
              f"object {obj}, seed {args.seed}, contacts {int(seq.contact_fingers.sum())} fingers, "
              f"max penetration {seq.penetration_mm.max():.2f} mm", file=sys.stderr)
    return 0
