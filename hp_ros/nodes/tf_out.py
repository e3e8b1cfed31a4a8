"""TF output for hp_ros nodes: tf2_ros when importable, else a plain /tf publisher.

tf2_ros is not installable from PyPI; without it we publish ``tf2_msgs/msg/TFMessage`` on
``/tf`` (and ``/tf_static`` with transient-local durability) with the QoS tf2_ros uses, which
is exactly what a TransformBroadcaster puts on the wire.
"""
from __future__ import annotations

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy


class TfPublisher:
    """Broadcast ``geometry_msgs/TransformStamped`` lists on /tf (or /tf_static)."""

    def __init__(self, node: Node, static: bool = False):
        self.backend = "tf2_ros"
        self.static = bool(static)
        try:
            if static:
                from tf2_ros import StaticTransformBroadcaster as Broadcaster
            else:
                from tf2_ros import TransformBroadcaster as Broadcaster
            self._broadcaster = Broadcaster(node)
            self._pub = None
        except ImportError:
            from tf2_msgs.msg import TFMessage

            self.backend = "tf2_msgs"
            self._msg_type = TFMessage
            qos = QoSProfile(depth=1 if static else 100, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL if static else DurabilityPolicy.VOLATILE)
            self._broadcaster = None
            self._pub = node.create_publisher(TFMessage, "/tf_static" if static else "/tf", qos)

    def wanted(self) -> bool:
        """Whether anything listens (a /tf listener, RViz): /tf is volatile, so with no subscriber a
        transform nobody receives need not be built. /tf_static always is (transient local)."""
        if self.static:
            return True
        pub = self._pub if self._pub is not None else getattr(self._broadcaster, "pub_tf", None)
        return pub is None or pub.get_subscription_count() > 0

    def send(self, transforms) -> None:
        """Publish one or several ``TransformStamped``."""
        transforms = list(transforms) if isinstance(transforms, (list, tuple)) else [transforms]
        if self._broadcaster is not None:
            self._broadcaster.sendTransform(transforms)
        else:
            self._pub.publish(self._msg_type(transforms=transforms))
