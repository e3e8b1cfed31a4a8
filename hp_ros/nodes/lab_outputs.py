"""What a lab subscribes to beside the pose: /hp_ros/detections (+ /hp_ros/vision_info),
/hp_ros/contacts and /hp_ros/markers, for the tracking node (one call per processed frame).

Each output works only while something subscribes to it (the markers at most every 0.1 s); the
contact map is computed once per frame when the contacts or the markers want it. ``built`` counts the messages each one made.
"""
from __future__ import annotations

import time

from hp_ros.core.ekf import TrackState
from hp_ros.nodes.contacts import ContactOutput
from hp_ros.nodes.detections import DetectionOutput
from hp_ros.nodes.markers import MarkerOutput

__all__ = ["LabOutputs"]


class LabOutputs:
    def __init__(self, node, hand, obj, sdf, p: dict):
        cam, objf = p["camera_frame"], p["object_frame"]
        self.detections = DetectionOutput(node, obj, cam, objf, p["object_mesh"])
        mapper = ContactOutput.make_mapper(hand, obj, sdf, p["contact_map_threshold"], p["penetration_tolerance"])
        self.contacts = ContactOutput(node, mapper, cam, objf)
        self.markers = MarkerOutput(node, obj, mapper.kin, cam, objf, p["fingertip_offset"])

    @property
    def built(self) -> dict:
        return {"detections": self.detections.built, "contacts": self.contacts.built, "markers": self.markers.built}

    def publish(self, r, posed: bool, K=None) -> None:
        """One :class:`~hp_ros.core.ekf.FrameResult`; ``posed``: its pose was published (detections and
        contacts follow the pose; the markers also show a LOST estimate, in red)."""
        if r.T_cam_obj is None:
            return
        now = time.monotonic()
        want_contacts = posed and self.contacts.pub.get_subscription_count() > 0
        want_markers = self.markers.due(now)
        contacts = self.contacts.contacts(r) if (want_contacts or (want_markers and r.state == TrackState.TRACKING)) \
            else []
        if posed:
            self.detections.publish(r)
            if want_contacts:
                self.contacts.publish(r, contacts)
        if want_markers:
            self.markers.publish(r, contacts, K, now)
