"""The whole hp_ros graph in one process (``single_process:=true`` of the launch file, the demo's
``--single-process``): segmentation, tracking and refinement nodes, each on its own executor and
thread, connected by :class:`hp_ros.nodes.local_bus.LocalBus` instead of DDS.

Same node names, namespace, parameters (one ``--params-file`` holds every node's section) and
topics as the separate processes: tools outside see the same graph. What changes: masks,
observations and poses pass between the nodes as Python objects (never serialised), the camera
images and joint states are received once for all three nodes, and the three share one
interpreter (one GIL).

    python -m hp_ros.nodes.graph_process --ros-args -r __ns:=/hp_ros --params-file config/allegro_tracking.yaml
"""
from __future__ import annotations

from hp_ros.nodes import exit_quietly_while_loading

exit_quietly_while_loading(__name__)  # before the imports below: they take seconds


def main(args=None) -> int:
    import rclpy  # noqa: F401 - loaded before the node modules (their imports expect it)

    from hp_ros import graph
    from hp_ros.nodes.executor import PoolExecutor
    from hp_ros.nodes.local_bus import LocalBus
    from hp_ros.nodes.process import run_nodes
    from hp_ros.nodes.refinement_node import REFINEMENT_THREADS, RefinementNode
    from hp_ros.nodes.segmentation_node import SegmentationNode
    from hp_ros.nodes.tracking_node import TrackingNode

    # what the graph's nodes publish, except the topics that also come from outside (/tf) or that
    # no node here subscribes to (/diagnostics)
    bus = LocalBus({t for spec in graph.NODES for t in spec.publishes if t not in ("/diagnostics", "/tf")})
    return run_nodes([
        (lambda: SegmentationNode(bus=bus), None),
        (lambda: TrackingNode(bus=bus), None),
        (lambda: RefinementNode(bus=bus), lambda: PoolExecutor(num_threads=REFINEMENT_THREADS)),
    ], "graph_process", args)


if __name__ == "__main__":
    raise SystemExit(main())
