"""The hp_ros ROS 2 nodes, one process each (see :mod:`hp_ros.graph`)."""
from __future__ import annotations

import os
import signal
import sys

EXECUTABLES = ("segmentation_node", "tracking_node", "refinement_node", "pose_smoke_node")


def exit_quietly_while_loading(module_name: str) -> None:
    """In a node process, SIGINT/SIGTERM while the node module's imports load (torch, scipy, rclpy:
    seconds) end the process at once with exit code 0 instead of a KeyboardInterrupt traceback -
    nothing of ROS runs yet. :func:`hp_ros.nodes.process.run_node` then installs its own handlers.

    Acts only when the module is the process's entry point: ``python -m hp_ros.nodes.X``
    (``module_name == "__main__"``) or the console script of a node; a program that merely
    imports a node module (tests, tools) keeps its signal handling.
    """
    if module_name != "__main__" and os.path.basename(sys.argv[0]) not in EXECUTABLES:
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: os._exit(0))
