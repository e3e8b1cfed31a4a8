"""se3 helpers against scipy / transforms3d (independent implementations)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import transforms3d
from scipy.spatial.transform import Rotation

from hp_ros.core import se3


@pytest.fixture
def rots():
    return Rotation.random(64, random_state=0)


def test_so3_exp_log_against_scipy(rots):
    rv = torch.as_tensor(rots.as_rotvec())
    R = se3.so3_exp(rv)
    np.testing.assert_allclose(R.numpy(), rots.as_matrix(), atol=1e-12)
    np.testing.assert_allclose(se3.so3_log(R).numpy(), rots.as_rotvec(), atol=1e-9)
    # near pi and identity
    edge = torch.tensor([[np.pi - 1e-7, 0, 0], [0, 1e-9, 0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    np.testing.assert_allclose(se3.so3_exp(edge).numpy(), Rotation.from_rotvec(edge.numpy()).as_matrix(), atol=1e-9)


def test_quaternion_order_is_xyzw(rots):
    R = torch.as_tensor(rots.as_matrix())
    q = se3.matrix_to_quat(R).numpy()
    ref = rots.as_quat()  # scipy: (x, y, z, w)
    ref = np.where(ref[:, 3:4] < 0, -ref, ref)
    np.testing.assert_allclose(q, ref, atol=1e-12)
    assert (q[:, 3] >= 0).all()
    np.testing.assert_allclose(se3.quat_to_matrix(torch.as_tensor(ref) * 3.0).numpy(), rots.as_matrix(), atol=1e-12)
    # transforms3d uses (w, x, y, z): same rotation after reordering
    for qi, Ri in zip(q[:5], rots.as_matrix()[:5]):
        np.testing.assert_allclose(transforms3d.quaternions.quat2mat([qi[3], *qi[:3]]), Ri, atol=1e-12)


def _random_poses(n, seed):
    rng = np.random.default_rng(seed)
    R = Rotation.random(n, random_state=seed).as_matrix()
    t = rng.normal(size=(n, 3))
    return np.stack([transforms3d.affines.compose(ti, Ri, np.ones(3)) for Ri, ti in zip(R, t)])


def test_invert_compose_transform_points():
    A, B = _random_poses(16, 1), _random_poses(16, 2)
    TA, TB = torch.as_tensor(A), torch.as_tensor(B)
    np.testing.assert_allclose(se3.invert(TA).numpy(), np.linalg.inv(A), atol=1e-12)
    np.testing.assert_allclose(se3.compose(TA, TB).numpy(), A @ B, atol=1e-12)
    p = np.random.default_rng(3).normal(size=(16, 10, 3))
    ref = np.einsum("bij,bnj->bni", A[:, :3, :3], p) + A[:, None, :3, 3]
    np.testing.assert_allclose(se3.transform_points(TA, torch.as_tensor(p)).numpy(), ref, atol=1e-12)


def test_se3_exp_log_round_trip_and_delta():
    rng = np.random.default_rng(4)
    xi = torch.as_tensor(np.concatenate([rng.normal(size=(32, 3)), Rotation.random(32, random_state=4).as_rotvec()], 1))
    T = se3.se3_exp(xi)
    np.testing.assert_allclose(T[:, :3, 3].numpy(), xi[:, :3].numpy(), atol=1e-12)
    np.testing.assert_allclose(T[:, :3, :3].numpy(), Rotation.from_rotvec(xi[:, 3:].numpy()).as_matrix(), atol=1e-12)
    np.testing.assert_allclose(se3.se3_log(T).numpy(), xi.numpy(), atol=1e-9)
    # apply_delta: R' = exp(w) R, t' = t + v
    T0 = torch.as_tensor(_random_poses(32, 5))
    d = xi * 0.1
    T1 = se3.apply_delta(T0, d)
    R_ref = Rotation.from_rotvec(d[:, 3:].numpy()).as_matrix() @ T0[:, :3, :3].numpy()
    np.testing.assert_allclose(T1[:, :3, :3].numpy(), R_ref, atol=1e-12)
    np.testing.assert_allclose(T1[:, :3, 3].numpy(), (T0[:, :3, 3] + d[:, :3]).numpy(), atol=1e-12)
    ang = se3.rotation_angle(se3.so3_exp(d[:, 3:]))
    np.testing.assert_allclose(ang.numpy(), np.linalg.norm(d[:, 3:].numpy(), axis=1), atol=1e-9)


def test_pose_xyz_quat_round_trip(rots):
    xyz = np.random.default_rng(6).normal(size=(64, 3))
    q = rots.as_quat()
    T = se3.pose_from_xyz_quat(xyz, q, dtype=torch.float64)
    np.testing.assert_allclose(T[:, :3, :3].numpy(), rots.as_matrix(), atol=1e-12)
    p, q2 = se3.pose_to_xyz_quat(T)
    np.testing.assert_allclose(p.numpy(), xyz, atol=1e-12)
    np.testing.assert_allclose(np.abs((q2.numpy() * q).sum(1)), 1.0, atol=1e-12)  # same rotation up to sign
