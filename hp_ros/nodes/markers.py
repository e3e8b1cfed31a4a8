"""/hp_ros/markers (visualization_msgs/MarkerArray) for RViz, built only while subscribed.

Namespaces (``config/hp_ros.rviz`` shows them all):

* ``object``: the object mesh (TRIANGLE_LIST in the object's TF frame, ``frame_locked``: RViz moves
  it with /tf), coloured by tracking state (green TRACKING, orange INITIALIZING, red LOST); sent
  again only when the state changes and every ``MESH_PERIOD`` seconds (for an RViz started later);
  a mesh of more than ``MESH_MAX_FACES`` faces is shown as its convex hull (exact for the built-in
  box and can).
* ``covariance``: the 95 % ellipsoid of the object position (camera frame);
* ``contacts`` / ``normals``: the contact map's points (red: penetrating) and 1 cm normals;
* ``fingertips_fk``: the fingertips from the joints and the camera->hand estimate (spheres);
  ``fingertips_observed``: each observed fingertip pixel's ray from the camera (the tip lies on it).

The markers go out at most every ``PERIOD`` (0.1 s: RViz needs no 30 Hz) and while nobody subscribes
nothing is computed (``built`` counts the arrays made). The marker messages are built once and
updated in place (building rclpy messages is what costs, in Python).
"""
from __future__ import annotations

import math

import numpy as np

from hp_ros import graph
from hp_ros.core.contact_map import PENETRATING
from hp_ros.core.ekf import TrackState
from hp_ros.io import msgs
from hp_ros.nodes.qos import OUTPUT_QOS

__all__ = ["MarkerOutput", "STATE_COLORS"]

STATE_COLORS = {TrackState.TRACKING: (0.1, 0.8, 0.2, 0.6), TrackState.INITIALIZING: (1.0, 0.6, 0.0, 0.6),
                TrackState.LOST: (0.9, 0.1, 0.1, 0.6)}
MESH_PERIOD = 2.0       # [s] the mesh marker is re-sent at least this often
MESH_MAX_FACES = 1000   # larger meshes are shown as their convex hull
PERIOD = 0.1            # [s] markers at most this often
ELLIPSOID_K = math.sqrt(7.815)  # 95 % of a 3-D Gaussian: chi2_3(0.95)


class MarkerOutput:
    """The marker publisher of a tracking node (``obj``, the hand kinematics ``kin`` of the contact mapper)."""

    def __init__(self, node, obj, kin, camera_frame: str, object_frame: str, fingertip_offset: float = 0.0):
        from geometry_msgs.msg import Point
        from visualization_msgs.msg import Marker, MarkerArray

        self.Marker, self.MarkerArray, self.Point = Marker, MarkerArray, Point
        self.node, self.kin = node, kin
        self.camera_frame, self.object_frame, self.tip_offset = camera_frame, object_frame, fingertip_offset
        v, f = obj.vertices.double().numpy(), obj.faces.numpy()
        if len(f) > MESH_MAX_FACES:
            import trimesh

            hull = trimesh.Trimesh(v, f, process=False).convex_hull
            v, f = np.asarray(hull.vertices), np.asarray(hull.faces)
        self._mesh_points = [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in v[f].reshape(-1, 3)]
        self._mesh_state, self._mesh_sent, self._sent = None, -math.inf, -math.inf
        from std_msgs.msg import ColorRGBA

        self._colors = {False: ColorRGBA(r=1.0, g=1.0, b=0.0, a=1.0), True: ColorRGBA(r=1.0, g=0.0, b=0.0, a=1.0)}
        self._templates: dict = {}
        self.pub = node.create_publisher(MarkerArray, graph.TOPICS["markers"], OUTPUT_QOS)
        self.built = 0

    @property
    def subscribed(self) -> bool:
        return self.pub.get_subscription_count() > 0

    def due(self, now: float) -> bool:
        """Markers would go out at ``now`` (monotonic seconds): subscribed, ``PERIOD`` after the last."""
        return now - self._sent >= PERIOD and self.subscribed

    def _marker(self, ns: str, mid: int, mtype: int, frame: str, stamp: int, rgba, scale=(1.0, 1.0, 1.0)):
        """The namespace's marker (made once, then updated: stamp, colour, scale, action ADD)."""
        m = self._templates.get((ns, mid))
        if m is None:
            m = self._templates[(ns, mid)] = self.Marker(ns=ns, id=mid, type=mtype)
            m.header.frame_id = frame
            m.pose.orientation.w = 1.0
            self._time = msgs.field_class(type(m.header), "stamp")
        m.action = self.Marker.ADD
        m.header.stamp = msgs.ns_to_stamp(stamp, self._time)
        m.scale.x, m.scale.y, m.scale.z = (float(s) for s in scale)
        m.color.r, m.color.g, m.color.b, m.color.a = (float(c) for c in rgba)
        return m

    def _points(self, pts) -> list:
        return [self.Point(x=float(p[0]), y=float(p[1]), z=float(p[2])) for p in pts]

    def publish(self, r, contacts: list, K=None, now: float = 0.0) -> bool:
        """Markers of a :class:`~hp_ros.core.ekf.FrameResult` with its ``contacts`` (a list of
        :class:`~hp_ros.core.contact_map.Contact`); ``K`` ``(3, 3)`` for the observed fingertip rays,
        ``now`` monotonic seconds (mesh re-send). False when nobody subscribes or there is no pose."""
        if r.T_cam_obj is None or not self.due(now):
            return False
        self._sent = now
        M, cam, out = self.Marker, self.camera_frame, []
        if r.state != self._mesh_state or now - self._mesh_sent >= MESH_PERIOD:
            mesh = self._marker("object", 0, M.TRIANGLE_LIST, self.object_frame, r.stamp, STATE_COLORS[r.state])
            mesh.frame_locked, mesh.points = True, self._mesh_points
            out.append(mesh)
            self._mesh_state, self._mesh_sent = r.state, now
        out.append(self._ellipsoid(r))
        if contacts:
            pen = [c.state == PENETRATING for c in contacts]
            pts = self._marker("contacts", 0, M.SPHERE_LIST, cam, r.stamp, (1.0, 1.0, 0.0, 1.0), (0.004,) * 3)
            pts.points = self._points([c.point_cam for c in contacts])
            pts.colors = [self._colors[bool(p)] for p in pen]
            nrm = self._marker("normals", 0, M.LINE_LIST, cam, r.stamp, (1.0, 1.0, 0.0, 1.0), (0.001, 0, 0))
            nrm.points = self._points([p for c in contacts for p in (c.point_cam, c.point_cam + 0.01 * c.normal_cam)])
            out += [pts, nrm]
        else:
            out += [self._delete("contacts", r.stamp), self._delete("normals", r.stamp)]
        out += self._fingertips(r, K)
        self.pub.publish(self.MarkerArray(markers=out))
        self.built += 1
        return True

    def _delete(self, ns: str, stamp: int):
        m = self.Marker(ns=ns, id=0, action=self.Marker.DELETE)
        m.header = msgs.make_header(type(m.header), stamp, self.camera_frame)
        return m

    def _ellipsoid(self, r):
        """95 % ellipsoid of the object position (camera frame)."""
        P = np.asarray(r.covariance, dtype=np.float64)[:3, :3]
        w, V = np.linalg.eigh((P + P.T) / 2)
        if np.linalg.det(V) < 0:
            V[:, 0] = -V[:, 0]
        size = 2.0 * ELLIPSOID_K * np.sqrt(np.clip(w, 1e-12, None))
        m = self._marker("covariance", 0, self.Marker.SPHERE, self.camera_frame, r.stamp, (0.2, 0.4, 1.0, 0.35),
                         np.maximum(size, 1e-4))
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = V, r.T_cam_obj[:3, 3]
        m.pose = msgs.matrix_to_pose(T, type(m.pose))
        return m

    def _fingertips(self, r, K) -> list:
        if r.q is None or r.T_cam_hand is None:
            return []
        T_links = self.kin.forward_kinematics(self.kin.as_q(r.q))
        tips = self.kin.fingertip_points(T_links, self.tip_offset) @ r.T_cam_hand[:3, :3].T + r.T_cam_hand[:3, 3]
        fk = self._marker("fingertips_fk", 0, self.Marker.SPHERE_LIST, self.camera_frame, r.stamp,
                          (0.0, 0.8, 1.0, 1.0), (0.008,) * 3)
        fk.points = self._points(tips)
        rays = self._marker("fingertips_observed", 0, self.Marker.LINE_LIST, self.camera_frame, r.stamp,
                            (1.0, 0.0, 1.0, 1.0), (0.0015, 0, 0))
        rays.points = []
        obs = r.observations.get("fingertips")
        if obs is not None and K is not None:
            uv, _ = obs.pixels_for(list(self.kin.hand.fingertip_links), 0.0)
            Kinv = np.linalg.inv(np.asarray(K, dtype=np.float64))
            for (u, v), tip in zip(uv, tips):
                if np.all(np.isfinite((u, v))):  # from the camera origin to 1.3 x the FK tip's depth
                    ray = Kinv @ np.array([u, v, 1.0])
                    rays.points += self._points([np.zeros(3), ray * 1.3 * max(tip[2], 0.05)])
        return [fk, rays] if rays.points else [fk, self._delete("fingertips_observed", r.stamp)]
