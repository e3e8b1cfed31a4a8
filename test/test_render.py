"""Soft silhouette / RGB renderer: exact hard silhouettes, gradients vs finite differences,
pose recovery from mask + RGB losses."""
import math

import numpy as np
import pytest
import torch
import trimesh

from hp_ros.core import se3
from hp_ros.core.camera import Camera
from hp_ros.core.losses import mask_l2, rendering_loss, rgb_l2
from hp_ros.core.priors import Weights
from hp_ros.core.render import Texture, render

CAM = Camera.from_intrinsics(615.0, 615.0, 320.0, 240.0, 640, 480)


@pytest.fixture(autouse=True)
def _single_thread():
    """The renderer runs many small ops: one thread is faster and steadier on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def reference_labels(meshes, K, size):
    """Independent exact rasterisation: triangle by triangle, pixel centre inside the projected
    triangle, depth by intersecting the pixel's ray with the triangle's 3D plane, z-test.
    meshes: list of (verts (V, 3) numpy, faces (F, 3)). Returns labels (S, S), -1 background."""
    K = np.asarray(K, dtype=np.float64)
    Kinv = np.linalg.inv(K)
    depth = np.full((size, size), np.inf)
    label = np.full((size, size), -1)
    for m, (V, Fc) in enumerate(meshes):
        P = (K @ V.T).T
        uv = P[:, :2] / P[:, 2:3]
        for f in Fc:
            a, b, c = uv[f]
            x0 = max(int(np.ceil(min(a[0], b[0], c[0]))), 0)
            x1 = min(int(np.floor(max(a[0], b[0], c[0]))), size - 1)
            y0 = max(int(np.ceil(min(a[1], b[1], c[1]))), 0)
            y1 = min(int(np.floor(max(a[1], b[1], c[1]))), size - 1)
            if x1 < x0 or y1 < y0:
                continue
            ys, xs = np.mgrid[y0:y1 + 1, x0:x1 + 1]
            px, py = xs.ravel().astype(float), ys.ravel().astype(float)

            def cross(p, q):
                return (q[0] - p[0]) * (py - p[1]) - (q[1] - p[1]) * (px - p[0])

            e = np.stack([cross(a, b), cross(b, c), cross(c, a)])
            inside = (e >= 0).all(0) | (e <= 0).all(0)
            if not inside.any():
                continue
            px, py = px[inside], py[inside]
            v0, v1, v2 = V[f]
            n = np.cross(v1 - v0, v2 - v0)
            rays = (Kinv @ np.stack([px, py, np.ones_like(px)])).T  # z component = 1
            z = (n @ v0) / (rays @ n)
            yi, xi = py.astype(int), px.astype(int)
            closer = z < depth[yi, xi]
            depth[yi[closer], xi[closer]] = z[closer]
            label[yi[closer], xi[closer]] = m
    return label


def sphere(subdiv, radius, centre, dtype=torch.float64):
    s = trimesh.creation.icosphere(subdivisions=subdiv, radius=radius)
    v = torch.tensor(s.vertices, dtype=dtype) + torch.tensor(centre, dtype=dtype)
    return v[None], torch.tensor(s.faces, dtype=torch.long)


def box(extents, centre, rotvec=(0.0, 0.0, 0.0), dtype=torch.float64):
    b = trimesh.creation.box(extents)
    R = se3.so3_exp(torch.tensor(rotvec, dtype=dtype))
    v = torch.tensor(b.vertices, dtype=dtype) @ R.T + torch.tensor(centre, dtype=dtype)
    return v[None], torch.tensor(b.faces, dtype=torch.long)


def iou(a, b):
    return np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1)


def check_against_reference(meshes, roi_points, size=256):
    roi = CAM.roi(roi_points, size, margin=0.15)
    K = roi.K[0]
    out = render(meshes, K, size)
    ref = reference_labels([(v[0].double().numpy(), f.numpy()) for v, f in meshes], K.numpy(),
                           size)
    hard = out.hard_masks[0].numpy()
    ious = []
    for m in range(len(meshes)):
        assert (ref == m).sum() > 500, "test scene must show every mesh"
        ious.append(iou(hard[m], ref == m))
    np.testing.assert_array_equal(out.instance[0].numpy() >= 0, hard.any(0))
    return ious, out, ref


def test_hard_silhouettes_match_reference_with_box_finger_occluding():
    obj = sphere(4, 0.05, (0.0, 0.0, 0.40))  # 5,120 faces
    finger = box((0.02, 0.12, 0.02), (0.02, 0.0, 0.33), rotvec=(0.3, 0.2, 0.4))
    ious, out, ref = check_against_reference([obj, finger], obj[0])
    assert min(ious) >= 0.99, ious
    # the finger really hides part of the object: the object's visible area is smaller than
    # its own silhouette
    alone = render([obj], CAM.roi(obj[0], 256, margin=0.15).K[0], 256)
    assert out.hard_masks[0, 0].sum() < 0.95 * alone.hard_masks[0, 0].sum()


def test_hard_silhouettes_match_reference_with_allegro_hand_occluding():
    hand_mod = pytest.importorskip("hp_ros.core.hand")
    objects = pytest.importorskip("hp_ros.core.objects")
    hand = hand_mod.HandModel.default(dtype=torch.float64)
    obj = objects.ObjectModel.builtin("cracker_box", dtype=torch.float64)
    T_obj = se3.make_pose(se3.so3_exp(torch.tensor([0.4, -0.5, 0.2], dtype=torch.float64)),
                          torch.tensor([0.0, 0.0, 0.55], dtype=torch.float64))
    ov = se3.transform_points(T_obj, obj.vertices)[None]
    base = se3.make_pose(se3.so3_exp(torch.tensor([0.0, -1.5708, 0.3], dtype=torch.float64)),
                         torch.tensor([0.03, 0.06, 0.40], dtype=torch.float64))[None]
    q = hand.zero_q(1).to(torch.float64)
    hv, hf, _ = hand.posed_mesh(q, base)
    ious, out, ref = check_against_reference([(ov, obj.faces), (hv.detach(), hf)],
                                             torch.cat([ov, hv.detach()], 1))
    assert min(ious) >= 0.99, ious
    # fingers hide part of the box
    alone = reference_labels([(ov[0].numpy(), obj.faces.numpy())],
                             CAM.roi(torch.cat([ov, hv.detach()], 1), 256, margin=0.15).K[0]
                             .numpy(), 256)
    assert (ref == 0).sum() < 0.95 * (alone == 0).sum()


def _scene(dtype=torch.float64, occluder=True):
    obj_v, obj_f = sphere(1, 0.05, (0.0, 0.0, 0.0), dtype)  # 80 faces, object frame
    g = torch.Generator().manual_seed(3)
    colors = torch.rand(obj_v.shape[1], 3, generator=g, dtype=dtype)
    T = se3.make_pose(se3.so3_exp(torch.tensor([0.2, 0.1, -0.3], dtype=dtype)),
                      torch.tensor([0.01, -0.005, 0.40], dtype=dtype))[None]
    fv, ff = box((0.02, 0.14, 0.02), (0.03, 0.0, 0.34), rotvec=(0.0, 0.0, 0.3), dtype=dtype)
    roi = CAM.roi(se3.transform_points(T, obj_v), 64, margin=0.25)
    return obj_v, obj_f, colors, T, (fv, ff) if occluder else None, roi.K[0]


def _fd_check(fun, x, eps, idx):
    """Central finite differences of scalar fun at x (flattened entries idx) vs autograd."""
    x = x.detach().clone().requires_grad_(True)
    fun(x).backward()
    g = x.grad.reshape(-1)[idx]
    fd = []
    for i in idx:
        xp, xm = x.detach().clone(), x.detach().clone()
        xp.view(-1)[i] += eps
        xm.view(-1)[i] -= eps
        with torch.no_grad():
            fd.append((fun(xp) - fun(xm)).item() / (2 * eps))
    return g.numpy(), np.array(fd)


def test_mask_gradients_wrt_vertices_and_pose_match_finite_differences():
    obj_v, obj_f, _, T, (fv, ff), K = _scene()
    g = torch.Generator().manual_seed(0)
    w = torch.rand(1, 2, 64, 64, generator=g, dtype=torch.float64)  # smooth loss weights

    def loss_vertices(v_obj):
        out = render([(v_obj, obj_f), (fv, ff)], K, 64, band=2.0)
        return (out.soft_masks * w).sum()

    v_cam = se3.transform_points(T, obj_v)
    x = v_cam.detach().clone().requires_grad_(True)
    loss_vertices(x).backward()
    grad = x.grad.reshape(-1)
    idx = torch.argsort(grad.abs(), descending=True)[:12].tolist() + [0, 1, 2]
    a, fd = _fd_check(loss_vertices, v_cam, 1e-7, idx)
    assert np.abs(a[:12]).min() > 0
    np.testing.assert_allclose(a, fd, rtol=2e-3, atol=1e-3 * np.abs(a).max())

    # finger vertices: moving the occluder changes the object's visible mask too
    def loss_finger(v_f):
        out = render([(v_cam.detach(), obj_f), (v_f, ff)], K, 64, band=2.0)
        return (out.soft_masks[:, 0] * w[:, 0]).sum()

    a, fd = _fd_check(loss_finger, fv, 1e-7, list(range(fv.numel())))
    assert np.abs(a).max() > 0
    np.testing.assert_allclose(a, fd, rtol=2e-3, atol=1e-3 * np.abs(a).max())

    # pose parameters through se3.apply_delta
    def loss_pose(xi):
        Tp = se3.apply_delta(T, xi)
        out = render([(se3.transform_points(Tp, obj_v), obj_f), (fv, ff)], K, 64, band=2.0)
        return (out.soft_masks * w).sum()

    a, fd = _fd_check(loss_pose, torch.zeros(1, 6, dtype=torch.float64), 1e-7, list(range(6)))
    np.testing.assert_allclose(a, fd, rtol=2e-3, atol=1e-4 * np.abs(a).max())


def test_rgb_and_depth_gradients_match_finite_differences():
    obj_v, obj_f, colors, T, _, K = _scene(occluder=False)
    g = torch.Generator().manual_seed(1)
    w_rgb = torch.rand(1, 3, 64, 64, generator=g, dtype=torch.float64)
    w_d = torch.rand(1, 64, 64, generator=g, dtype=torch.float64)

    def loss_pose(xi):
        Tp = se3.apply_delta(T, xi)
        out = render([(se3.transform_points(Tp, obj_v), obj_f)], K, 64, colors=[colors])
        return (out.rgb * w_rgb).sum() + 10.0 * (out.depth * w_d).sum()

    a, fd = _fd_check(loss_pose, torch.zeros(1, 6, dtype=torch.float64), 1e-7, list(range(6)))
    np.testing.assert_allclose(a, fd, rtol=2e-3, atol=1e-4 * np.abs(a).max())

    def loss_colors(c):
        out = render([(se3.transform_points(T, obj_v), obj_f)], K, 64, colors=[c])
        return (out.rgb * w_rgb).sum()

    a, fd = _fd_check(loss_colors, colors, 1e-6, list(range(0, colors.numel(), 7)))
    np.testing.assert_allclose(a, fd, rtol=1e-6, atol=1e-9)


def test_soft_mask_values_depth_and_colour_are_consistent():
    obj_v, obj_f, colors, T, (fv, ff), K = _scene()
    v = se3.transform_points(T, obj_v)
    out = render([(v, obj_f), (fv, ff)], K, 64, colors=[colors, None], band=2.0)
    soft, hard = out.soft_masks[0], out.hard_masks[0]
    assert float(soft.min()) >= 0.0 and float(soft.max()) <= 1.0
    # away from label changes (more than the band) soft equals hard
    lab = out.instance[0]
    change = torch.zeros_like(lab, dtype=torch.float64)
    change[:, 1:] += (lab[:, 1:] != lab[:, :-1]).double()
    change[1:] += (lab[1:] != lab[:-1]).double()
    near = torch.nn.functional.max_pool2d(change[None, None], 9, 1, 4)[0, 0] > 0
    np.testing.assert_array_equal(soft[:, ~near].numpy(), hard[:, ~near].double().numpy())
    assert float((soft - hard.double()).abs().max()) > 0.2  # a real soft band exists
    assert float(soft.sum(0).max()) <= 1.0 + 1e-9
    # depth: ray-plane depth of the visible face at a covered pixel
    ys, xs = torch.nonzero(hard[0] & ~near, as_tuple=True)
    y, x = int(ys[len(ys) // 2]), int(xs[len(xs) // 2])
    f = int(out.face[0, y, x])
    tri = v[0, obj_f[f]].numpy()
    n = np.cross(tri[1] - tri[0], tri[2] - tri[0])
    ray = np.linalg.inv(K.numpy()) @ np.array([x, y, 1.0])
    assert float(out.depth[0, y, x]) == pytest.approx(n @ tri[0] / (n @ ray), rel=1e-9)
    # colour: perspective-correct barycentric colour at that pixel
    Pt = ray * (n @ tri[0] / (n @ ray))
    A = np.stack([tri[0] - tri[2], tri[1] - tri[2]], 1)
    l01 = np.linalg.lstsq(A, Pt - tri[2], rcond=None)[0]
    bary = np.array([l01[0], l01[1], 1 - l01.sum()])
    np.testing.assert_allclose(out.rgb[0, :, y, x].numpy(), bary @ colors[obj_f[f]].numpy(),
                               atol=1e-9)
    assert float(out.depth[0][lab < 0].abs().max()) == 0.0


def test_texture_matches_equivalent_vertex_colours():
    obj_v, obj_f, _, T, _, K = _scene(occluder=False)
    v = se3.transform_points(T, obj_v)
    uvs = ((obj_v[0, :, :2] / 0.05) * 0.4 + 0.5).clamp(0, 1)  # (V, 2) in [0, 1]
    n = 256
    ramp = torch.linspace(0.5 / n, 1 - 0.5 / n, n, dtype=torch.float64)
    # texture = (u, v, 0.5): bilinear lookup of a linear ramp returns the UV itself
    img = torch.stack([ramp[None, :].expand(n, n), ramp.flip(0)[:, None].expand(n, n),
                       torch.full((n, n), 0.5, dtype=torch.float64)])
    tex = render([(v, obj_f)], K, 64, colors=[Texture(uvs, img)])
    vc = torch.cat([uvs, torch.full_like(uvs[:, :1], 0.5)], 1)
    ref = render([(v, obj_f)], K, 64, colors=[vc])
    inside = ref.hard_masks[0, 0]
    np.testing.assert_allclose(tex.rgb[0][:, inside].numpy(), ref.rgb[0][:, inside].numpy(),
                               atol=1e-6)


def test_losses_and_bad_input():
    soft = torch.tensor([[[0.0, 0.5], [1.0, 1.0]]])
    obs = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    assert float(mask_l2(soft, obs)[0]) == pytest.approx((0.25 + 1.0) / 4)
    assert float(mask_l2(soft, obs, valid=torch.tensor([[[1, 1], [1, 0]]]))[0]) == \
        pytest.approx(0.25 / 3)
    r = torch.zeros(1, 3, 2, 2)
    o = torch.ones(1, 3, 2, 2)
    assert float(rgb_l2(r, o, torch.tensor([[[1, 0], [0, 0]]]))[0]) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="crop observations"):
        mask_l2(soft, torch.zeros(1, 3, 3))
    with pytest.raises(ValueError):
        Weights(rgb=-1.0)
    v, f = sphere(1, 0.05, (0.0, 0.0, 0.4))
    with pytest.raises(ValueError, match="verts must be"):
        render([(v[0], f)], CAM.K, 32)
    with pytest.raises(ValueError, match="out of range"):
        render([(v, f + 1000)], CAM.K, 32)
    with pytest.raises(ValueError, match="one entry per mesh"):
        render([(v, f)], CAM.K, 32, colors=[None, None])
    out = render([(v, f)], CAM.roi(v, 32).K[0], 32)
    with pytest.raises(ValueError, match="colours"):
        rendering_loss(out, None, out.soft_masks[:, 0], torch.zeros(1, 3, 32, 32),
                       hand_index=0, object_index=0)


def test_pose_recovery_from_mask_and_rgb():
    objects = pytest.importorskip("hp_ros.core.objects")
    obj = objects.ObjectModel.builtin("cracker_box", dtype=torch.float64)
    ov, of, oc = obj.vertices[None], obj.faces, obj.vertex_colors
    T_gt = se3.make_pose(se3.so3_exp(torch.tensor([0.5, -0.6, 0.3], dtype=torch.float64)),
                         torch.tensor([0.02, -0.01, 0.60], dtype=torch.float64))[None]
    # 1 cm / 10 degree perturbation
    g = torch.Generator().manual_seed(0)
    dt = torch.randn(3, generator=g, dtype=torch.float64)
    dr = torch.randn(3, generator=g, dtype=torch.float64)
    xi0 = torch.cat([0.01 * dt / dt.norm(), math.radians(10.0) * dr / dr.norm()])[None]
    T_init = se3.apply_delta(T_gt, xi0)
    S = 128
    roi = CAM.roi(se3.transform_points(T_init, ov), S, margin=0.25)
    K = roi.K[0]
    with torch.no_grad():
        tgt = render([(se3.transform_points(T_gt, ov), of)], K, S, colors=[oc])
    obs_mask = tgt.hard_masks[:, 0].double()
    obs_rgb = tgt.rgb * tgt.hard_masks[:, 0, None]
    weights = Weights(mask_hand=0.0, mask_object=1.0, rgb=1.0)
    xi = torch.zeros(1, 6, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([xi], lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 150, eta_min=1e-4)
    for _ in range(150):
        opt.zero_grad()
        T = se3.apply_delta(T_init, xi)
        out = render([(se3.transform_points(T, ov), of)], K, S, colors=[oc])
        total, _ = rendering_loss(out, None, obs_mask, obs_rgb, weights, object_index=0)
        total.backward()
        opt.step()
        sched.step()
    T = se3.apply_delta(T_init, xi.detach())
    t_err = float((T[0, :3, 3] - T_gt[0, :3, 3]).norm())
    r_err = math.degrees(float(se3.rotation_angle(T[0, :3, :3] @ T_gt[0, :3, :3].T)))
    assert t_err < 0.002 and r_err < 1.0, (t_err, r_err)


def test_batch_equals_individual_renders():
    obj_v, obj_f, colors, T, (fv, ff), K = _scene()
    xi = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.004, -0.003, 0.01, 0.1, -0.2, 0.3]],
                      dtype=torch.float64)
    Tb = se3.apply_delta(T.expand(2, -1, -1), xi)
    vb = se3.transform_points(Tb, obj_v.expand(2, -1, -1))
    fb = fv.expand(2, -1, -1)
    Kb = torch.stack([K, K * torch.tensor([[1.1, 1, 1], [1, 1.1, 1], [1, 1, 1]],
                                          dtype=torch.float64)])
    out = render([(vb, obj_f), (fb, ff)], Kb, 64, colors=[colors, None])
    for b in range(2):
        ref = render([(vb[b:b + 1], obj_f), (fb[b:b + 1], ff)], Kb[b], 64,
                     colors=[colors, None])
        torch.testing.assert_close(out.soft_masks[b], ref.soft_masks[0])
        torch.testing.assert_close(out.rgb[b], ref.rgb[0])
        torch.testing.assert_close(out.depth[b], ref.depth[0])
    assert not torch.equal(out.hard_masks[0], out.hard_masks[1])


def test_back_face_culling_per_component_and_open_meshes():
    # one mesh made of an outward box and an inside-out box, plus an open mesh (a quad)
    a_v, a_f = box((0.04, 0.04, 0.04), (-0.03, 0.0, 0.40), rotvec=(0.3, 0.4, 0.0))
    b_v, b_f = box((0.03, 0.05, 0.03), (0.03, 0.01, 0.38), rotvec=(-0.2, 0.5, 0.1))
    two = (torch.cat([a_v, b_v], 1), torch.cat([a_f, b_f.flip(1) + a_v.shape[1]]))
    quad_v = torch.tensor([[[-0.05, -0.01, 0.35], [0.05, -0.02, 0.36], [0.05, 0.01, 0.37],
                            [-0.05, 0.02, 0.36]]], dtype=torch.float64)
    quad = (quad_v, torch.tensor([[0, 1, 2], [0, 2, 3]]))
    ious, out, ref = check_against_reference([two, quad], two[0])
    assert min(ious) >= 0.99, ious


def test_interpolation_backward_matches_gradcheck():
    """The hand-written backward of the interior interpolation (per-face moments) against
    torch's numerical Jacobian, for vertices, depths and per-vertex values, incl. batch rows."""
    from hp_ros.core.render import _Interpolate

    g = torch.Generator().manual_seed(3)
    n = 7  # vertices of two batch rows flattened
    us = (torch.rand(n, generator=g, dtype=torch.float64) * 20).requires_grad_(True)
    vs = (torch.rand(n, generator=g, dtype=torch.float64) * 20).requires_grad_(True)
    z = (0.3 + torch.rand(n, generator=g, dtype=torch.float64)).requires_grad_(True)
    values = torch.rand(3, n, generator=g, dtype=torch.float64).requires_grad_(True)
    fidx = torch.tensor([[0, 1, 2], [2, 3, 0], [4, 5, 6]])
    pix_face = torch.tensor([0, 0, 1, 2, 1, 2, 0])
    px = torch.rand(7, generator=g, dtype=torch.float64) * 20
    py = torch.rand(7, generator=g, dtype=torch.float64) * 20

    def f(us, vs, z, values):
        return _Interpolate.apply(us, vs, z, values, fidx, pix_face, px, py, 1e-4)

    assert torch.autograd.gradcheck(f, (us, vs, z, values), eps=1e-6, atol=1e-6, rtol=1e-5)
    assert torch.autograd.gradcheck(lambda a, b, c: f(a, b, c, None)[0], (us, vs, z),
                                    eps=1e-6, atol=1e-6, rtol=1e-5)
    # forward: perspective-correct values at a vertex equal the vertex's own value
    d, at = _Interpolate.apply(us.detach(), vs.detach(), z.detach(), values.detach(), fidx[:1],
                               torch.tensor([0]), us.detach()[1:2], vs.detach()[1:2], 1e-4)
    torch.testing.assert_close(d, z.detach()[1:2])
    torch.testing.assert_close(at[:, 0], values.detach()[:, 1])
