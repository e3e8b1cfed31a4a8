"""``hp-ros demo``: the main job on the embedded default.

Until the full pipeline lands this runs the environment check and prints the node graph.
"""
from __future__ import annotations

from hp_ros.tools import check


def add_arguments(parser):
    check.add_arguments(parser)


def run(args) -> int:
    args.strict = True
    return check.run(args)
