"""Declared node parameters: the :class:`Param` spec, validators, the parameters every node shares,
and :func:`declare_parameters` (validation at start-up and on ``ros2 param set``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.node import Node


@dataclass
class Param:
    """A declared parameter: default, description and an optional validator.

    ``check(value)`` returns an error text (or None when the value is valid).
    """

    default: Any
    description: str
    check: Optional[Callable[[Any], Optional[str]]] = None
    read_only: bool = True


def one_of(*choices) -> Callable[[Any], Optional[str]]:
    return lambda v: None if v in choices else f"must be one of {list(choices)}, got {v!r}"


def positive(v) -> Optional[str]:
    return None if v > 0 else f"must be > 0, got {v!r}"


def non_negative(v) -> Optional[str]:
    return None if v >= 0 else f"must be >= 0, got {v!r}"


def length_in(*lengths) -> Callable[[Any], Optional[str]]:
    return lambda v: None if len(v) in lengths else f"must have {' or '.join(map(str, lengths))} values, got {len(v)}"


COMMON_PARAMS = {
    "camera_frame": Param("camera_color_optical_frame", "camera optical frame (REP-103) of the colour stream"),
    "hand_base_frame": Param("ah_palm_link", "hand base frame the camera->hand transform refers to"),
    "joint_naming": Param("wonik", "joint names of the driver: wonik (ah_joint00..33) or simlab (joint_0.0..15.0)",
                          one_of("wonik", "simlab")),
    "hand_urdf": Param("", "hand description (.urdf/.xacro); empty = the project's URDF (primitive geometry)"),
    "mesh_search_path": Param([""], "folders to resolve package:// mesh URIs when ament_index cannot"),
    "object_mesh": Param("builtin:cracker_box", "object mesh (OBJ/PLY/STL/GLB) or builtin:cracker_box|soup_can"),
    "object_units": Param("auto", "object mesh units", one_of("m", "mm", "auto")),
    "object_frame": Param("object", "TF child frame of the object pose"),
    "camera_to_hand": Param([0.0], "camera->hand-base transform [x y z qx qy qz qw]; [0.0] = take it from "
                                   "/tf_static, or from /tf at each image stamp (a hand on an arm)",
                            length_in(1, 7)),
    "max_stamp_jump": Param(0.5, "a message stamped this far [s] from its own stream's newest accepted stamp is "
                            "refused, unless stamp_jump_confirm messages in a row on two streams confirm a jump of "
                            "the timeline (a looping bag, a restarted driver): then the node resets", positive),
    "stamp_jump_confirm": Param(5, "consecutive advancing messages per stream that confirm a jump of the timeline",
                                positive),
}


def stamp_detector(params: dict):
    """The node's :class:`hp_ros.io.stamps.StampJumpDetector` from ``max_stamp_jump`` / ``stamp_jump_confirm``."""
    from hp_ros.io.stamps import StampJumpDetector

    return StampJumpDetector(int(params["max_stamp_jump"] * 1e9), int(params["stamp_jump_confirm"]))


class ParameterError(ValueError):
    """A parameter value failed validation (the node refuses to start / to change it)."""


def declare_parameters(node: Node, spec: dict) -> dict:
    """Declare ``spec`` (name -> Param) with descriptors, validate, return ``{name: value}``.

    Invalid start-up values raise :class:`ParameterError` with every problem listed. Later
    changes through ``ros2 param set`` are validated by the same checks and refused when
    invalid or read-only.
    """
    values, problems = {}, []
    for name, p in spec.items():
        node.declare_parameter(name, p.default, ParameterDescriptor(description=p.description, read_only=p.read_only))
        v = node.get_parameter(name).value
        if isinstance(p.default, list) and isinstance(v, (tuple, np.ndarray)):
            v = list(v)
        err = p.check(v) if p.check else None
        if err:
            problems.append(f"{name}: {err}")
        values[name] = v

    def on_set(params):
        for prm in params:
            p = spec.get(prm.name)
            if p is not None and p.check is not None:
                err = p.check(prm.value)
                if err:
                    return SetParametersResult(successful=False, reason=f"{prm.name}: {err}")
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(on_set)
    if problems:
        raise ParameterError("invalid parameters: " + "; ".join(problems))
    return values
