"""/hp_ros/contacts (hp_ros_msgs/ContactMap): the contact map of each posed frame.

The map is the physics prior's view at the published pose (:class:`hp_ros.core.contact_map.ContactMapper`:
the frame's measured joints, the filter's camera->hand estimate, the published object pose and its
covariance). A refinement result re-initialises the tracker, whose next frames carry it. Nothing
is computed while nobody subscribes (``built`` counts the maps made).
"""
from __future__ import annotations

import numpy as np

from hp_ros import graph
from hp_ros.core.contact_map import STATE_NAMES, ContactMapConfig, ContactMapper
from hp_ros.io import msgs
from hp_ros.nodes.qos import OUTPUT_QOS

__all__ = ["ContactOutput", "make_contact_map"]


def make_contact_map(types, contacts: list, stamp_ns: int, camera_frame: str, object_frame: str,
                     threshold: float, score: float):
    """``hp_ros_msgs/ContactMap`` from :class:`~hp_ros.core.contact_map.Contact` s; ``types``: the
    ``hp_ros_msgs.msg`` module."""
    Point = msgs.field_class(types.Contact, "point_object")
    Vec = msgs.field_class(types.Contact, "normal_object")
    out = []
    for c in contacts:
        cov = np.zeros(9) if c.point_cov_cam is None else np.asarray(c.point_cov_cam, np.float64).reshape(-1)
        out.append(types.Contact(
            link=c.link, finger=int(c.finger), state=int(c.state), state_name=STATE_NAMES[c.state],
            point_object=Point(x=float(c.point_obj[0]), y=float(c.point_obj[1]), z=float(c.point_obj[2])),
            normal_object=Vec(x=float(c.normal_obj[0]), y=float(c.normal_obj[1]), z=float(c.normal_obj[2])),
            point_camera=Point(x=float(c.point_cam[0]), y=float(c.point_cam[1]), z=float(c.point_cam[2])),
            normal_camera=Vec(x=float(c.normal_cam[0]), y=float(c.normal_cam[1]), z=float(c.normal_cam[2])),
            point_covariance=cov, signed_distance=float(c.distance), num_samples=int(c.num_samples)))
    header = msgs.make_header(msgs.field_class(types.ContactMap, "header"), stamp_ns, camera_frame)
    return types.ContactMap(header=header, object_frame=object_frame, contact_threshold=float(threshold),
                            pose_score=float(score), contacts=out)


class ContactOutput:
    """The /hp_ros/contacts publisher; ``mapper`` is shared with the markers."""

    def __init__(self, node, mapper: ContactMapper, camera_frame: str, object_frame: str):
        import hp_ros_msgs.msg as types

        self.types, self.mapper = types, mapper
        self.camera_frame, self.object_frame = camera_frame, object_frame
        self.pub = node.create_publisher(types.ContactMap, graph.TOPICS["contacts"], OUTPUT_QOS)
        self.built = 0

    @staticmethod
    def make_mapper(hand, obj, sdf, contact_threshold: float, penetration_tolerance: float) -> ContactMapper:
        return ContactMapper.for_object(hand, obj, sdf, ContactMapConfig(threshold=contact_threshold,
                                                                         penetration_tolerance=penetration_tolerance))

    def contacts(self, r) -> list:
        """The contact map of a :class:`~hp_ros.core.ekf.FrameResult` (empty without joints or pose)."""
        if r.T_cam_obj is None or r.q is None or r.T_cam_hand is None:
            return []
        return self.mapper.compute(r.q, r.T_cam_hand, r.T_cam_obj, r.covariance)

    def publish(self, r, contacts=None) -> bool:
        """Publish the frame's map (``contacts``: already computed); False when nobody subscribes."""
        if r.T_cam_obj is None or self.pub.get_subscription_count() == 0:
            return False
        contacts = self.contacts(r) if contacts is None else contacts
        self.pub.publish(make_contact_map(self.types, contacts, r.stamp, self.camera_frame, self.object_frame,
                                          self.mapper.cfg.threshold, r.score))
        self.built += 1
        return True
