"""The camera->hand-base calibration: a fixed parameter or the chain of /tf_static transforms."""
from __future__ import annotations

from typing import Optional

import numpy as np
from rclpy.node import Node

from hp_ros.io import msgs
from hp_ros.nodes.qos import TF_STATIC_QOS


class CameraToHand:
    """The camera->hand-base transform ``T_cam_hand`` (4,4): from a parameter when given,
    else from ``/tf_static`` (chaining static transforms from ``camera_frame`` to
    ``hand_base_frame`` in either direction)."""

    def __init__(self, node: Node, camera_frame: str, hand_frame: str, fixed: Optional[np.ndarray] = None):
        self.camera_frame, self.hand_frame = camera_frame, hand_frame
        self.fixed = fixed
        self._logger = node.get_logger()
        self._edges: dict = {}  # child -> (parent, T_parent_child)
        self._value = fixed
        if fixed is None:
            try:
                from tf2_msgs.msg import TFMessage
            except ImportError as e:  # a real ROS install has tf2_msgs; the venv builds a stand-in
                raise RuntimeError("tf2_msgs is not importable: set the camera_to_hand parameter") from e
            node.create_subscription(TFMessage, "/tf_static", self._on_tf_static, TF_STATIC_QOS)

    @property
    def T_cam_hand(self) -> Optional[np.ndarray]:
        return self._value

    def _on_tf_static(self, msg) -> None:
        for T, parent, child, _ in msgs.tf_message_to_list(msg):
            self._edges[child] = (parent, T)
        value = self._resolve()
        if value is not None and (self._value is None or not np.allclose(value, self._value)):
            t = value[:3, 3]
            self._logger.info(f"camera->hand from /tf_static: {self.camera_frame} -> {self.hand_frame} "
                              f"t = [{t[0]:.4f}, {t[1]:.4f}, {t[2]:.4f}] m")
        self._value = value if value is not None else self._value

    def _chain_to_root(self, frame):
        T, chain = np.eye(4), [frame]
        while frame in self._edges:
            parent, T_pc = self._edges[frame]
            T = T_pc @ T
            frame = parent
            chain.append(frame)
            if len(chain) > 64:
                break
        return chain, T  # T = T_root_frame

    def _resolve(self) -> Optional[np.ndarray]:
        chain_h, T_root_h = self._chain_to_root(self.hand_frame)
        chain_c, T_root_c = self._chain_to_root(self.camera_frame)
        if chain_h[-1] != chain_c[-1]:
            return None
        return np.linalg.inv(T_root_c) @ T_root_h
