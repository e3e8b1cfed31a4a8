"""Minimal hp_ros node for the environment smoke test.

Publishes a fixed object pose as ``geometry_msgs/PoseWithCovarianceStamped`` on
``/hp_ros/object_pose`` and as TF (``frame_id`` -> ``child_frame_id``) on ``/tf``, proving
that rclpy, the message packages and DDS over loopback work end to end.
"""
from __future__ import annotations

from hp_ros.nodes import exit_quietly_while_loading

exit_quietly_while_loading(__name__)  # before the imports below: they take seconds

import math

import rclpy
from geometry_msgs.msg import PoseWithCovarianceStamped, TransformStamped
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

from hp_ros.nodes.process import run_node
from hp_ros.nodes.tf_out import TfPublisher


class PoseSmokeNode(Node):
    def __init__(self):
        super().__init__("pose_smoke_node")
        d = lambda text: ParameterDescriptor(description=text)  # noqa: E731
        self.declare_parameter("frame_id", "camera_color_optical_frame", d("parent (camera) frame"))
        self.declare_parameter("child_frame_id", "object", d("object frame"))
        self.declare_parameter("position", [0.0, 0.0, 0.5], d("object position in the camera frame [m]"))
        self.declare_parameter("orientation", [0.0, 0.0, 0.0, 1.0], d("quaternion x, y, z, w"))
        self.declare_parameter("sigma", [0.01, 0.01, 0.01, 0.05, 0.05, 0.05],
                               d("standard deviations x, y, z [m], rx, ry, rz [rad]"))
        self.declare_parameter("rate_hz", 20.0, d("publish rate"))
        self.frame_id = self.get_parameter("frame_id").value
        self.child = self.get_parameter("child_frame_id").value
        self.position = list(self.get_parameter("position").value)
        q = list(self.get_parameter("orientation").value)
        n = math.sqrt(sum(c * c for c in q))
        if len(self.position) != 3 or len(q) != 4 or n == 0:
            raise ValueError("position needs 3 values and orientation 4 (x, y, z, w), non-zero")
        self.orientation = [c / n for c in q]
        self.sigma = list(self.get_parameter("sigma").value)
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.pose_pub = self.create_publisher(PoseWithCovarianceStamped, "/hp_ros/object_pose", qos)
        self.tf = TfPublisher(self)
        self.create_timer(1.0 / float(self.get_parameter("rate_hz").value), self.tick)
        self.get_logger().info(f"publishing {self.frame_id} -> {self.child} (tf via {self.tf.backend})")

    def tick(self):
        stamp = self.get_clock().now().to_msg()
        msg = PoseWithCovarianceStamped()
        msg.header.stamp = stamp
        msg.header.frame_id = self.frame_id
        p, o = msg.pose.pose.position, msg.pose.pose.orientation
        p.x, p.y, p.z = self.position
        o.x, o.y, o.z, o.w = self.orientation
        msg.pose.covariance = [self.sigma[i] ** 2 if i == j else 0.0 for i in range(6) for j in range(6)]
        self.pose_pub.publish(msg)
        t = TransformStamped()
        t.header = msg.header
        t.child_frame_id = self.child
        t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = self.position
        t.transform.rotation = msg.pose.pose.orientation
        self.tf.send(t)


def main(args=None):
    return run_node(PoseSmokeNode, "pose_smoke_node", args)


if __name__ == "__main__":
    raise SystemExit(main())
