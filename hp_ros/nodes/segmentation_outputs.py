"""The segmentation node's outputs (a mixin of :class:`hp_ros.nodes.segmentation_node.SegmentationNode`,
on its own state): the publishers, one frame's results as messages with the colour image's
header, and the node's /diagnostics with its per-frame stage timings."""
from __future__ import annotations

import collections

import numpy as np
from geometry_msgs.msg import TransformStamped
from sensor_msgs.msg import Image

from hp_ros.core.observation import FingertipObservation
from hp_ros.graph import TOPICS
from hp_ros.io import msgs
from hp_ros.io.observations import fingertips_to_msg, object_observation_to_msg
from hp_ros.nodes.diagnostics import diagnostics_message, stage_medians_ms
from hp_ros.nodes.local_bus import publisher
from hp_ros.nodes.qos import OUTPUT_QOS

# stages of a frame in this node (wall-clock): DDS transport (writer's send to reader's receive),
# executor queue, waiting for the worker (still segmenting an earlier frame), then for the frame's
# own inputs (depth / joint states) once the worker is free, segmentation, publishing the outputs;
# segment_cpu: the worker thread's CPU time for the segmentation (against the wall-clock segment
# stage: the rest is waiting for the GIL or a core)
STAGES = (("transport", "sent", "received"), ("executor", "received", "callback"),
          ("wait_worker", "callback", "worker_free"), ("wait_inputs", "worker_free", "start"),
          ("segment", "start", "segmented"),
          ("segment_cpu", "cpu_start", "cpu_end"), ("publish", "segmented", "published"))


class SegmentationOutputs:
    """Publishing of the segmentation node; state set up in its ``__init__`` (:meth:`_create_outputs`)."""

    def _create_outputs(self, p: dict, bus):
        """Publishers of masks, observations, fingertips, overlay and /diagnostics (1 s timer)."""
        self.pub_hand = publisher(self, bus, Image, TOPICS["hand_mask"], OUTPUT_QOS)
        self.pub_obj = publisher(self, bus, Image, TOPICS["object_mask"], OUTPUT_QOS)
        self.pub_obs = publisher(self, bus, self.ObjectObservation, TOPICS["object_observation"], OUTPUT_QOS)
        self.pub_tips = publisher(self, bus, self.FingertipObservations, TOPICS["fingertips"], OUTPUT_QOS)
        self.pub_align = publisher(self, bus, TransformStamped, TOPICS["hand_alignment"], OUTPUT_QOS)
        self.pub_overlay = publisher(self, bus, Image, TOPICS["overlay"], OUTPUT_QOS) if p["publish_overlay"] else None
        # frames segmented and every input problem counted (guard.ProblemLog: each kind logged once, then throttled)
        from diagnostic_msgs.msg import DiagnosticArray
        self.lost_images = 0
        self.stage_times = collections.deque(maxlen=300)  # per-frame stage stamps, see on_image
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", OUTPUT_QOS)
        self.create_timer(1.0, self.publish_diagnostics)
        self._worker_free_ns = 0  # when the worker last finished a frame (stage wait_worker)

    def _publish_results(self, msg, stamp: int, rgb, res):
        """Masks and overlay (only while subscribed), the object observation and the fingertips,
        all with the colour image's header."""
        from hp_ros.core.segmentation.image import overlay
        h, frame = msg.header, msg.header.frame_id
        for pub, m in ((self.pub_hand, res.hand_mask), (self.pub_obj, res.object_mask)):
            if pub.get_subscription_count() == 0:
                continue  # nobody listens (the refinement node subscribes only around its requests): 0.3 MB saved
            out = msgs.numpy_to_image(m.astype(np.uint8) * 255, "mono8", stamp, frame, Image)
            out.header = h
            pub.publish(out)
        self.pub_obs.publish(object_observation_to_msg(res.observation, stamp, frame, self.ObjectObservation))
        if res.fingertips is not None and self.pub_tips.get_subscription_count() > 0:
            tips = FingertipObservation(tuple(self.hand.fingertip_links), res.fingertips.uv, res.fingertips.confidence,
                                        res.fingertips.fk_uv)
            self.pub_tips.publish(fingertips_to_msg(tips, stamp, frame, self.FingertipObservations))
        if res.hand_aligned and self.pub_align.get_subscription_count() > 0:  # the tracker's, on a moving base
            self.pub_align.publish(msgs.make_transform_stamped(res.T_cam_hand, stamp, self.p["camera_frame"],
                                                               self.p["hand_base_frame"],
                                                               TransformStamped))
        if self.pub_overlay is not None and self.pub_overlay.get_subscription_count() > 0:
            out = msgs.numpy_to_image(overlay(rgb, res.hand_mask, res.object_mask, res.fingertips), "rgb8",
                                      stamp, frame, Image)
            out.header = h
            self.pub_overlay.publish(out)

    def _fingertips_wanted(self) -> bool:
        """Fingertip markers are looked for only while /hp_ros/fingertips or the overlay has a
        subscriber (the tracker reads them only while its filter estimates the camera->hand
        correction: not on a moving base by default)."""
        overlay = self.pub_overlay is not None and self.pub_overlay.get_subscription_count() > 0
        return overlay or self.pub_tips.get_subscription_count() > 0

    def publish_diagnostics(self):
        from diagnostic_msgs.msg import DiagnosticStatus
        self._worker.check()  # restarts the worker thread if it is gone
        lost = self.color_reader.lost() if self.color_reader is not None else 0
        if lost:
            self._count_lost_images(lost)
        problems = self.bad.total()
        level = DiagnosticStatus.OK if self.frames and not problems else DiagnosticStatus.WARN
        message = f"{self.frames} frames segmented" if self.frames else "no frame segmented yet"
        if self._worker.error_active():
            level = DiagnosticStatus.ERROR
            message = (f"segmentation worker died ({self._worker.last_error}) and was restarted "
                       f"({self._worker.restarts} restart(s)); {message}")
        values = {"frames": self.frames, "pending": len(self.pending), "images_lost": self.lost_images,
                  "skipped_behind": self.skipped_behind, "object_backend": self.active_backend,
                  **{f"frames_by_backend.{k}": v for k, v in self.frames_by_backend.items()},
                  "marker_frames": self.marker_frames,
                  "worker_restarts": self._worker.restarts, "stamp_resets": self.stamps.resets,
                  **stage_medians_ms(list(self.stage_times), STAGES),
                  **self.problem_values()}
        self.diag_pub.publish(diagnostics_message(self, "hp_ros: segmentation_node", level, message, values))
