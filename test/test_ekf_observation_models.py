"""Every EKF observation model's Jacobian against central finite differences on the error state:
``H(x) = -d residual(h(x ⊞ δ)) / dδ`` at δ = 0 (for vector measurements ``residual = z - h``, so
``H = dh/dδ``; for a pose the residual is a rotation vector), at a few random states with every
block of the state present (object, calibration, centre bias, depth-fit bias)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from hp_ros.core.ekf import EKFConfig, EKFTracker, apply_delta_np
from hp_ros.core.ekf.observations import (OBSERVATION_MODELS, Center3D, CenterObservation, Fingertips2D,
                                          Fingertips3D, PoseObservation)

# camera, calibration and the hand / box fixtures of the EKF tests (camera ~45 cm in front of the palm)
from test_ekf import K_CAM, T_CAM_HAND, box, hand  # noqa: E402,F401 - fixtures are used by name

_W = np.random.default_rng(99).normal(size=(3, 6)) * np.array([[300.0] * 6, [300.0] * 6, [0.3] * 6])
_A = np.array([0.03, -0.02, 0.05])


def _smooth_offset(T):
    """Stand-in for the visible-surface offset (u, v [px], depth [m]) that is analytic in the pose:
    the centre model differentiates the real one numerically (that part is checked in
    test_ekf.py); with this one its derivative is exact to rounding, so the composition is checked tightly."""
    return _W @ np.concatenate([T[:3, 3], T[:3, :3] @ _A]), np.zeros(3)


def _translation_offset(T):
    """An offset that depends on the translation only (``center_rotation="consider"`` puts the
    rotation dependence in the noise, not in ``H``)."""
    return _W[:, :3] @ T[:3, 3], np.zeros(3)


def _zero_offset(T):
    return np.zeros(3), np.zeros(3)


def _center(ekf, x, rng, stats=_smooth_offset, rotation="model", depth=True):
    z = np.array([320.0, 240.0, 0.45])[:3 if depth else 2]
    # tiny covariance: the rotation slope's sigma-point steps clamp to offset_eps (a local derivative)
    return CenterObservation(ekf.K, ekf.center_obj, stats, ekf.P * 1e-14, z, np.diag([4.0, 4.0, 1e-6]), rotation,
                             offset_eps=1e-6)


def _pose_meas(x, rng):
    return apply_delta_np(x.T_cam_obj, rng.normal(size=6) * np.array([0.01] * 3 + [0.3] * 3))


CASES = {
    "fingertips_2d": lambda ekf, x, rng: Fingertips2D(ekf.K, ekf.fingertip_points_hand(), rng.normal(size=(4, 2)), 3.0),
    "fingertips_3d": lambda ekf, x, rng: Fingertips3D(ekf.fingertip_points_hand(), rng.normal(size=(4, 3)), 0.005),
    "center": lambda ekf, x, rng: _center(ekf, x, rng),
    "center_pixels_only": lambda ekf, x, rng: _center(ekf, x, rng, depth=False),
    "center_consider": lambda ekf, x, rng: _center(ekf, x, rng, _translation_offset, "consider"),
    # the 3D centre holds the visible offset constant in H: checked with a zero offset
    "center_3d": lambda ekf, x, rng: Center3D(_center(ekf, x, rng, _zero_offset), rng.normal(size=3), 0.008),
    "pose": lambda ekf, x, rng: PoseObservation(_pose_meas(x, rng), np.eye(6) * 1e-4),
    "depth_pose": lambda ekf, x, rng: PoseObservation(_pose_meas(x, rng), np.eye(6) * 1e-6, depth_bias=True,
                                                      kind="depth_pose"),
}


def test_every_observation_model_has_a_case(hand, box):
    """A new observation model needs a case here (a line in CASES)."""
    ekf, x, rng = _state(hand, box, 0)
    assert {type(build(ekf, x, rng)) for build in CASES.values()} == set(OBSERVATION_MODELS)


def _state(hand, box, seed):
    """A tracker and a random nominal state near the palm with every error-state block present."""
    rng = np.random.default_rng(seed)
    ekf = EKFTracker(hand, box, K_CAM, T_CAM_HAND, EKFConfig())
    T_co = T_CAM_HAND @ np.array([[0, 0, 1, 0.06], [0, 1, 0, 0.0], [-1, 0, 0, 0.07], [0, 0, 0, 1.0]])
    ekf.initialize(apply_delta_np(T_co, rng.normal(size=6) * 0.05),
                   q=hand.random_q(1, generator=torch.Generator().manual_seed(seed))[0].numpy() * 0.5)
    lay = ekf.layout
    assert lay.calibration and lay.center_bias and lay.depth_bias and lay.n == 21
    scale = np.concatenate([[0.01] * 3, [0.1] * 3, [0.005] * 3, [0.03] * 3, [2.0, 2.0, 0.002], [0.001] * 3, [0.01] * 3])
    return ekf, ekf.x.boxplus(rng.normal(size=lay.n) * scale), rng


def _fd_jacobian(model, x, eps=1e-6):
    """``-d residual(h(x ⊞ δ)) / dδ`` ``(m, n)`` by central differences."""
    cols = []
    for k in range(x.layout.n):
        d = np.zeros(x.layout.n)
        d[k] = eps
        r_plus, r_minus = model.residual(model.h(x.boxplus(d))), model.residual(model.h(x.boxplus(-d)))
        cols.append(-(r_plus - r_minus) / (2 * eps))
    return np.stack(cols, 1)


# The depth-fit model's H treats the bias rotation exp(b_w) as the identity where it multiplies the
# pose's rotation error (H = J_r^-1 G and J_r^-1 in the bias columns, exactly J_r^-1 R_b G and
# J_r^-1 J_l(b_w)): exact at b = 0, off by O(|b_w|) relative (the bias' stationary sigma is
# 0.18 mrad: ~2e-4). Checked tightly at b = 0; with a 10 mrad bias the difference shows.
LARGE_DEPTH_BIAS = pytest.param("depth_pose_large_bias", marks=pytest.mark.xfail(
    strict=True, reason="first order in the depth-fit bias rotation (see the comment above)"))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", sorted(CASES) + [LARGE_DEPTH_BIAS])
def test_observation_jacobian_matches_finite_differences(hand, box, case, seed):
    ekf, x, rng = _state(hand, box, seed)
    if case == "depth_pose":
        x = dataclasses.replace(x, depth_bias=np.zeros(6))
    model = CASES[case.replace("_large_bias", "")](ekf, x, rng)
    H = model.H(x)  # first: the centre model caches its offset derivative at x
    assert H.shape == (len(model.residual(model.h(x))), x.layout.n)
    assert np.all(np.isfinite(H)) and np.abs(H).max() > 0
    H_fd = _fd_jacobian(model, x)
    scale = np.abs(H_fd).max()
    np.testing.assert_allclose(H, H_fd, rtol=1e-6, atol=1e-7 * scale, err_msg=case)
