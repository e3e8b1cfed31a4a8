"""Tracker with a rotation-bearing depth observation and a penetration constraint (issue 15):
the projection out of penetration against an independent SDF evaluation, the pose update's
Jacobian against finite differences, a confidence-0 fit is ignored, and the model backend's ICP
covariance against the scatter of fits over depth-noise draws."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hp_ros.core import se3
from hp_ros.core.ekf import EKFConfig, EKFTracker, apply_delta_np, camera_error_map, pose_error
from hp_ros.core.hand import HandModel
from hp_ros.core.objects import ObjectModel
from hp_ros.core.sdf import MeshSDF, signed_distance_world

# camera, calibration and the hand / box fixtures of the EKF tests (camera ~45 cm in front of the palm)
from test_ekf import K_CAM, T_CAM_HAND, box, hand  # noqa: E402,F401 - fixtures are used by name


def _tracker(hand, box, q=None, calib=True, pos_sigma=0.001, rot_sigma=0.005):
    """A tracker at a pose near the palm, as precise as after depth fits (``rot_sigma`` [rad] below
    ``projection_max_rot_sigma``: the projection needs it)."""
    ekf = EKFTracker(hand, box, K_CAM, T_CAM_HAND, EKFConfig(estimate_calibration=calib))
    T_co = T_CAM_HAND @ np.array([[0, 0, 1, 0.06], [0, 1, 0, 0.0], [-1, 0, 0, 0.07], [0, 0, 0, 1.0]])
    ekf.initialize(T_co, q=hand.zero_q()[0].numpy() if q is None else q, pos_sigma=pos_sigma, rot_sigma=rot_sigma)
    return ekf


def _true_min_sdf(hand, sdf, q, T_cam_hand, T_cam_obj) -> float:
    """Deepest hand point, computed independently of the filter: the torch hand model's surface
    samples (its own FK) in the camera, against the object's SDF at ``T_cam_obj``."""
    with torch.no_grad():
        pts = hand.surface_points(torch.as_tensor(q, dtype=hand.dtype)[None],
                                  torch.as_tensor(T_cam_hand, dtype=hand.dtype)[None])
        d, _ = signed_distance_world(sdf, pts.float(), torch.as_tensor(T_cam_obj, dtype=torch.float32)[None])
    return float(d.min())


def _place(ekf, hand, sdf, q, T_ho_clear, u, target):
    """``T_hand_obj`` moved from a collision-free pose along the unit direction ``u`` (hand frame)
    until the deepest hand point is at signed distance ``target`` (bisection)."""
    def min_sdf(s):
        T = T_ho_clear.copy()
        T[:3, 3] += s * u
        return _true_min_sdf(hand, sdf, q, ekf.T_ch, ekf.T_ch @ T), T

    lo, hi = 0.0, 0.1   # min_sdf(lo) > target > min_sdf(hi)
    assert min_sdf(lo)[0] > target > min_sdf(hi)[0]
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if min_sdf(mid)[0] > target else (lo, mid)
    d, T = min_sdf(hi)
    assert abs(d - target) < 2e-5
    return T


@pytest.fixture(scope="module")
def grasp(hand, box):
    """A joint vector with the fingers curled, the object's collision-free pose near the palm and
    the direction towards the fingers (hand frame)."""
    q = hand.clamp(torch.full((1, hand.num_joints), 0.6, dtype=hand.dtype))[0].numpy()
    ekf = _tracker(hand, box, q)
    sdf = ekf.sdf
    pts = ekf.hand_surface_points()
    u = pts.mean(0) - ekf.T_ho[:3, 3]
    u /= np.linalg.norm(u)
    T = ekf.T_ho.copy()
    for _ in range(40):  # back off until nothing touches (>= 3 mm clearance)
        if _true_min_sdf(hand, sdf, q, ekf.T_ch, ekf.T_ch @ T) > 0.003:
            break
        T[:3, 3] -= 0.005 * u
    return q, T, u


def test_projection_leaves_free_and_touching_poses_untouched(hand, box, grasp):
    q, T_clear, u = grasp
    ekf = _tracker(hand, box, q)
    for target in (0.002, -0.0003):   # 2 mm clear; touching, 0.3 mm inside (within the tolerance)
        T_ho = _place(ekf, hand, ekf.sdf, q, T_clear, u, target)
        ekf.T_ho = T_ho.copy()
        T_ch, P = ekf.T_ch.copy(), ekf.P.copy()
        res = ekf.project_out_of_penetration()
        assert not res.moved and res.iterations == 0
        np.testing.assert_array_equal(res.T_cam_obj, ekf.T_ch @ T_ho)
        np.testing.assert_array_equal(ekf.T_cam_obj_published, ekf.T_ch @ T_ho)
        np.testing.assert_array_equal(ekf.T_ho, T_ho)
        np.testing.assert_array_equal(ekf.T_ch, T_ch)
        np.testing.assert_array_equal(ekf.P, P)
        assert res.depth_before <= ekf.cfg.penetration_tolerance


@pytest.mark.parametrize("calib", [False, True])
def test_projection_removes_a_5mm_penetration(hand, box, grasp, calib):
    q, T_clear, u = grasp
    ekf = _tracker(hand, box, q, calib=calib)
    ekf.T_ho = _place(ekf, hand, ekf.sdf, q, T_clear, u, -0.005)
    assert _true_min_sdf(hand, ekf.sdf, q, ekf.T_ch, ekf.T_cam_obj) < -0.00498
    P, T_ho, T_ch = ekf.P.copy(), ekf.T_ho.copy(), ekf.T_ch.copy()
    res = ekf.project_out_of_penetration()
    assert res.moved and abs(res.depth_before - 0.005) < 1e-4
    # independent check (torch FK, the filter's calibration): within the tolerance, far inside the
    # contact threshold, and in contact still (not thrown away from the hand)
    d = _true_min_sdf(hand, ekf.sdf, q, ekf.T_ch, res.T_cam_obj)
    assert -ekf.cfg.penetration_tolerance - 1e-5 <= d < 0.001, d
    assert ekf.cfg.penetration_tolerance < ekf.cfg.contact_threshold
    assert res.shift < 0.01   # the smallest correction (P-metric), not a jump
    # an output step: the filter state and its covariance are kept; the published pose is the projection
    np.testing.assert_array_equal(ekf.P, P)
    np.testing.assert_array_equal(ekf.T_ho, T_ho)
    np.testing.assert_array_equal(ekf.T_ch, T_ch)
    np.testing.assert_array_equal(ekf.T_cam_obj_published, res.T_cam_obj)
    ekf.T_ho = apply_delta_np(T_ho, np.array([1e-4, 0, 0, 0, 0, 0]))   # the state moved: no stale output
    np.testing.assert_array_equal(ekf.T_cam_obj_published, ekf.T_cam_obj)
    # an orientation known only to 3 deg: the penetration is mostly that error, no projection
    loose = _tracker(hand, box, q, calib=calib, rot_sigma=0.05)
    loose.T_ho = T_ho.copy()
    res = loose.project_out_of_penetration()
    assert not res.moved
    np.testing.assert_array_equal(loose.T_cam_obj_published, loose.T_cam_obj)


def test_penetration_jacobian_matches_finite_differences(hand, box, grasp):
    q, T_clear, u = grasp
    ekf = _tracker(hand, box, q)
    T0 = _place(ekf, hand, ekf.sdf, q, T_clear, u, -0.003)
    ekf.T_ho = T0
    p = ekf.hand_surface_points()
    d, n = ekf.hand_signed_distance(p)
    sel = np.argsort(d)[:20]   # the deepest points
    Hs = ekf.penetration_jacobian(p[sel], n[sel])
    eps = 1e-4
    fd, kink = np.zeros((len(sel), ekf.n)), np.zeros(len(sel))
    for k in range(6):   # the other states (calibration, bias) do not move hand vs object: zero columns
        dx = np.zeros(6)
        dx[k] = eps
        dp = ekf.hand_signed_distance(p[sel], apply_delta_np(T0, dx))[0]
        dm = ekf.hand_signed_distance(p[sel], apply_delta_np(T0, -dx))[0]
        fd[:, k] = (dp - dm) / (2 * eps)
        # the SDF has a kink where the nearest face changes (inside a box: its medial planes)
        kink = np.maximum(kink, np.abs((dp - d[sel]) - (d[sel] - dm)) / eps)
    smooth = kink < 0.05
    assert smooth.sum() >= 5, kink
    np.testing.assert_allclose(Hs[smooth], fd[smooth], atol=2e-3)   # float32 SDF: ~1e-7 m / 1e-4
    assert np.abs(Hs[:, :6]).max() > 0.5 and np.all(Hs[:, 6:] == 0)


def test_pose_update_jacobian_matches_finite_differences(hand, box):
    rng = np.random.default_rng(5)
    ekf = _tracker(hand, box)
    ekf.T_ch = apply_delta_np(ekf.T_ch, rng.normal(size=6) * 0.01)
    # a measurement 0.3 rad away: the log map's Jacobian is far from the identity there
    xi = np.concatenate([rng.normal(size=3) * 0.01, 0.3 * np.array([0.6, -0.48, 0.64])])
    T_z = apply_delta_np(ekf.T_cam_obj, xi)
    r0, H = ekf.pose_model(T_z)
    np.testing.assert_allclose(r0, xi, atol=1e-12)
    n = ekf.n

    def resid(d):
        T_ho, T_ch = ekf.T_ho.copy(), ekf.T_ch.copy()
        ekf.T_ho, ekf.T_ch = apply_delta_np(T_ho, d[:6]), apply_delta_np(T_ch, d[6:12])
        r = pose_error(T_z, ekf.T_cam_obj)
        ekf.T_ho, ekf.T_ch = T_ho, T_ch
        return r

    eps = 1e-6
    fd = np.stack([(resid(e) - resid(-e)) / (2 * eps) for e in np.eye(n) * eps], 1)
    np.testing.assert_allclose(-fd, H, atol=1e-6)
    np.testing.assert_allclose(H[:, 12:], 0.0)                 # the centre bias does not enter
    # the plain camera error map (no log-map Jacobian) would be wrong here by far more than that
    assert np.abs(camera_error_map(ekf.T_ch, ekf.T_ho, True) - (-fd[:, :12])).max() > 0.05


def test_confidence_zero_fit_is_ignored(hand, box):
    ekf = _tracker(hand, box, pos_sigma=0.01, rot_sigma=0.05)
    T_fit = apply_delta_np(ekf.T_cam_obj, np.array([0.004, -0.003, 0.002, 0.05, -0.03, 0.02]))
    cov = np.diag([1e-6] * 3 + [1e-4] * 3)
    T_ho, T_ch, P = ekf.T_ho.copy(), ekf.T_ch.copy(), ekf.P.copy()
    e0 = np.linalg.norm(pose_error(T_fit, ekf.T_cam_obj)[3:])
    for conf in (0.0, float("nan"), 0.5 * ekf.cfg.depth_min_confidence):
        r = ekf.update_depth_pose(T_fit, cov, conf)
        assert not r.accepted and r.kind == "depth_pose" and r.reason
    r = ekf.update_pose(T_fit, cov, confidence=0.0)
    assert not r.accepted and r.reason == "confidence 0"
    # nothing changed, not even the rejection counter (an ignored fit is no evidence of a lost track)
    np.testing.assert_array_equal(ekf.T_ho, T_ho)
    np.testing.assert_array_equal(ekf.T_ch, T_ch)
    np.testing.assert_array_equal(ekf.P, P)
    assert ekf.rejections == 0
    # the same fit with a confidence moves the estimate most of the way (it is much more precise)
    r = ekf.update_depth_pose(T_fit, cov, 0.9)
    assert r.accepted
    assert np.linalg.norm(pose_error(T_fit, ekf.T_cam_obj)[3:]) < 0.3 * e0


def test_icp_covariance_matches_the_scatter_of_fits(box):
    """The fit's covariance (ICP normal matrix, residual variance, apply_delta convention) against
    the empirical covariance of fits of the same view over independent depth-noise draws."""
    from hp_ros.core.raycast import MeshInstance, RayCaster
    from hp_ros.core.segmentation import ModelObjectMasker

    W, H = 320, 240
    K = K_CAM.copy()
    K[:2] *= 0.5
    T = np.eye(4)
    T[:3, :3] = se3.so3_exp(torch.tensor([0.5, -0.6, 0.3], dtype=torch.float64)).numpy()  # three faces seen
    T[:3, 3] = [0.02, -0.01, 0.5]
    v, f = box.vertices.double().numpy(), box.faces.numpy()
    z = RayCaster(K, W, H).render([MeshInstance(v @ T[:3, :3].T + T[:3, 3], f, None)]).depth.astype(np.float64)
    masker = ModelObjectMasker(box, K, W, H, scale=1.0)
    rng = np.random.default_rng(0)
    errs, covs = [], []
    for _ in range(80):
        d = np.where(z > 0, z + rng.normal(size=z.shape) * 0.0037 * z ** 2, 0.0).astype(np.float32)
        prior = apply_delta_np(T, np.concatenate([rng.normal(size=3) * 0.002, rng.normal(size=3) * 0.01]))
        fit = masker.fit(d, prior, 0.0)
        errs.append(pose_error(T, fit.T_cam_obj))
        covs.append(fit.covariance)
    E, C = np.array(errs), np.mean(covs, axis=0)
    C_emp = np.cov(E.T)
    # whitened empirical covariance: identity when the predicted covariance is right. Measured here:
    # 0.25-1.4 per direction, the residuals also hold the model's own misfit (SDF grid, pixel
    # rounding), which does not scatter - so the covariance may be conservative, not optimistic
    L = np.linalg.cholesky(C)
    Wm = np.linalg.solve(L, np.linalg.solve(L, C_emp).T)
    lam = np.linalg.eigvalsh((Wm + Wm.T) / 2)
    assert 0.4 < lam.mean() < 1.5, lam
    assert lam.min() > 0.15 and lam.max() < 2.0, lam
    # and per axis (x, y, z, rx, ry, rz)
    ratio = np.sqrt(np.diag(C_emp) / np.diag(C))
    assert np.all((ratio > 0.5) & (ratio < 1.25)), ratio
    # in the EKF's convention (rotation about the object origin), not the ICP's camera-origin one:
    # there the translation sigma would carry the rotation's 0.5 m lever arm (~0.15 mm)
    assert np.sqrt(C[0, 0]) < 5e-5


def test_process_noise_and_projection_bound_follow_arriving_depth_fits(hand, box, grasp, monkeypatch):
    """While depth fits arrive (one within depth_fit_window), the in-contact noise and the
    projection's orientation bound are the depth_* values: an
    orientation known to 2.3 deg (between the two bounds) is projected; a depth_fit_window of
    predictions without a fit (colour only) returns to the plain values. (The process model takes
    its noise from motion_config.)"""
    q, T_clear, u = grasp
    c = EKFConfig()
    assert c.depth_projection_max_rot_sigma > 0.04 > c.projection_max_rot_sigma
    assert c.depth_rot_motion_random_walk > c.rot_motion_random_walk
    ekf = _tracker(hand, box, q, rot_sigma=0.04)
    ekf.T_ho = _place(ekf, hand, ekf.sdf, q, T_clear, u, -0.003)
    assert ekf.motion_config() is ekf.cfg and not ekf.project_out_of_penetration().moved  # no fit yet
    fit = ekf.update_depth_pose(ekf.T_cam_obj, np.diag([1e-4] * 3 + [1e-2] * 3), 0.9)  # a loose fit
    assert fit.accepted and ekf.motion_config().rot_motion_random_walk == c.depth_rot_motion_random_walk
    assert ekf.project_out_of_penetration().moved
    # the process model is handed that config (its contact motion and transition noise)
    from hp_ros.core.ekf import tracker as tracker_module

    used, object_motion = [], tracker_module.dyn.object_motion
    monkeypatch.setattr(tracker_module.dyn, "object_motion",
                        lambda *a: used.append(a[-1].rot_motion_random_walk) or object_motion(*a))
    snap = ekf.snapshot()
    ekf.predict(q, 0.01)
    ekf.restore(snap)
    ekf._since_fit = np.inf
    ekf.predict(q, 0.01)
    assert used == [c.depth_rot_motion_random_walk, c.rot_motion_random_walk], used
    ekf.restore(snap)
    # fits stop: after depth_fit_window of predictions the plain values again (and a snapshot
    # returns to the time of the fit: a late observation's re-run predicts as the first run did)
    for _ in range(int(c.depth_fit_window / 0.01) + 2):
        ekf.predict(q, 0.01)
    assert ekf.motion_config() is ekf.cfg
    ekf.restore(snap)
    assert ekf.motion_config().projection_max_rot_sigma == c.depth_projection_max_rot_sigma
