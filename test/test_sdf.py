"""MeshSDF (Warp) against analytic/independent distances, gradients against finite differences."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import trimesh

from hp_ros.core import se3
from hp_ros.core.sdf import MeshSDF, signed_distance_world, warm_up

HALF = np.array([0.05, 0.03, 0.02])  # box half extents (m)


def box_sdf(p: np.ndarray) -> np.ndarray:
    """Exact SDF of the axis-aligned box with half extents HALF (negative inside)."""
    q = np.abs(p) - HALF
    outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
    inside = np.minimum(q.max(-1), 0.0)
    return outside + inside


@pytest.fixture(scope="module")
def box():
    return MeshSDF(trimesh.creation.box(extents=2 * HALF).vertices, trimesh.creation.box(extents=2 * HALF).faces)


@pytest.fixture(scope="module")
def sphere_mesh():
    return trimesh.creation.icosphere(subdivisions=4, radius=0.05)


def test_warm_up_returns_seconds():
    assert warm_up() >= 0.0


def test_box_sdf_exact(box):
    assert box.sign_method == "normal" and box.is_watertight and not box.flipped
    g = torch.Generator().manual_seed(0)
    p = (torch.rand(3000, 3, generator=g, dtype=torch.float64) - 0.5) * 0.2
    sdf, normals = box.query(p)
    ref = np.minimum(box_sdf(p.numpy()), box.max_dist)  # far points are clamped to max_dist
    assert sdf.dtype == torch.float64 and sdf.shape == (3000,)
    assert np.abs(sdf.numpy() - ref).max() < 1e-6
    assert (sdf < 0).sum() > 50  # some points are inside
    near = sdf < box.max_dist
    assert near.sum() > 2000 and torch.allclose(normals[near].norm(dim=-1), torch.ones(int(near.sum()), dtype=torch.float64), atol=1e-5)
    assert torch.equal(normals[~near], torch.zeros(int((~near).sum()), 3, dtype=torch.float64))


def test_repeated_queries_of_many_sizes_stay_exact_and_independent():
    """Queries (torch and numpy) reuse a recorded launch and its buffers per point count (a handful of sizes kept;
    small counts share one rounded up, padded): every answer is the exact box SDF of its own
    points, also after other sizes pushed its launch out, and a result handed out earlier is not
    overwritten by a later query of the same size."""
    sdf = MeshSDF(trimesh.creation.box(extents=2 * HALF).vertices, trimesh.creation.box(extents=2 * HALF).faces)
    g = torch.Generator().manual_seed(1)
    big = MeshSDF._BUCKET_MAX + 1
    sizes = [1, 7, 150] + list(range(big, big + MeshSDF._RECORDED_SIZES + 2)) + [7, 150, 1, 9, 16]
    kept, kept_np = [], []
    for m in sizes:
        p = (torch.rand(m, 3, generator=g) - 0.5) * 0.15
        d, n = sdf.query(p)
        ref = np.minimum(box_sdf(p.double().numpy()), sdf.max_dist)
        assert d.shape == (m,) and n.shape == (m, 3) and np.abs(d.numpy() - ref).max() < 1e-6, m
        dn = sdf.distance_numpy(p.double().numpy())  # the tracker's numpy path: same kernel, same buffers
        assert dn.dtype == np.float64 and dn.shape == (m,) and np.array_equal(dn, d.double().numpy()), m
        kept.append((p, d.clone(), d, n.clone(), n))
        kept_np.append((dn.copy(), dn))
    assert len(sdf._recorded) == MeshSDF._RECORDED_SIZES
    assert MeshSDF._BUCKET in sdf._recorded and not {1, 7, 9, 150} & set(sdf._recorded)  # 1-16 share one
    for p, d_copy, d, n_copy, n in kept:  # untouched by the queries after them
        assert torch.equal(d, d_copy) and torch.equal(n, n_copy)
    assert all(np.array_equal(a, b) for a, b in kept_np)
    assert sdf.query(torch.zeros(0, 3))[0].shape == (0,) and sdf.distance_numpy(np.zeros((0, 3))).shape == (0,)


def test_box_normals_on_face_regions(box):
    # points whose closest feature is the +x face (inside or outside): normal = +x
    p = torch.tensor([[0.06, 0.0, 0.0], [0.045, 0.01, -0.005], [0.08, -0.02, 0.01]])
    _, n = box.query(p)
    assert torch.allclose(n, torch.tensor([[1.0, 0.0, 0.0]]).expand(3, 3), atol=1e-5)


def test_sphere_against_exact_mesh_distance_and_analytic(sphere_mesh):
    sdf_fn = MeshSDF(sphere_mesh.vertices, sphere_mesh.faces)
    g = torch.Generator().manual_seed(1)
    d = torch.randn(2000, 3, generator=g, dtype=torch.float64)
    p = d / d.norm(dim=1, keepdim=True) * (0.05 + (torch.rand(2000, 1, generator=g, dtype=torch.float64) - 0.5) * 0.04)
    sdf, _ = sdf_fn.query(p)
    # Independent reference: trimesh's exact point-triangle distance. trimesh's closest-point
    # tolerances are absolute, so it is evaluated in millimetres (it misreports sub-0.1 mm
    # distances to mm-sized triangles at metre scale).
    mm = trimesh.Trimesh(sphere_mesh.vertices * 1000.0, sphere_mesh.faces)
    _, dist_mm, _ = trimesh.proximity.closest_point(mm, p.numpy() * 1000.0)
    inside = mm.contains(p.numpy() * 1000.0)
    ref = np.where(inside, -dist_mm, dist_mm) / 1000.0
    assert np.abs(sdf.numpy() - ref).max() < 1e-6
    # analytic sphere: differs only by the discretisation (faces' planes lie inside the sphere)
    tri = sphere_mesh.triangles
    plane_dist = np.abs(np.einsum("fi,fi->f", sphere_mesh.face_normals, tri[:, 0]))
    sagitta = 0.05 - plane_dist.min()
    analytic = p.norm(dim=1).numpy() - 0.05
    assert np.abs(sdf.numpy() - analytic).max() <= sagitta + 1e-6
    assert sagitta < 2e-4


def _finite_diff_grad(fn, p: torch.Tensor, h: float = 1e-5) -> torch.Tensor:
    grads = []
    for k in range(3):
        e = torch.zeros(3, dtype=p.dtype)
        e[k] = h
        grads.append((fn(p + e) - fn(p - e)) / (2 * h))
    return torch.stack(grads, -1)


def test_gradient_matches_finite_differences_and_normals(box, sphere_mesh):
    g = torch.Generator().manual_seed(2)
    sph = MeshSDF(sphere_mesh.vertices, sphere_mesh.faces)
    # Points where the field is smooth: outside a convex mesh (C1), and box-interior points whose
    # nearest face is at least 1 mm closer than the next (away from the medial surface's kinks).
    pb = (torch.rand(600, 3, generator=g, dtype=torch.float64) - 0.5) * 0.2
    slack = np.sort(HALF - np.abs(pb.numpy()), axis=1)
    keep = (box_sdf(pb.numpy()) > 2e-3) | ((slack[:, 0] > 0) & (slack[:, 1] - slack[:, 0] > 1e-3))
    pb = pb[torch.as_tensor(keep)]
    d = torch.randn(300, 3, generator=g, dtype=torch.float64)
    ps = d / d.norm(dim=1, keepdim=True) * (0.052 + torch.rand(300, 1, generator=g, dtype=torch.float64) * 0.02)
    for sdf_fn, p in ((box, pb), (sph, ps)):
        p = p.clone().requires_grad_(True)
        sdf, normals = sdf_fn.query(p)
        (grad,) = torch.autograd.grad(sdf.sum(), p)
        fd = _finite_diff_grad(lambda x: sdf_fn.query(x)[0].detach(), p.detach())
        err = (grad - fd).norm(dim=-1)
        assert err.max() < 2e-3
        assert torch.allclose(grad, normals)
    assert (box_sdf(pb.detach().numpy()) < 0).sum() >= 10  # interior points are covered too


def test_batched_matches_per_frame_and_jacobian(box):
    g = torch.Generator().manual_seed(3)
    p = (torch.rand(4, 50, 3, generator=g) - 0.5) * 0.2
    sdf, normals = box.query(p)
    assert sdf.shape == (4, 50) and normals.shape == (4, 50, 3) and sdf.dtype == torch.float32
    for b in range(4):
        s_b, n_b = box.query(p[b])
        assert torch.equal(s_b, sdf[b]) and torch.equal(n_b, normals[b])
    J = torch.autograd.functional.jacobian(lambda x: box.query(x)[0], p[0, :5])  # (5, 5, 3)
    assert torch.allclose(J[torch.arange(5), torch.arange(5)], normals[0, :5])
    assert J.abs().sum() == pytest.approx(normals[0, :5].abs().sum().item(), rel=1e-5)


def test_signed_distance_world_gradients_points_and_pose(box):
    dt = torch.float64
    g = torch.Generator().manual_seed(4)
    T = se3.pose_from_xyz_quat(torch.tensor([[0.1, -0.05, 0.3], [0.12, -0.04, 0.31]]),
                               torch.nn.functional.normalize(torch.randn(2, 4, generator=g), dim=-1), dtype=dt)
    p_obj = (torch.rand(2, 60, 3, generator=g, dtype=dt) - 0.5) * 0.2
    p_obj = torch.where(torch.as_tensor(box_sdf(p_obj.numpy()) > 2e-3)[..., None], p_obj, p_obj * 2.0)
    pw = se3.transform_points(T, p_obj)
    sdf, n_world = signed_distance_world(box, pw, T)
    assert np.abs(sdf.numpy() - np.minimum(box_sdf(p_obj.numpy()), box.max_dist)).max() < 1e-6
    assert torch.allclose(n_world, box.query(p_obj)[1] @ T[..., :3, :3].transpose(-1, -2))

    xi = torch.zeros(2, 6, dtype=dt, requires_grad=True)
    pw_var = pw.clone().requires_grad_(True)
    s = signed_distance_world(box, pw_var, se3.apply_delta(T, xi))[0]
    w = torch.rand(2, 60, generator=g, dtype=dt)
    gx, gp = torch.autograd.grad((s * w).sum(), (xi, pw_var))
    # points: gradient = world normal
    assert torch.allclose(gp, w[..., None] * n_world, atol=1e-6)
    # pose: finite differences over the 6 twist coordinates
    h = 1e-5
    fd = torch.zeros(2, 6, dtype=dt)
    for k in range(6):
        e = torch.zeros(2, 6, dtype=dt)
        e[:, k] = h
        fp = (signed_distance_world(box, pw, se3.apply_delta(T, e))[0] * w).sum(-1)
        fm = (signed_distance_world(box, pw, se3.apply_delta(T, -e))[0] * w).sum(-1)
        fd[:, k] = ((fp - fm) / (2 * h)).detach()
    assert torch.allclose(gx, fd, atol=2e-3 * fd.abs().max().item())


def test_far_points_clamped_to_max_dist_deep_inside_points_exact():
    m = trimesh.creation.box(extents=[0.1, 0.1, 0.1])
    sdf_fn = MeshSDF(m.vertices, m.faces, max_dist=0.02)
    # far outside -> clamped; near -> exact; deep inside (farther than max_dist) -> still exact
    p = torch.tensor([[1.0, 0.0, 0.0], [0.06, 0.0, 0.0], [0.0, 0.0, 0.0], [0.01, -0.02, 0.005]], requires_grad=True)
    sdf, n = sdf_fn.query(p)
    assert torch.allclose(sdf, torch.tensor([0.02, 0.01, -0.05, -0.03]), atol=1e-6)
    (grad,) = torch.autograd.grad(sdf.sum(), p)
    assert torch.equal(grad[0], torch.zeros(3)) and torch.allclose(grad[1], torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)
    assert torch.allclose(grad[3], torch.tensor([0.0, -1.0, 0.0]), atol=1e-6)


def test_open_mesh_winding_fallback_or_error():
    m = trimesh.creation.box(extents=2 * HALF)
    top = np.where(m.face_normals[:, 2] > 0.9)[0]
    faces = np.delete(m.faces, top, axis=0)  # remove the +z side: open box
    with pytest.raises(ValueError, match="not watertight"):
        MeshSDF(m.vertices, faces, sign="normal")
    with pytest.warns(UserWarning, match="winding"):
        open_sdf = MeshSDF(m.vertices, faces)
    assert open_sdf.sign_method == "winding" and not open_sdf.is_watertight
    # points well inside / outside away from the hole keep the right sign and distance
    p = np.array([[0.0, 0.0, -0.01], [0.04, 0.0, -0.015], [0.0, 0.0, -0.05], [0.08, 0.01, 0.0]])
    sdf, _ = open_sdf.query(torch.tensor(p))
    assert np.abs(sdf.numpy() - box_sdf(p)).max() < 1e-6


def test_inverted_winding_is_flipped():
    m = trimesh.creation.box(extents=2 * HALF)
    inv = MeshSDF(m.vertices, m.faces[:, ::-1].copy())
    assert inv.flipped and inv.sign_method == "normal"
    p = np.array([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0]])
    assert np.abs(inv.query(torch.tensor(p))[0].numpy() - box_sdf(p)).max() < 1e-6


def test_bad_input_raises():
    m = trimesh.creation.box()
    v = np.array(m.vertices)
    with pytest.raises(ValueError, match="NaN"):
        MeshSDF(np.where(np.arange(len(v))[:, None] == 0, np.nan, v), m.faces)
    with pytest.raises(ValueError, match="out of range"):
        MeshSDF(v, m.faces + 1)
    with pytest.raises(ValueError, match="shape"):
        MeshSDF(v[:, :2], m.faces)
    with pytest.raises(ValueError, match="sign"):
        MeshSDF(v, m.faces, sign="parity")
    s = MeshSDF(v, m.faces)
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        s.query(torch.zeros(5, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a watertight mesh does not warn
        MeshSDF(v, m.faces)


@pytest.mark.shared_data
def test_ycb_cracker_box_is_watertight_after_seam_merge(shared_data):
    path = shared_data / "ycb" / "eleramp_ycbv_reoriented" / "YcbCrackerBox" / "textured_simple_reoriented.obj"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    m = trimesh.load(path, force="mesh", process=False)  # UV seams split vertices: open as loaded
    sdf_fn = MeshSDF(m.vertices, m.faces)
    assert sdf_fn.sign_method == "normal" and sdf_fn.num_faces == 15728
    g = torch.Generator().manual_seed(5)
    lo, hi = torch.tensor(m.bounds[0]), torch.tensor(m.bounds[1])
    p = lo - 0.01 + torch.rand(1500, 3, generator=g, dtype=torch.float64) * (hi - lo + 0.02)
    sdf, _ = sdf_fn.query(p)
    mm = trimesh.Trimesh(np.asarray(m.vertices) * 1000.0, m.faces)  # trimesh reference in mm (see above)
    _, dist_mm, _ = trimesh.proximity.closest_point(mm, p.numpy() * 1000.0)
    assert np.abs(np.abs(sdf.numpy()) - dist_mm / 1000.0).max() < 1e-4
    inside = mm.contains(p.numpy() * 1000.0)
    clear = dist_mm > 1.0  # sign compared away from the surface (ray tests are fragile right at it)
    assert clear.sum() > 1000 and (sdf.numpy() < 0).sum() > 300
    assert ((sdf.numpy() < 0) == inside)[clear].all()
