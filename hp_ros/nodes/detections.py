"""/hp_ros/detections and /hp_ros/vision_info: the tracked object in the ROS 2 perception convention.

Each posed frame (the same frames as /hp_ros/object_pose) becomes one ``vision_msgs/Detection3DArray``
with one ``Detection3D``: the camera frame's header with the image stamp, ``id`` = the
``object_frame`` parameter (the object's name in TF: stable across frames, distinct for two
tracked objects), one ``ObjectHypothesisWithPose`` (``class_id`` = the object model's name, e.g.
``cracker_box`` or the mesh file's stem; ``score`` = the frame's confidence,
:mod:`hp_ros.core.ekf.confidence`; the pose with the EKF covariance) and the mesh's axis-aligned
bounding box in the object frame (its centre posed in the camera, its size). ``VisionInfo`` goes out
once on /hp_ros/vision_info with transient-local durability (a late subscriber still gets it).

Nothing is built while nobody subscribes to /hp_ros/detections (``built`` counts the messages
made). Without a ``vision_msgs`` package (neither rosdep's nor set-up's stand-in) the node logs
one warning and runs without these topics.
"""
from __future__ import annotations

import numpy as np
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from hp_ros import graph
from hp_ros.io import msgs
from hp_ros.nodes.qos import OUTPUT_QOS

__all__ = ["DetectionMessage", "DetectionOutput", "make_detection_array", "object_box", "set_pose", "VISION_INFO_QOS"]

VISION_INFO_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
METHOD = "hp_ros EKF tracker (HandyPriors: joint states as control, depth fit, fingertips)"


def object_box(vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned box of ``vertices`` ``(V, 3)`` in the object frame: ``(centre (3,), size (3,))``."""
    v = np.asarray(vertices, dtype=np.float64)
    lo, hi = v.min(0), v.max(0)
    return (lo + hi) / 2, hi - lo


def set_pose(pose, T: np.ndarray, q: np.ndarray) -> None:
    """Write ``T`` ``(4, 4)`` with its quaternion ``q`` ``(x, y, z, w)`` into a geometry_msgs/Pose in place."""
    pose.position.x, pose.position.y, pose.position.z = float(T[0, 3]), float(T[1, 3]), float(T[2, 3])
    pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = (float(v) for v in q)


class DetectionMessage:
    """One ``Detection3DArray`` holding one detection, built once and updated per frame (building an
    rclpy message from scratch costs ~0.4 ms in Python; updating its fields ~0.05 ms). ``types``: the
    ``vision_msgs.msg`` module; ``box_center`` ``(3,)`` / ``box_size`` ``(3,)`` in the object frame."""

    def __init__(self, types, frame_id: str, object_id: str, class_id: str, box_center, box_size):
        self.box_center = np.asarray(box_center, dtype=np.float64)
        hyp = types.ObjectHypothesisWithPose(hypothesis=types.ObjectHypothesis(class_id=class_id, score=0.0))
        det = types.Detection3D(results=[hyp], id=object_id)
        det.header.frame_id = frame_id
        det.bbox.size.x, det.bbox.size.y, det.bbox.size.z = (float(v) for v in box_size)
        self.msg = types.Detection3DArray(detections=[det])
        self.msg.header.frame_id = frame_id
        self._det, self._hyp, self._time = det, hyp, msgs.field_class(type(self.msg.header), "stamp")

    def update(self, T_cam_obj: np.ndarray, covariance: np.ndarray, stamp_ns: int, score: float):
        """The message for the object at ``T_cam_obj`` ``(4, 4)`` with ``covariance`` ``(6, 6)``."""
        T = np.asarray(T_cam_obj, dtype=np.float64)
        q = msgs._quat_xyzw(T)
        stamp = msgs.ns_to_stamp(stamp_ns, self._time)
        self.msg.header.stamp = self._det.header.stamp = stamp
        self._hyp.hypothesis.score = float(score)
        set_pose(self._hyp.pose.pose, T, q)
        cov = np.asarray(covariance, dtype=np.float64)
        self._hyp.pose.covariance = ((cov + cov.T) / 2).reshape(-1)
        T_box = T.copy()
        T_box[:3, 3] = T[:3, :3] @ self.box_center + T[:3, 3]
        set_pose(self._det.bbox.center, T_box, q)
        return self.msg


def make_detection_array(types, T_cam_obj: np.ndarray, covariance: np.ndarray, stamp_ns: int, frame_id: str,
                         object_id: str, class_id: str, score: float, box_center: np.ndarray, box_size: np.ndarray):
    """One new ``Detection3DArray`` (see :class:`DetectionMessage`)."""
    return DetectionMessage(types, frame_id, object_id, class_id, box_center, box_size).update(
        T_cam_obj, covariance, stamp_ns, score)


class DetectionOutput:
    """The publishers of /hp_ros/detections and /hp_ros/vision_info for a node tracking ``obj``."""

    def __init__(self, node, obj, camera_frame: str, object_frame: str, database: str):
        self.node, self.camera_frame, self.object_id, self.class_id = node, camera_frame, object_frame, obj.name
        self.box_center, self.box_size = object_box(obj.vertices.double().numpy())
        self.built = 0
        try:
            import vision_msgs.msg as types
        except ImportError:
            self.types = self.pub = None
            node.get_logger().warning("vision_msgs is not installed (rosdep install, or scripts/setup_env.sh builds "
                                      f"it): no {graph.TOPICS['detections']}")
            return
        self.types = types
        self.message = DetectionMessage(types, camera_frame, object_frame, obj.name, self.box_center, self.box_size)
        self.pub = node.create_publisher(types.Detection3DArray, graph.TOPICS["detections"], OUTPUT_QOS)
        self.info_pub = node.create_publisher(types.VisionInfo, graph.TOPICS["vision_info"], VISION_INFO_QOS)
        info = types.VisionInfo(method=METHOD, database_location=str(database), database_version=0)
        info.header.stamp = node.get_clock().now().to_msg()
        info.header.frame_id = camera_frame
        self.info_pub.publish(info)

    def publish(self, r) -> bool:
        """One published frame's :class:`~hp_ros.core.ekf.FrameResult` (with a pose); False when
        nothing was built (no subscriber, no vision_msgs)."""
        if self.pub is None or r.T_cam_obj is None or self.pub.get_subscription_count() == 0:
            return False
        self.pub.publish(self.message.update(r.T_cam_obj, r.covariance, r.stamp, r.score))
        self.built += 1
        return True
