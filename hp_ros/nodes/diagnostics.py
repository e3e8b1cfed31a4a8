"""/diagnostics messages and the per-stage timing figures the nodes report in them."""
from __future__ import annotations

import numpy as np
from rclpy.node import Node


def diagnostic_status(name: str, level: int, message: str, values: dict, hardware_id: str = "hp_ros"):
    """One diagnostic_msgs/DiagnosticStatus (values become string KeyValues); name: "<node>: <task>"
    (diagnostic_updater's convention, see :mod:`hp_ros.nodes.diag_checks`)."""
    from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

    return DiagnosticStatus(name=name, hardware_id=hardware_id, level=level, message=message,
                            values=[KeyValue(key=str(k), value=str(v)) for k, v in values.items()])


def diagnostics_message(node: Node, name: str, level: int, message: str, values: dict, hardware_id: str = "hp_ros"):
    """A one-status diagnostic_msgs/DiagnosticArray stamped now (values become string KeyValues)."""
    from diagnostic_msgs.msg import DiagnosticArray

    arr = DiagnosticArray(status=[diagnostic_status(name, level, message, values, hardware_id)])
    arr.header.stamp = node.get_clock().now().to_msg()
    return arr


def stage_medians_ms(frames: list, stages) -> dict:
    """``{"stage_ms.<name>": median ms}`` over ``frames`` (dicts of wall-clock ns stamps) for each
    ``(name, from_key, to_key)`` of ``stages`` (reported in /diagnostics: where a frame's time goes)."""
    out = {}
    for name, a, b in stages:
        d = [f[b] - f[a] for f in frames if a in f and b in f]
        if d:
            out[f"stage_ms.{name}"] = round(float(np.median(d)) * 1e-6, 2)
    return out
