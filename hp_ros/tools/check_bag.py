"""``hp-ros check-bag BAG``: is a recorded bag fit for ``hp-ros replay`` into the graph?

Prints one line per finding (:mod:`hp_ros.io.bag_check`: topics, encodings, frames, the
camera->hand transform, joint names, clocks, colour/depth pairing) and exits 1 when any is an
ERROR (the graph could not track), else 0.
"""
from __future__ import annotations

from hp_ros import graph


def add_arguments(parser):
    parser.add_argument("bag", help="rosbag2 directory (or a .mcap / .db3 file)")
    parser.add_argument("--seconds", type=float, default=10.0, help="read the first S seconds (default 10)")
    parser.add_argument("--camera-namespace", default="/camera/camera", help="realsense2_camera namespace")
    parser.add_argument("--joint-states", default=graph.JOINT_STATES, help="joint state topic")
    parser.add_argument("--camera-frame", default=graph.CAMERA_FRAME, help="camera optical frame")
    parser.add_argument("--hand-frame", default="ah_palm_link", help="hand base frame (hand_base_frame)")
    parser.add_argument("--camera-to-hand", action="store_true",
                        help="the camera->hand transform comes from the camera_to_hand parameter, not /tf_static")


def run(args) -> int:
    from hp_ros.io.bag_check import ERROR, check_bag

    findings = check_bag(args.bag, args.seconds, args.camera_namespace, args.joint_states, args.camera_frame,
                         args.hand_frame, args.camera_to_hand)
    for f in findings:
        print(f)
    errors = sum(f.level == ERROR for f in findings)
    print(f"{errors} error(s), {sum(f.level == 'WARN' for f in findings)} warning(s)")
    return 1 if errors else 0
