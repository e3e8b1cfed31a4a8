"""``hp-ros check``: what this environment provides, the DDS isolation in force, the node graph."""
from __future__ import annotations

import importlib
import os
import platform


def add_arguments(parser):
    parser.add_argument("--strict", action="store_true",
                        help="exit non-zero when a required component is missing")


REQUIRED = ["torch", "numpy", "warp", "trimesh", "roma", "rosbags", "rclpy", "hp_ros_msgs.msg",
            "sensor_msgs.msg", "geometry_msgs.msg", "visualization_msgs.msg"]
# vision_msgs: without it the tracking node runs without /hp_ros/detections (one warning)
OPTIONAL = ["tf2_ros", "tf2_msgs.msg", "vision_msgs.msg", "cv_bridge", "pytorch3d", "detectron2", "launch_ros"]


def _probe(name: str):
    try:
        mod = importlib.import_module(name)
    except Exception as e:  # optional backends may fail in many ways; report, don't crash
        return False, type(e).__name__
    return True, getattr(mod, "__version__", "")


def environment_report() -> tuple[list, bool]:
    rows, ok = [], True
    for kind, names in (("required", REQUIRED), ("optional", OPTIONAL)):
        for name in names:
            found, info = _probe(name)
            ok &= found or kind == "optional"
            rows.append((kind, name, "yes" if found else "no", str(info)))
    return rows, ok


def run(args) -> int:
    from hp_ros.graph import describe
    from hp_ros.ros_process import in_private_netns

    print(f"hp_ros environment check  (python {platform.python_version()})")
    rows, ok = environment_report()
    for kind, name, found, info in rows:
        print(f"  {kind:9s} {name:24s} {found:4s} {info}")
    print("DDS: ROS_DOMAIN_ID=%s ROS_AUTOMATIC_DISCOVERY_RANGE=%s ROS_LOCALHOST_ONLY=%s private-netns=%s" % (
        os.environ.get("ROS_DOMAIN_ID", "-"), os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "-"),
        os.environ.get("ROS_LOCALHOST_ONLY", "-"), in_private_netns()))
    print("node graph:")
    print(describe())
    if args.strict and not ok:
        print("hp-ros check: a required component is missing")
        return 1
    return 0
