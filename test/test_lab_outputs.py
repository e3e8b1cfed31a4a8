"""What a lab subscribes to (issue 24), without a ROS graph: the confidence score, the
Detection3DArray built from a frame result, the contact map against the generator's contacts, and
the outputs doing no work while nobody subscribes (counted)."""
from __future__ import annotations

import math
import types

import numpy as np
import pytest

from hp_ros.core.ekf import TrackState, UpdateResult
from hp_ros.core.ekf.confidence import TrackConfidence, displacement_probability

S = 1_000_000_000


def test_displacement_probability_is_the_chance_that_add_stays_below_the_tolerance():
    from hp_ros.core.ekf.confidence import add_form

    rng = np.random.default_rng(0)
    pts = rng.uniform(-0.05, 0.05, size=(300, 3)) + [0.0, 0.0, 0.02]
    R = np.eye(3)
    D = add_form(pts, R)
    # the form is the mean squared displacement of the points under a pose error (apply_delta)
    xi = np.r_[0.003, -0.001, 0.002, 0.02, -0.05, 0.03]
    from hp_ros.core.ekf import apply_delta_np

    T = apply_delta_np(np.eye(4), xi)
    exact = np.mean(np.sum((pts @ T[:3, :3].T + T[:3, 3] - pts) ** 2, axis=1))
    assert xi @ D @ xi == pytest.approx(exact, rel=0.05)
    # against sampling: P(mean square displacement < tol^2) for a pose covariance
    A = rng.normal(size=(6, 6)) * np.r_[2e-3, 2e-3, 2e-3, 0.05, 0.05, 0.05][:, None]
    P = A @ A.T / 6
    draws = rng.multivariate_normal(np.zeros(6), P, size=20000)
    mc = np.mean(np.einsum("ni,ij,nj->n", draws, D, draws) < 0.005 ** 2)
    assert displacement_probability(P, D, 0.005) == pytest.approx(mc, abs=0.03)
    # smaller covariance, higher probability; degenerate inputs
    p = [displacement_probability(P * f, D, 0.005) for f in (0.01, 1.0, 100.0)]
    assert 0.0 <= p[2] < p[1] < p[0] <= 1.0
    assert displacement_probability(np.full((6, 6), np.nan), D, 0.01) == 0.0
    # a symmetry axis removes the spin about it
    Dz = add_form(pts, R, axis=np.array([0.0, 0.0, 1.0]))
    spin = np.r_[0, 0, 0, 0, 0, 0.3]
    assert spin @ Dz @ spin == pytest.approx(0.0, abs=1e-12) and spin @ D @ spin > 1e-4


def test_score_is_zero_when_lost_lower_when_predicted_and_lower_after_large_innovations():
    P = np.diag([1e-3 ** 2] * 3 + [0.01 ** 2] * 3)
    pts = np.random.default_rng(1).uniform(-0.05, 0.05, size=(200, 3))
    T = np.eye(4)
    c = TrackConfidence(pts)
    c.mark(0)
    c.observe(1 * S, {"depth_pose": UpdateResult("depth_pose", True, 6.0, 22.0, 6)})
    tracked = c.score(1 * S, TrackState.TRACKING, T, P)
    predicted = c.score(1 * S + S // 30, TrackState.TRACKING, T, P)   # one frame later, nothing applied
    assert 0.9 < tracked <= 1.0 and predicted < tracked
    assert c.score(1 * S, TrackState.LOST, T, P) == 0.0 and c.score(1 * S, TrackState.INITIALIZING, T, P) == 0.0
    # a run of gated fits (NIS far above the gate) says the covariance is too small: the score drops
    P_wide = np.diag([3e-3 ** 2] * 3 + [0.05 ** 2] * 3)
    before = c.score(1 * S, TrackState.TRACKING, T, P_wide)
    for k in range(10):
        c.observe(1 * S, {"depth_pose": UpdateResult("depth_pose", False, 400.0, 22.0, 6, "gated")})
    assert c.nis_avg > 2.0 and c.score(1 * S, TrackState.TRACKING, T, P_wide) < before
    c.reset()
    assert c.score(1 * S, TrackState.TRACKING, T, P) == 0.0  # no observation since the reset


def _result(T, cov, stamp=1_700_000_000_123_456_789, score=0.8, state=TrackState.TRACKING, q=None, T_ch=None):
    from hp_ros.core.ekf import FrameResult

    return FrameResult(stamp, state, False, T, cov, score=score, q=q, T_cam_hand=T_ch)


def test_detection_array_carries_the_pose_stamp_covariance_score_and_box():
    vm = pytest.importorskip("vision_msgs.msg")
    from hp_ros.io import msgs
    from hp_ros.nodes.detections import make_detection_array

    rng = np.random.default_rng(0)
    from hp_ros.core.ekf import apply_delta_np

    T = apply_delta_np(np.eye(4), np.r_[0.01, -0.02, 0.45, 0.3, -0.2, 1.0])
    A = rng.normal(size=(6, 6)) * 1e-3
    cov = A @ A.T
    center, size = np.array([0.0, 0.01, -0.005]), np.array([0.06, 0.16, 0.21])
    msg = make_detection_array(vm, T, cov, 1_700_000_000_123_456_789, "camera_color_optical_frame", "object",
                               "cracker_box", 0.73, center, size)
    assert msgs.header_stamp_ns(msg) == 1_700_000_000_123_456_789
    assert msg.header.frame_id == "camera_color_optical_frame" and len(msg.detections) == 1
    det = msg.detections[0]
    assert det.id == "object" and msgs.header_stamp_ns(det) == msgs.header_stamp_ns(msg)
    (hyp,) = det.results
    assert hyp.hypothesis.class_id == "cracker_box" and hyp.hypothesis.score == pytest.approx(0.73)
    np.testing.assert_allclose(msgs.pose_to_matrix(hyp.pose), T, atol=1e-9)
    np.testing.assert_allclose(np.asarray(hyp.pose.covariance).reshape(6, 6), cov, atol=1e-15)
    T_box = msgs.pose_to_matrix(det.bbox.center)
    np.testing.assert_allclose(T_box[:3, 3], T[:3, :3] @ center + T[:3, 3], atol=1e-9)
    np.testing.assert_allclose(T_box[:3, :3], T[:3, :3], atol=1e-9)
    np.testing.assert_allclose([det.bbox.size.x, det.bbox.size.y, det.bbox.size.z], size)


@pytest.fixture(scope="module")
def scene():
    """A short synthetic sequence, the hand, the box and its SDF."""
    from hp_ros.core.hand import HandModel
    from hp_ros.core.objects import ObjectModel
    from hp_ros.core.sdf import MeshSDF
    from hp_ros.core.synth import SynthConfig, generate_sequence

    seq = generate_sequence(SynthConfig(object="builtin:cracker_box", duration_s=2.0, seed=1, render=False))
    obj = ObjectModel.builtin("cracker_box")
    return types.SimpleNamespace(seq=seq, hand=HandModel.default(), obj=obj, sdf=MeshSDF(obj.vertices, obj.faces))


def test_contact_map_finds_the_generators_contacts_and_moves_with_the_pose(scene):
    from hp_ros.core.contact_map import ContactMapper, ground_truth_contacts, match_contacts
    from hp_ros.core.ekf import apply_delta_np

    seq = scene.seq
    mapper = ContactMapper.for_object(scene.hand, scene.obj, scene.sdf)
    k = seq.num_frames - 1
    assert seq.in_contact[k]
    gt = ground_truth_contacts(mapper, seq, k, seq.config.contact_threshold)
    assert len(gt) >= 2 and {c.finger for c in gt} >= {0}  # the thumb and at least one finger
    for c in gt:   # on the surface, unit outward normal, within the generator's threshold
        d, _ = scene.sdf.query(__import__("torch").as_tensor(c.point_obj[None, None], dtype=__import__("torch").float32))
        assert abs(float(d)) < 2e-4 and np.linalg.norm(c.normal_obj) == pytest.approx(1.0)
        assert c.distance < seq.config.contact_threshold
    # at the true pose with a 2 mm threshold the map holds the same links, same points
    cov = np.diag([1e-6] * 3 + [1e-4] * 3)
    est = mapper.compute(seq.q_frames_true[k], seq.T_cam_hand_true, seq.T_cam_obj[k], cov)
    tp, fp, fn, err = match_contacts(est, gt)
    assert fn == 0 and tp == len(gt) and max(err) < 3e-3
    for c in est:
        np.testing.assert_allclose(c.point_cam, seq.T_cam_obj[k][:3, :3] @ c.point_obj + seq.T_cam_obj[k][:3, 3])
        # the point covariance is the pose covariance pushed through p = R p_obj + t (apply_delta)
        J = np.zeros((3, 6))
        for i in range(6):
            xi = np.zeros(6)
            xi[i] = 1e-6
            T2 = apply_delta_np(seq.T_cam_obj[k], xi)
            J[:, i] = (T2[:3, :3] @ c.point_obj + T2[:3, 3] - c.point_cam) / 1e-6
        np.testing.assert_allclose(c.point_cov_cam, J @ cov @ J.T, rtol=1e-4, atol=1e-12)
    # the object 10 cm farther from the camera: none of the grasp's contacts is left
    T_far = seq.T_cam_obj[k].copy()
    T_far[2, 3] += 0.1
    far = mapper.compute(seq.q_frames_true[k], seq.T_cam_hand_true, T_far)
    assert not {c.link for c in far} & {c.link for c in gt}


class _Pub:
    def __init__(self, subscribers):
        self.subscribers, self.sent = subscribers, []

    def get_subscription_count(self):
        return self.subscribers

    def publish(self, msg):
        self.sent.append(msg)


class _Node:
    """Enough of an rclpy node for the output classes: publishers that count and record."""

    def __init__(self, subscribers: int):
        self.subscribers, self.pubs = subscribers, {}

    def create_publisher(self, msg_type, topic, qos):
        # vision_info is latched (sent once at start, whatever the subscribers)
        self.pubs[topic] = _Pub(self.subscribers)
        return self.pubs[topic]

    def get_logger(self):
        return types.SimpleNamespace(warning=lambda text: None)

    def get_clock(self):
        from builtin_interfaces.msg import Time

        return types.SimpleNamespace(now=lambda: types.SimpleNamespace(to_msg=lambda: Time(sec=1)))


@pytest.mark.parametrize("subscribers", [0, 1])
def test_outputs_build_nothing_while_nobody_subscribes(scene, subscribers, monkeypatch):
    pytest.importorskip("vision_msgs.msg")
    pytest.importorskip("visualization_msgs.msg")
    from hp_ros import graph
    from hp_ros.core.contact_map import ContactMapper
    from hp_ros.nodes.lab_outputs import LabOutputs
    from hp_ros.nodes.tracking_params import OWN_PARAMS
    from hp_ros.nodes.params import COMMON_PARAMS

    p = {k: v.default for k, v in {**COMMON_PARAMS, **OWN_PARAMS}.items()}
    node = _Node(subscribers)
    lab = LabOutputs(node, scene.hand, scene.obj, scene.sdf, p)
    calls = []
    original = ContactMapper.compute
    monkeypatch.setattr(ContactMapper, "compute", lambda self, *a, **kw: calls.append(1) or original(self, *a, **kw))
    from hp_ros.nodes import lab_outputs

    clock = [0.0]
    monkeypatch.setattr(lab_outputs, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    seq, k = scene.seq, scene.seq.num_frames - 1
    cov = np.diag([1e-6] * 3 + [1e-4] * 3)
    for i in range(7):  # 25 frames per second: markers at most every 0.1 s -> at frames 0, 3, 6
        clock[0] = 0.04 * i
        lab.publish(_result(seq.T_cam_obj[k], cov, stamp=int(seq.frame_stamps_ns[k]) + i, q=seq.q_frames_true[k],
                            T_ch=seq.T_cam_hand_true), posed=True, K=seq.K)
    sent = {t: len(pub.sent) for t, pub in node.pubs.items()}
    assert sent[graph.TOPICS["vision_info"]] == 1
    if subscribers == 0:
        assert lab.built == {"detections": 0, "contacts": 0, "markers": 0} and not calls
        assert sent[graph.TOPICS["detections"]] == sent[graph.TOPICS["contacts"]] == sent[graph.TOPICS["markers"]] == 0
    else:
        assert lab.built == {"detections": 7, "contacts": 7, "markers": 3}
        assert len(calls) == 7  # one contact map per frame, shared by /hp_ros/contacts and the markers
        cm = node.pubs[graph.TOPICS["contacts"]].sent[-1]
        assert len(cm.contacts) >= 2 and cm.header.frame_id == p["camera_frame"]
        markers = node.pubs[graph.TOPICS["markers"]].sent
        ns = lambda arr: {m.ns for m in arr.markers}  # noqa: E731
        assert {"object", "covariance", "contacts", "normals", "fingertips_fk"} <= ns(markers[0])
        assert "object" not in ns(markers[1])  # the mesh is not rebuilt per frame


def test_launch_argument_rviz_starts_rviz_with_the_shipped_config(monkeypatch):
    from pathlib import Path

    import yaml
    from test_dds_profiles import _run_launch_file

    from hp_ros import graph

    nodes = _run_launch_file(monkeypatch, {"rviz": "true"})
    rviz = [n for n in nodes if n.get("executable") == "rviz2"]
    assert len(rviz) == 1 and rviz[0]["arguments"][0] == "-d"
    cfg = Path(rviz[0]["arguments"][1])
    assert cfg.name == "hp_ros.rviz" and cfg.is_file()
    displays = yaml.safe_load(cfg.read_text())["Visualization Manager"]["Displays"]
    topics = {d.get("Topic", {}).get("Value") for d in displays}
    assert {graph.TOPICS["markers"], graph.TOPICS["object_pose"]} <= topics
    assert not [n for n in _run_launch_file(monkeypatch, {}) if n.get("executable") == "rviz2"]


def test_overlay_pictures_draw_the_estimate_and_the_ground_truth(tmp_path):
    import cv2

    from hp_ros.core import synth
    from hp_ros.core.ekf import apply_delta_np
    from hp_ros.core.objects import ObjectModel
    from hp_ros.tools.overlay import silhouette, write_overlays

    seq = synth.generate_sequence(synth.SynthConfig(duration_s=0.5, seed=0))
    obj = ObjectModel.builtin("cracker_box")
    v, f = obj.vertices.double().numpy(), obj.faces.numpy()
    # the silhouette at the ground truth covers the generator's visible object mask (but its edge pixels)
    m = silhouette(v, f, seq.T_cam_obj[3], seq.K, seq.rgb.shape[1:3])
    assert (m & seq.object_mask[3]).sum() >= 0.95 * seq.object_mask[3].sum() and m.sum() < 1.5 * seq.object_mask[3].sum()
    est = {int(s): apply_delta_np(T, np.r_[0.01, 0.0, 0.0, 0.0, 0.0, 0.0]) for s, T in zip(seq.frame_stamps_ns, seq.T_cam_obj)}
    files = write_overlays(tmp_path / "overlays", lambda k: seq.rgb[k], seq.K, obj, seq.frame_stamps_ns,
                           seq.T_cam_obj, est, 6)
    frames = [p for p in files if p.parent.name == "overlays"]
    assert len(frames) >= 4 and (tmp_path / "overlays.png").is_file()
    img = cv2.cvtColor(cv2.imread(str(frames[0])), cv2.COLOR_BGR2RGB)
    # both outlines are drawn: pure red (ground truth) and green (estimate) pixels
    assert np.sum(np.all(img == (255, 40, 40), axis=-1)) > 100 and np.sum(np.all(img == (40, 220, 60), axis=-1)) > 100


def test_marker_rays_of_the_observed_fingertips_pass_through_the_fk_tips(scene):
    """Observed fingertip pixels become rays from the camera; at the true joints and calibration
    the FK fingertips lie on them."""
    from hp_ros import graph
    from hp_ros.core.observation import FingertipObservation
    from hp_ros.nodes.lab_outputs import LabOutputs
    from hp_ros.nodes.params import COMMON_PARAMS
    from hp_ros.nodes.tracking_params import OWN_PARAMS

    pytest.importorskip("visualization_msgs.msg")
    seq, k = scene.seq, 5
    p = {name: v.default for name, v in {**COMMON_PARAMS, **OWN_PARAMS}.items()}
    node = _Node(1)
    lab = LabOutputs(node, scene.hand, scene.obj, scene.sdf, p)
    r = _result(seq.T_cam_obj[k], np.diag([1e-6] * 3 + [1e-4] * 3), q=seq.q_frames_true[k], T_ch=seq.T_cam_hand_true)
    r.observations = {"fingertips": FingertipObservation(tuple(scene.hand.fingertip_links), seq.fingertips_px_true[k],
                                                         np.ones(4))}
    lab.publish(r, posed=True, K=seq.K)
    markers = {m.ns: m for m in node.pubs[graph.TOPICS["markers"]].sent[-1].markers}
    fk, rays = markers["fingertips_fk"], markers["fingertips_observed"]
    assert len(fk.points) == 4 and len(rays.points) == 8
    for i, tip in enumerate(fk.points):
        end = np.array([rays.points[2 * i + 1].x, rays.points[2 * i + 1].y, rays.points[2 * i + 1].z])
        t = np.array([tip.x, tip.y, tip.z])
        assert np.linalg.norm(np.cross(end / np.linalg.norm(end), t)) < 1e-6 and np.linalg.norm(end) > np.linalg.norm(t)
    # the ellipsoid: centred on the object, 95 % radii of the position covariance (1 mm sigma)
    ell = markers["covariance"]
    assert ell.pose.position.z == pytest.approx(seq.T_cam_obj[k][2, 3])
    assert ell.scale.x == pytest.approx(2 * math.sqrt(7.815) * 1e-3, rel=1e-3)
