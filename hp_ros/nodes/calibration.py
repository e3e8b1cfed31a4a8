"""The camera->hand-base transform: a fixed parameter, the chain of /tf_static transforms, or - on a
moving base (a hand on an arm) - the chain through /tf, interpolated at each image's stamp.

/tf and /tf_static go into a :class:`hp_ros.core.tf_buffer.TransformBuffer` (tf2's lookup semantics;
``tf2_ros`` is not a dependency of the package's Python environment)."""
from __future__ import annotations

from typing import Optional

import numpy as np
from rclpy.node import Node

from hp_ros.core.ekf.hand_base import HandBaseTrack
from hp_ros.core.tf_buffer import TransformBuffer
from hp_ros.io import msgs
from hp_ros.nodes.deferred import DeferredReader
from hp_ros.nodes.qos import TF_STATIC_QOS


class CameraToHand:
    """The camera->hand-base transform ``T_cam_hand`` (4,4): from a parameter when given,
    else from ``/tf_static`` (chaining static transforms from ``camera_frame`` to
    ``hand_base_frame`` in either direction), else through ``/tf`` (:meth:`at` a stamp; :attr:`track`
    for the tracker)."""

    MAX_FRAMES = 256  # static frames kept (a robot has tens)

    TF_DEPTH = 200   # /tf messages kept between two lookups (a robot_state_publisher at 100+ Hz)

    def __init__(self, node: Node, camera_frame: str, hand_frame: str, fixed: Optional[np.ndarray] = None,
                 bus=None):
        self.camera_frame, self.hand_frame = camera_frame, hand_frame
        self.fixed = fixed
        self._logger = node.get_logger()
        self._problems = getattr(node, "problems", None)  # guard.ProblemLog of a GuardedNode
        self._edges: dict = {}  # child -> (parent, T_parent_child)
        self._value = fixed
        self.buffer = TransformBuffer(cache_time_s=10.0, max_frames=self.MAX_FRAMES)
        self.track = HandBaseTrack(self.buffer, camera_frame, hand_frame, refresh=self._take_tf)
        self._tf_reader = None
        self._wanted = {camera_frame, hand_frame}   # frames on the camera->hand chain seen so far
        if fixed is None:
            try:
                from tf2_msgs.msg import TFMessage
            except ImportError as e:  # a real ROS install has tf2_msgs; the venv builds a stand-in
                raise RuntimeError("tf2_msgs is not importable: set the camera_to_hand parameter") from e
            node.create_subscription(TFMessage, "/tf_static", self._on_tf_static, TF_STATIC_QOS)
            # /tf read on demand (no executor callback per message: hp_ros.nodes.deferred)
            self._tf_reader = DeferredReader(node, bus, TFMessage, "/tf", depth=self.TF_DEPTH)

    @property
    def T_cam_hand(self) -> Optional[np.ndarray]:
        """The fixed / static transform; on a moving base the newest one."""
        if self._value is None and self.fixed is None and self.track.moving:
            return self.track.at(0)
        return self._value

    @property
    def static(self) -> Optional[np.ndarray]:
        """The fixed / static transform (None on a moving base or before it is known): no /tf lookup."""
        return self._value

    @property
    def known(self) -> bool:
        """Whether a camera->hand transform is there (fixed, static, or a connected /tf chain), without
        a lookup (asked for every waiting image)."""
        return self._value is not None or (self.fixed is None and self.track.moving)

    def at(self, stamp_ns: int) -> Optional[np.ndarray]:
        """``T_cam_hand`` at an image's stamp: interpolated on a moving base, else :attr:`T_cam_hand`."""
        if self.fixed is None and self._value is None and self.track.moving:
            return self.track.at(int(stamp_ns))
        return self._value

    def _take_tf(self) -> None:
        """Put the waiting /tf messages into the buffer: only transforms whose child frame is on the
        camera->hand chain (the hand base, the camera and the parents seen for them), compared by name
        before anything is converted."""
        if self._tf_reader is None:
            return
        for msg, _ in self._tf_reader.take():
            self._on_tf(msg)

    def _on_tf(self, msg) -> None:
        todo = list(msg.transforms)
        while todo:   # a message lists its transforms in any order: repeat while the chain grows
            rest = [t for t in todo if str(t.child_frame_id) not in self._wanted]
            for t in todo:
                if str(t.child_frame_id) in self._wanted:
                    self._wanted.add(str(t.header.frame_id))
                    self._store_tf(t)
            if len(rest) == len(todo):
                return
            todo = rest

    def _store_tf(self, t) -> None:
        try:
            T, parent, child, stamp = msgs.transform_stamped_to_matrix(t)
            self.buffer.set_transform(T, parent, child, stamp)
        except ValueError as e:
            self._refuse(e, f"/tf {str(t.header.frame_id)[:40]!r} -> {str(t.child_frame_id)[:40]!r}")

    def _on_tf_static(self, msg) -> None:
        # each transform validated on its own (finite translation, normalisable quaternion): a bad
        # one is refused and changes nothing, the good ones of the same message are kept
        for t in msg.transforms:
            try:
                T, parent, child, _ = msgs.transform_stamped_to_matrix(t)
            except ValueError as e:
                self._refuse(e, f"/tf_static {str(t.header.frame_id)[:40]!r} -> {str(t.child_frame_id)[:40]!r}")
                continue
            if parent == child or not child:
                continue
            if child not in self._edges and len(self._edges) >= self.MAX_FRAMES:
                self._refuse(ValueError(f"more than {self.MAX_FRAMES} frames"), f"/tf_static frame {child[:40]!r}")
                continue
            self._edges[child] = (parent, T)
            self.buffer.set_transform(T, parent, child, 0, static=True)
        value = self._resolve()
        if value is not None and (self._value is None or not np.allclose(value, self._value)):
            t = value[:3, 3]
            self._logger.info(f"camera->hand from /tf_static: {self.camera_frame} -> {self.hand_frame} "
                              f"t = [{t[0]:.4f}, {t[1]:.4f}, {t[2]:.4f}] m")
        self._value = value if value is not None else self._value

    def _refuse(self, error: Exception, what: str) -> None:
        if self._problems is not None:
            self._problems.reject(error, "tf_static", f"{what} refused: ")
        else:
            self._logger.warning(f"{what} refused: {error}", throttle_duration_sec=60.0)

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
