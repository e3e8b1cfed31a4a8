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
