"""Metrics checked against hand-computed cases and independent computations."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from hp_ros.core import metrics as mt


def _pose(rotvec, t):
    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    T[:3, 3] = t
    return T


@pytest.fixture
def points():
    return np.random.default_rng(0).uniform(-0.05, 0.05, size=(500, 3))


def test_identity_gives_zero(points):
    T = np.stack([_pose([0.1, 0.2, 0.3], [0, 0, 0.5]), _pose([1, 0, 0], [0.1, 0, 0.4])])
    assert np.all(mt.add(T, T, points) == 0)
    assert np.all(mt.add_s(T, T, points) == 0)
    np.testing.assert_allclose(mt.rotation_error_deg(T, T), 0, atol=1e-6)
    assert np.all(mt.translation_error(T, T) == 0)
    np.testing.assert_allclose(mt.projection_error_2d(T, T, points, np.diag([600, 600, 1.0])), 0)
    assert mt.auc(np.zeros(4)) == 1.0


def test_translation_offset_is_exact_add(points):
    T = _pose([0.3, -0.2, 0.1], [0.02, 0.01, 0.6])
    off = np.array([0.01, -0.02, 0.02])  # |off| = 0.03
    T2 = T.copy()
    T2[:3, 3] += off
    np.testing.assert_allclose(mt.add(T, T2, points), [0.03], rtol=1e-12)
    np.testing.assert_allclose(mt.translation_error(T, T2), [0.03], rtol=1e-12)
    np.testing.assert_allclose(mt.rotation_error_deg(T, T2), [0.0], atol=1e-6)
    # torch input, batch of one pose, same answer
    np.testing.assert_allclose(mt.add(torch.tensor(T), torch.tensor(T2[None]), torch.tensor(points)), [0.03])


def test_adds_not_above_add_and_brute_force(points):
    rng = np.random.default_rng(1)
    Tg = np.stack([_pose(rng.normal(size=3), rng.normal(size=3) * 0.1) for _ in range(5)])
    Te = np.stack([T @ _pose(rng.normal(size=3) * 0.3, rng.normal(size=3) * 0.02) for T in Tg])
    a, s = mt.add(Tg, Te, points), mt.add_s(Tg, Te, points)
    assert np.all(s <= a + 1e-12) and np.all(s < a)
    pts = points[:100]
    for k in range(5):  # brute-force nearest neighbours
        pg = pts @ Tg[k, :3, :3].T + Tg[k, :3, 3]
        pe = pts @ Te[k, :3, :3].T + Te[k, :3, 3]
        d = np.linalg.norm(pg[:, None] - pe[None], axis=-1).min(1).mean()
        assert mt.add_s(Tg[k], Te[k], pts)[0] == pytest.approx(d, rel=1e-12)


def test_adds_zero_for_symmetry():
    # points on a circle around z: rotating by one sample step about z is invisible to ADD-S
    ang = np.linspace(0, 2 * np.pi, 36, endpoint=False)
    pts = np.stack([0.05 * np.cos(ang), 0.05 * np.sin(ang), np.zeros_like(ang)], -1)
    Tg = _pose([0, 0, 0], [0, 0, 0.5])
    Te = _pose([0, 0, 2 * np.pi / 36], [0, 0, 0.5])
    assert mt.add_s(Tg, Te, pts)[0] == pytest.approx(0, abs=1e-12)
    assert mt.add(Tg, Te, pts)[0] == pytest.approx(2 * 0.05 * np.sin(np.pi / 36), rel=1e-9)


def test_rotation_error_matches_scipy():
    R1 = Rotation.random(20, random_state=3)
    R2 = Rotation.random(20, random_state=4)
    expected = np.degrees((R1.inv() * R2).magnitude())
    np.testing.assert_allclose(mt.rotation_error_deg(R1.as_matrix(), R2.as_matrix()), expected, atol=1e-9)
    small = _pose([1e-7, 0, 0], [0, 0, 0])
    assert mt.rotation_error_deg(np.eye(4), small)[0] == pytest.approx(np.degrees(1e-7), rel=1e-6)


def test_auc_equals_numerical_integration():
    e = np.array([0.0, 0.004, 0.02, 0.05, 0.099, 0.1, 0.2, np.inf])
    tau = np.linspace(0, 0.1, 200_001)
    acc = (e[None, :] < tau[:, None]).mean(1)
    direct = np.trapezoid(acc, tau) / 0.1
    assert mt.auc(e, 0.1) == pytest.approx(direct, abs=1e-5)
    # hand-computed: clip(1 - e/0.1) = 1, .96, .8, .5, .01, 0, 0, 0 -> mean 3.27/8
    assert mt.auc(e, 0.1) == pytest.approx(3.27 / 8, rel=1e-12)
    tau2, acc2 = mt.accuracy_curve(e, 0.1, n=11)
    assert tau2[-1] == pytest.approx(0.1) and acc2[0] == 0 and acc2[-1] == pytest.approx(5 / 8)
    with pytest.raises(ValueError, match="non-negative"):
        mt.auc([np.nan])


def test_mask_iou_cases():
    a = np.zeros((2, 4, 4), bool)
    b = np.zeros((2, 4, 4), bool)
    a[0, :2] = True            # 8 px
    b[0, 1:3] = True           # 8 px, overlap 4 -> 4/12
    np.testing.assert_allclose(mt.mask_iou(a, b), [1 / 3, 1.0])  # frame 1: both empty -> 1
    assert mt.mask_iou(a[0], a[0])[0] == 1.0
    assert mt.mask_iou(a[0], ~a[0])[0] == 0.0
    with pytest.raises(ValueError, match="shapes"):
        mt.mask_iou(a, b[0])


def test_projection_error_hand_computed():
    K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    pts = np.zeros((1, 3))
    Tg = _pose([0, 0, 0], [0, 0, 1.0])
    Te = _pose([0, 0, 0], [0.01, 0, 1.0])  # 1 cm sideways at 1 m -> 5 px
    assert mt.projection_error_2d(Tg, Te, pts, K)[0] == pytest.approx(5.0)
    assert mt.projection_error_2d(Tg, _pose([0, 0, 0], [0, 0, -1.0]), pts, K)[0] == np.inf


def test_chamfer():
    a = np.array([[0.0, 0, 0], [1, 0, 0]])
    b = np.array([[0.0, 0, 0.5]])
    # a->b: 0.5, sqrt(1.25); b->a: 0.5
    assert mt.chamfer_distance(a, b) == pytest.approx(0.5 * ((0.5 + np.sqrt(1.25)) / 2 + 0.5))


def test_match_stamps():
    idx = mt.match_stamps([100, 200, 300, 400], [305, 90, 199], tolerance_ns=10)
    np.testing.assert_array_equal(idx, [1, 2, 0, -1])


def test_evaluate_sequence(points):
    gt, est = {}, {}
    for k in range(10):
        t = 1_000_000_000 + k * 33_333_333
        gt[t] = _pose([0.1 * k, 0, 0], [0, 0, 0.5])
        if k < 8:  # two frames without estimate
            T = gt[t].copy()
            T[:3, 3] += [0.0, 0.0, 0.02]  # 2 cm
            est[t + 1_000_000] = T  # 1 ms late, inside the tolerance
    r = mt.evaluate_sequence(gt, est, points, symmetric=False)
    assert (r["n_frames"], r["n_matched"], r["frames"]) == (10, 8, 10)
    assert r["add_mean_cm"] == pytest.approx(2.0)
    assert r["trans_err_mean_cm"] == pytest.approx(2.0)
    assert r["rot_err_mean_deg"] == pytest.approx(0.0, abs=1e-6)
    assert r["adds_mean_cm"] <= r["add_mean_cm"] + 1e-9
    assert r["add_auc"] == pytest.approx(8 * 0.8 / 10)  # unmatched frames count as failures
    assert r["primary"] == "ADD" and r["primary_auc"] == r["add_auc"]
    assert [f["matched"] for f in r["per_frame"]] == [True] * 8 + [False] * 2
    assert r["per_frame"][-1]["add_cm"] is None
    r2 = mt.evaluate_sequence(gt, est, points, tolerance_ns=500_000)
    assert r2["n_matched"] == 0 and np.isnan(r2["add_mean_cm"]) and r2["add_auc"] == 0.0


def test_symmetric_rotation_error_ignores_the_spin(points):
    """A can's spin about its axis is not an error; a tilt of the axis is, by its own angle (the
    geodesic angle counts both and stays beside it)."""
    axis = np.array([0.0, 0.0, 2.0])  # not unit: normalised inside
    T_gt = _pose([0.3, -0.2, 0.1], [0, 0, 0.5])
    spin = T_gt @ _pose([0, 0, np.radians(40)], [0, 0, 0])            # 40 deg about the object's z
    tilt = T_gt @ _pose([np.radians(7), 0, 0], [0, 0, 0])             # 7 deg about the object's x
    both = spin @ _pose([0, np.radians(-5), 0], [0, 0, 0])            # spin, then 5 deg tilt
    est = np.stack([spin, tilt, both])
    np.testing.assert_allclose(mt.axis_error_deg(np.stack([T_gt] * 3), est, axis), [0.0, 7.0, 5.0], atol=1e-6)
    # the axis flipped end for end is the same axis (a can upside down looks the same)
    flip = T_gt @ _pose([np.pi, 0, 0], [0, 0, 0])
    assert mt.axis_error_deg(T_gt, flip, axis)[0] == pytest.approx(0.0, abs=1e-6)
    gt = {1_000 * (k + 1): T_gt for k in range(3)}
    r = mt.evaluate_sequence(gt, {s: T for s, T in zip(gt, est)}, points, symmetric=True, symmetry_axis=axis)
    assert r["rot_err_mean_deg"] == pytest.approx(4.0, abs=1e-6)
    assert r["rot_err_geodesic_mean_deg"] == pytest.approx(np.mean(mt.rotation_error_deg(np.stack([T_gt] * 3), est)))
    assert r["rot_err_geodesic_mean_deg"] > 15.0
    assert [f["rot_err_deg"] for f in r["per_frame"]] == pytest.approx([0.0, 7.0, 5.0], abs=1e-6)


def test_eval_tool_report(tmp_path, points):
    """`hp-ros eval` end to end: GT bag + CSV estimates -> metrics.json, CSV, plots."""
    import argparse
    import json

    from hp_ros.io import bag as B
    from hp_ros.io import msgs as M
    from hp_ros.tools import evaluate

    rows = ["stamp_ns,x,y,z,qx,qy,qz,qw"]
    with B.BagWriter(tmp_path / "gt") as bag:
        PS = bag.msg_class("geometry_msgs/msg/PoseStamped")
        for k in range(6):
            t = 10**18 + k * 33_333_333
            T = _pose([0, 0, 0], [0, 0, 0.5 + 0.01 * k])
            bag.write(B.TOPIC_GT_OBJECT_POSE, "geometry_msgs/msg/PoseStamped", M.make_pose_stamped(T, t, "c", PS), t)
            if k < 5:
                rows.append(f"{t},0.03,0,{0.5 + 0.01 * k},0,0,0,1")  # 3 cm off in x
    (tmp_path / "est.csv").write_text("\n".join(rows) + "\n")
    np.save(tmp_path / "pts.npy", points)
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    args = parser.parse_args([str(tmp_path / "gt"), "--out", str(tmp_path / "rep"),
                              "--est", str(tmp_path / "est.csv"), "--object", str(tmp_path / "pts.npy")])
    assert evaluate.run(args) == 0
    m = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert (m["n_frames"], m["n_matched"]) == (6, 5)
    assert m["add_mean_cm"] == pytest.approx(3.0) and m["trans_err_mean_cm"] == pytest.approx(3.0)
    assert m["add_auc"] == pytest.approx(5 * 0.7 / 6)
    for key in ("adds_mean_cm", "adds_max_cm", "adds_auc", "rot_err_mean_deg"):
        assert key in m
    # baselines from the first estimate: frozen misses the object's 4 cm of travel; no joint states in
    # this bag, so no hand_only
    assert set(m["baselines"]) == {"frozen"}
    assert m["baselines"]["frozen"]["add_mean_cm"] == pytest.approx(np.mean(np.hypot(3.0, np.arange(5))), abs=1e-3)
    assert 0 < m["adds_ratio_to_baseline"] < 1 and "rot_ratio_to_baseline" in m
    for name in ("per_frame.csv", "error_over_time.png", "accuracy_curve.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 0
    bad = parser.parse_args([str(tmp_path / "gt"), "--out", str(tmp_path / "r2"), "--est",
                             str(tmp_path / "est.csv"), "--object", str(tmp_path / "pts.npy"), "--gt-topic", "/x"])
    with pytest.raises(ValueError, match="not in"):
        evaluate.run(bad)


def test_time_to_first_pose_counts_on_the_streams_own_clock():
    """From the sequence's first frame to the first pose: the first posed stamp's distance in bag
    time (scaled by the replay rate) plus that pose's own latency - not from whichever image the
    listener saw first (its subscription can match a second late, which gave negative times)."""
    from hp_ros.tools.demo import time_to_first_pose

    S = 1_000_000_000
    first_frame = 100 * S
    poses = {first_frame + S: 50.08, first_frame + 2 * S: 51.05}   # stamp -> publish time [s]
    images = {first_frame + S: 50.0, first_frame + 2 * S: 51.0}   # the listener missed the first second
    assert time_to_first_pose(poses, images, first_frame) == pytest.approx(1.08)
    assert time_to_first_pose(poses, images, first_frame, rate=0.5) == pytest.approx(2.08)
    assert time_to_first_pose(poses, {}, first_frame) == pytest.approx(1.0)  # latency unknown: bag time only
    assert np.isnan(time_to_first_pose({}, images, first_frame))
