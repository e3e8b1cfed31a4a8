"""Exact Warp ray caster against analytic depth, ids and colours."""
import numpy as np
import pytest

from hp_ros.core.raycast import MeshInstance, RayCaster

K = np.array([[300.0, 0.0, 81.5], [0.0, 310.0, 58.0], [0.0, 0.0, 1.0]])
W, H = 160, 120


def _rays():
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    return (u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1]


def _plane(n, c, size=20.0):
    """A big square in the plane n . p = c (vertices (4, 3), faces (2, 3))."""
    n = np.asarray(n, float) / np.linalg.norm(n)
    a = np.cross(n, [1.0, 0, 0]) if abs(n[0]) < 0.9 else np.cross(n, [0, 1.0, 0])
    a /= np.linalg.norm(a)
    b = np.cross(n, a)
    o = n * c
    v = np.array([o + size * (sa * a + sb * b) for sa, sb in ((-1, -1), (1, -1), (1, 1), (-1, 1))])
    return v, np.array([[0, 1, 2], [0, 2, 3]])


def test_tilted_plane_depth_is_analytic_z_depth():
    n = np.array([0.2, -0.3, 1.0])
    n /= np.linalg.norm(n)
    v, f = _plane(n, 0.8)
    out = RayCaster(K, W, H).render([MeshInstance(v, f, (0.1, 0.2, 0.3))])
    x, y = _rays()
    z_expected = 0.8 / (n[0] * x + n[1] * y + n[2])  # ray p = z (x, y, 1)
    assert np.all(out.instance == 0)
    np.testing.assert_allclose(out.depth, z_expected, rtol=1e-5)
    # normal faces the camera and equals -n
    np.testing.assert_allclose(out.normal.reshape(-1, 3), np.tile(-n, (W * H, 1)), atol=1e-5)
    np.testing.assert_allclose(out.color[5, 7], [0.1, 0.2, 0.3], atol=1e-6)


def test_box_in_front_of_background_ids_depth_and_refit():
    import trimesh

    box = trimesh.creation.box(extents=(0.2, 0.2, 0.2))
    box.apply_translation([0.0, 0.0, 0.6])
    bg_v, bg_f = _plane([0, 0, 1.0], 1.5)
    rc = RayCaster(K, W, H)
    out = rc.render([MeshInstance(box.vertices, box.faces, (1, 0, 0)), MeshInstance(bg_v, bg_f, (0, 0, 1))])
    x, y = _rays()
    # front face z = 0.5 covers |x z| <= 0.1 and |y z| <= 0.1 (pixel centres well inside/outside)
    inside = (np.abs(x * 0.5) < 0.098) & (np.abs(y * 0.5) < 0.098)
    outside = (np.abs(x * 0.5) > 0.102) | (np.abs(y * 0.5) > 0.102)  # misses the whole box
    assert inside.sum() > 500 and outside.sum() > 500
    np.testing.assert_allclose(out.depth[inside], 0.5, atol=1e-6)
    assert np.all(out.instance[inside] == 0) and np.all(out.instance[outside] == 1)
    np.testing.assert_allclose(out.depth[outside], 1.5, atol=1e-5)
    np.testing.assert_allclose(out.color[inside], np.tile([1, 0, 0], (inside.sum(), 1)), atol=1e-6)
    # moving the vertices only refits the BVH and gives the shifted depth
    out2 = rc.render([MeshInstance(box.vertices + [0, 0, 0.1], box.faces, (1, 0, 0)), MeshInstance(bg_v, bg_f)])
    assert rc.rebuilds == 1 and rc.refits == 1
    inside2 = (np.abs(x * 0.6) < 0.098) & (np.abs(y * 0.6) < 0.098)
    np.testing.assert_allclose(out2.depth[inside2], 0.6, atol=1e-6)


def test_barycentric_colour_interpolation_is_linear():
    # plane z = 1 with colour red = (x + 1) / 2 at each vertex: linear on the triangles
    v = np.array([[-1, -1, 1.0], [1, -1, 1], [1, 1, 1], [-1, 1, 1]])
    c = np.stack([(v[:, 0] + 1) / 2, (v[:, 1] + 1) / 2, np.zeros(4)], axis=1)
    out = RayCaster(K, W, H).render([MeshInstance(v, np.array([[0, 1, 2], [0, 2, 3]]), c)])
    x, y = _rays()
    np.testing.assert_allclose(out.color[..., 0], (x + 1) / 2, atol=1e-5)
    np.testing.assert_allclose(out.color[..., 1], (y + 1) / 2, atol=1e-5)


def test_no_hit_and_bad_input():
    v, f = _plane([0, 0, 1.0], -1.0)  # behind the camera
    out = RayCaster(K, W, H).render([MeshInstance(v, f)])
    assert np.all(out.depth == 0) and np.all(out.instance == -1) and np.all(out.face == -1)
    with pytest.raises(ValueError, match="face indices"):
        RayCaster(K, W, H).render([MeshInstance(v, np.array([[0, 1, 9]]))])
    with pytest.raises(ValueError, match="nothing to render"):
        RayCaster(K, W, H).render([])
    with pytest.raises(ValueError):
        RayCaster(np.eye(2), W, H)


def _scene():
    """Two boxes and a background plane (instances 0, 1, 2)."""
    import trimesh

    a = trimesh.creation.box(extents=(0.15, 0.1, 0.12))
    a.apply_transform(trimesh.transformations.rotation_matrix(0.5, [1, 2, 0.3]))
    a.apply_translation([-0.05, 0.02, 0.7])
    b = trimesh.creation.icosphere(subdivisions=2, radius=0.06)
    b.apply_translation([0.08, -0.03, 0.6])
    bg_v, bg_f = _plane([0.1, 0.0, 1.0], 1.2)
    rng = np.random.default_rng(3)
    return [MeshInstance(a.vertices, a.faces, rng.uniform(0, 1, (len(a.vertices), 3))),
            MeshInstance(b.vertices, b.faces, (0.2, 0.9, 0.1)), MeshInstance(bg_v, bg_f, (0.5, 0.5, 0.5))]


@pytest.mark.parametrize("threads", [1, 3])
def test_render_pixels_equals_full_render_at_those_pixels(threads):
    inst = _scene()
    full = RayCaster(K, W, H, threads=1).render(inst)
    pix = np.random.default_rng(0).permutation(W * H)[:7000]  # unordered subset
    part = RayCaster(K, W, H, threads=threads).render_pixels(inst, pix)
    assert part.depth.shape == (7000,) and part.normal.shape == (7000, 3)
    for name in ("depth", "instance", "normal", "color", "face"):
        full_field = getattr(full, name)
        np.testing.assert_array_equal(getattr(part, name), full_field.reshape(W * H, *full_field.shape[2:])[pix])
    # threads do not change the full image either
    full3 = RayCaster(K, W, H, threads=threads).render(inst)
    np.testing.assert_array_equal(full3.depth, full.depth)
    np.testing.assert_array_equal(full3.color, full.color)
    with pytest.raises(ValueError, match="pixel indices"):
        RayCaster(K, W, H).render_pixels(inst, [0, W * H])
    with pytest.raises(ValueError, match="threads"):
        RayCaster(K, W, H, threads=0)


@pytest.mark.parametrize("threads", [1, 2])
def test_render_hits_matches_the_bvh_cast(threads):
    inst = _scene()
    ref = RayCaster(K, W, H, threads=1).render(inst)
    rc = RayCaster(K, W, H, threads=threads)
    pix, hits = rc.render_hits(inst)
    hit_ref = np.flatnonzero(ref.instance.ravel() >= 0)
    assert len(hit_ref) == W * H  # the background plane fills the view
    np.testing.assert_array_equal(pix, hit_ref)
    assert (hits.instance != ref.instance.ravel()[pix]).sum() <= 3  # silhouette-edge ties at most
    same = hits.instance == ref.instance.ravel()[pix]
    np.testing.assert_allclose(hits.depth[same], ref.depth.ravel()[pix][same], rtol=2e-6)
    np.testing.assert_allclose(hits.normal[same], ref.normal.reshape(-1, 3)[pix][same], atol=1e-4)
    np.testing.assert_allclose(hits.color[same], ref.color.reshape(-1, 3)[pix][same], atol=1e-4)
    # the analytic background depth where the plane is seen
    x, y = _rays()
    n = np.array([0.1, 0.0, 1.0]) / np.linalg.norm([0.1, 0.0, 1.0])
    on_bg = hits.instance == 2
    z_bg = (1.2 / (n[0] * x + n[1] * y + n[2])).ravel()[pix]
    np.testing.assert_allclose(hits.depth[on_bg], z_bg[on_bg], rtol=1e-5)
    # moving meshes: still equal to the BVH cast of the moved scene
    moved = [MeshInstance(m.vertices + [0.01, -0.02, 0.05], m.faces, m.colors) for m in inst]
    pix2, hits2 = rc.render_hits(moved)
    ref2 = RayCaster(K, W, H).render(moved)
    assert (hits2.instance != ref2.instance.ravel()[pix2]).sum() <= 3


def test_render_hits_small_objects_and_behind_camera_fallback():
    inst = _scene()[:2]
    ref = RayCaster(K, W, H).render(inst)
    pix, hits = RayCaster(K, W, H).render_hits(inst)
    hit_ref = np.flatnonzero(ref.instance.ravel() >= 0)
    assert 500 < len(pix) < W * H // 2
    pix2, hits2 = RayCaster(K, W, H, threads=2).render_hits(inst)  # rows split over 2 launches
    np.testing.assert_array_equal(pix2, pix)
    np.testing.assert_array_equal(hits2.depth, hits.depth)
    np.testing.assert_array_equal(hits2.face, hits.face)
    assert len(np.setxor1d(pix, hit_ref)) <= 3  # rays exactly through a silhouette edge may differ
    # a mesh reaching behind the camera: BVH fallback, same as render
    v, f = _plane([0, 0, 1.0], 0.5)
    v = v.copy()
    v[0, 2] = -1.0  # one corner behind the camera: the projection is not a triangle any more
    ref = RayCaster(K, W, H).render([MeshInstance(v, f)])
    pix, hits = RayCaster(K, W, H).render_hits([MeshInstance(v, f)])
    np.testing.assert_array_equal(pix, np.flatnonzero(ref.instance.ravel() >= 0))
    np.testing.assert_array_equal(hits.depth, ref.depth.ravel()[pix])


def test_synth_fast_render_equals_one_merged_cast():
    """The synthetic renderer (cached background + foreground cast inside projected boxes +
    z-test) gives the same ids and depth as ray-casting every instance together."""
    import torch

    from hp_ros.core import synth as S

    seq = S.generate_sequence(S.SynthConfig(duration_s=1.0, seed=2, render=False))
    fr = S._FrameRenderer(seq)
    k = seq.num_frames // 2
    frame = fr.render(k)
    T = seq.T_cam_obj[k]
    hv, _, _ = fr.hand.posed_mesh(torch.as_tensor(seq.q_frames_true[k])[None], base=fr.T_base[k:k + 1])
    mv = (fr.marker_v[None] + seq.fingertips_cam_true[k][:, None]).reshape(-1, 3)
    inst = [MeshInstance(fr.obj_v @ T[:3, :3].T + T[:3, 3], fr.obj_f, fr.obj_c),
            MeshInstance(hv[0].numpy(), fr.hand_f, fr.hand_c), MeshInstance(mv, fr.marker_f, fr.marker_c),
            MeshInstance(*S._background_mesh(seq))]
    ref = RayCaster(seq.K, seq.width, seq.height, max_depth=20.0).render(inst)
    assert (ref.instance == 0).sum() > 1000 and (ref.instance == 1).sum() > 1000 and (ref.instance == 2).any()
    # render_hits' triangle test differs from the BVH's in float rounding only: ids agree but for
    # a handful of pixels exactly on a silhouette edge, depth to float precision
    assert (frame["instance"] != ref.instance).sum() <= 5
    np.testing.assert_allclose(frame["depth_true"], ref.depth, rtol=1e-5, atol=1e-6)
    # shading before noise: the fast path's linear RGB equals shading the merged cast
    lin = fr.bg["linear_rgb"].reshape(seq.height, seq.width, 3)
    ref_lin = S._shade_linear(ref.normal, ref.color, seq.scene)
    bg = ref.instance == 3
    np.testing.assert_allclose(lin[bg], ref_lin[bg], rtol=1e-6, atol=1e-4)
