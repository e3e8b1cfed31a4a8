"""The listener of ``hp-ros demo`` (:mod:`hp_ros.tools.demo`): a node in the demo's own process
that records what the graph publishes - object poses, TF, tracking status, observations,
/diagnostics and the colour frames' publish times - for scoring."""
from __future__ import annotations

import threading
import time


class Collector:
    """Records object poses, TF, status and colour-frame arrival times (monotonic clock)."""

    def __init__(self, object_frame: str, camera_frame: str):
        import rclpy
        from geometry_msgs.msg import PoseWithCovarianceStamped
        from sensor_msgs.msg import CameraInfo
        from diagnostic_msgs.msg import DiagnosticArray
        from tf2_msgs.msg import TFMessage

        from hp_ros import graph
        from hp_ros.nodes.qos import OUTPUT_QOS, STATE_QOS

        from hp_ros_msgs.msg import ObjectObservation, TrackingStatus

        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node("hp_ros_demo_listener", context=self.ctx)
        self.object_frame, self.camera_frame = object_frame, camera_frame
        self.poses: dict = {}       # stamp_ns -> (T (4,4), cov (6,6), wall receive time)
        self.invalid_poses = 0      # malformed messages on the pose topic (not the tracker's)
        self.tf: dict = {}          # stamp_ns -> T
        self.images: dict = {}      # stamp_ns -> wall receive time of the colour camera_info
        self.status: list = []      # (wall, state_name)
        self.observations = 0       # object observations from the segmentation node
        self.refined: list = []     # wall receive times of /hp_ros/refined_pose
        self.diagnostics: dict = {}  # status name -> {key: value} of its latest /diagnostics
        self._lock = threading.Lock()
        n = self.node
        # deep queues: every pose counts, also while this listener is busy (a burst in the fuzz test)
        n.create_subscription(PoseWithCovarianceStamped, graph.TOPICS["object_pose"], self._on_pose, STATE_QOS)
        n.create_subscription(TFMessage, "/tf", self._on_tf, STATE_QOS)
        n.create_subscription(PoseWithCovarianceStamped, graph.TOPICS["refined_pose"],
                              lambda msg: self.refined.append(time.monotonic()), STATE_QOS)
        n.create_subscription(TrackingStatus, graph.TOPICS["tracking_status"], self._on_status, STATE_QOS)
        n.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, OUTPUT_QOS)
        n.create_subscription(ObjectObservation, graph.TOPICS["object_observation"], self._on_observation, STATE_QOS)
        # camera_info goes out next to each colour image with the same stamp: its arrival time
        # stands for the image's, without copying every 640x480 image into this process.
        n.create_subscription(CameraInfo, graph.CAMERA_TOPICS["color_info"], self._on_image, STATE_QOS)
        self._executor = rclpy.executors.SingleThreadedExecutor(context=self.ctx)
        self._executor.add_node(n)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._running = True
        self._thread.start()

    def _spin(self):
        while self._running:
            self._executor.spin_once(timeout_sec=0.05)

    # Latency = when the tracker published a pose minus when the replay published the frame's
    # camera_info: both are the writers' ``source_timestamp`` (system clock), so delays in this
    # listener's own delivery or executor do not count.
    def _on_pose(self, msg, info):
        from hp_ros.io import msgs

        from hp_ros.io import validate

        t = info["source_timestamp"] * 1e-9
        try:  # the tracker's poses are valid; anything else on the topic is not scored
            cov = validate.check_covariance(msg.pose.covariance)
            T = msgs.pose_to_matrix(msg)
        except ValueError:
            self.invalid_poses += 1
            return
        with self._lock:
            self.poses[msgs.header_stamp_ns(msg)] = (T, cov, t)

    def _on_tf(self, msg):
        from hp_ros.io import msgs

        for T, parent, child, stamp in msgs.tf_message_to_list(msg):
            if child == self.object_frame and parent == self.camera_frame:
                with self._lock:
                    self.tf[stamp] = T

    def _on_status(self, msg):
        with self._lock:
            self.status.append((time.monotonic(), msg.state_name))

    def _on_image(self, msg, info):
        from hp_ros.io import msgs

        with self._lock:
            self.images[msgs.header_stamp_ns(msg)] = info["source_timestamp"] * 1e-9

    def _on_diagnostics(self, msg):
        with self._lock:
            for st in msg.status:
                self.diagnostics[st.name] = {kv.key: kv.value for kv in st.values}

    def _on_observation(self, msg):
        with self._lock:
            self.observations += 1

    def count(self, topic: str, kind: str = "subscribers") -> int:
        return (self.node.count_subscribers if kind == "subscribers" else self.node.count_publishers)(topic)

    def close(self):
        import rclpy

        self._running = False
        self._thread.join(timeout=2.0)
        self.node.destroy_node()
        rclpy.shutdown(context=self.ctx)
