"""The Warp z-buffer (hp_ros.core.zbuffer) against the torch rasteriser and exact ray-plane depth."""
import numpy as np
import pytest
import torch
import trimesh

from hp_ros.core import se3
from hp_ros.core.render import rasterize
from hp_ros.core.zbuffer import ZBuffer, zbuffer

K = np.array([[615.0, 0.0, 160.0], [0.0, 615.0, 120.0], [0.0, 0.0, 1.0]])


def project(p):
    return np.stack([K[0, 0] * p[:, 0] / p[:, 2] + K[0, 2], K[1, 1] * p[:, 1] / p[:, 2] + K[1, 2]], -1)


def posed_hand():
    from hp_ros.core.hand import HandModel

    hand = HandModel.default(dtype=torch.float64)
    base = se3.make_pose(se3.so3_exp(torch.tensor([0.0, -1.5708, 0.3], dtype=torch.float64)),
                         torch.tensor([0.0, 0.02, 0.35], dtype=torch.float64))[None]
    q = hand.zero_q(1).to(torch.float64) + 0.3
    verts, faces, _ = hand.posed_mesh(q, base)
    return verts[0].detach().numpy(), faces.numpy()


def test_matches_the_torch_rasteriser_on_the_hand():
    v, f = posed_hand()
    uv, z = project(v), v[:, 2]
    ref = rasterize(torch.from_numpy(uv).float()[None], torch.from_numpy(z).float()[None],
                    torch.from_numpy(f).long(), (240, 320), near=0.01).zbuf[0].numpy()
    out = zbuffer(uv, z, f, (240, 320), near=0.01)
    hit_ref, hit = np.isfinite(ref), np.isfinite(out)
    assert hit_ref.sum() > 5000, "the hand must cover the image"
    assert (hit != hit_ref).sum() <= 2, "coverage (pixel centre inside, edges inclusive) differs"
    both = hit & hit_ref
    assert np.abs(out[both] - ref[both]).max() < 2e-4
    # a closed mesh: its nearest surface is always a camera-facing face
    front = ZBuffer(f, len(v))(uv, z, (240, 320), near=0.01, front_only=True)
    np.testing.assert_allclose(front[both], out[both], atol=2e-4)
    # and the back faces alone lie behind it wherever both are drawn
    e1, e2 = uv[f[:, 1]] - uv[f[:, 0]], uv[f[:, 2]] - uv[f[:, 0]]
    back = f[e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0] > 0]
    behind = zbuffer(uv, z, back, (240, 320), near=0.01)
    seen = np.isfinite(behind) & hit
    assert seen.sum() > 1000 and (behind[seen] >= out[seen] - 1e-5).all()


def test_depth_is_perspective_correct():
    """A tilted triangle: each covered pixel's depth is where its ray meets the triangle's plane."""
    tri = np.array([[-0.05, -0.04, 0.30], [0.06, -0.03, 0.45], [0.0, 0.05, 0.38]])
    out = zbuffer(project(tri), tri[:, 2], np.array([[0, 1, 2]]), (240, 320))
    ys, xs = np.nonzero(np.isfinite(out))
    assert len(xs) > 1000
    n = np.cross(tri[1] - tri[0], tri[2] - tri[0])
    rays = np.stack([(xs - K[0, 2]) / K[0, 0], (ys - K[1, 2]) / K[1, 1], np.ones(len(xs))], -1)
    np.testing.assert_allclose(out[ys, xs], (n @ tri[0]) / (rays @ n), rtol=1e-5)
    # pixel centres outside the triangle stay empty: the covered count is its area in pixels
    a = project(tri)
    e1, e2 = a[1] - a[0], a[2] - a[0]
    area = 0.5 * abs(e1[0] * e2[1] - e1[1] * e2[0])
    assert abs(len(xs) - area) < 0.05 * area


def test_box_nearest_face_wins_and_near_plane_clips():
    box = trimesh.creation.box((0.1, 0.1, 0.1))
    v = box.vertices + [0.0, 0.0, 0.4]
    out = zbuffer(project(v), v[:, 2], box.faces, (240, 320))
    assert np.isclose(out[120, 160], 0.35, atol=1e-6)    # the front face, not the back one at 0.45
    # faces with a vertex before the near plane are skipped: the front and the sides go, the back stays
    clipped = zbuffer(project(v), v[:, 2], box.faces, (240, 320), near=0.36)
    assert np.isclose(clipped[120, 160], 0.45, atol=1e-6)
    assert np.isfinite(clipped).sum() < 0.7 * np.isfinite(out).sum()


def test_bad_input():
    tri = np.array([[0, 1, 2]])
    with pytest.raises(ValueError):
        ZBuffer(np.array([[0, 1, 3]]), 3)
    with pytest.raises(ValueError):
        ZBuffer(tri, 3)(np.zeros((4, 2)), np.ones(4), (10, 10))
    # faces with a non-finite vertex are skipped (not a crash, not a huge triangle); an empty image is empty
    uv = np.array([[np.nan, 1.0], [5.0, np.inf], [2.0, 8.0]])
    assert not np.isfinite(zbuffer(uv, np.ones(3), tri, (10, 10))).any()
    ok = np.array([[1.0, 1.0], [8.0, 1.0], [1.0, 8.0]])
    assert np.isfinite(zbuffer(ok, np.ones(3), tri, (10, 10))).sum() > 20
    assert not np.isfinite(zbuffer(ok, np.array([1.0, np.nan, 1.0]), tri, (10, 10))).any()
    assert zbuffer(np.zeros((3, 2)), np.ones(3), tri, (0, 10)).shape == (0, 10)


def test_one_instance_over_changing_sizes_and_settings_matches_fresh_ones():
    """A ZBuffer keeps one recorded launch and a raster that grows: rasters of changing sizes,
    near planes and front_only in any order equal those of a new instance each time (no depth
    left over from a larger earlier raster, no stale setting)."""
    v, f = posed_hand()
    uv, z = project(v), v[:, 2]
    zb = ZBuffer(f, len(v))
    for size, near, front in (((120, 160), 0.01, True), ((240, 320), 0.01, False), ((60, 200), 0.36, True),
                              ((240, 100), 0.01, True), ((7, 9), 0.01, False)):
        got = zb(uv * (size[1] / 320.0), z, size, near=near, front_only=front)
        ref = ZBuffer(f, len(v))(uv * (size[1] / 320.0), z, size, near=near, front_only=front)
        assert got.shape == size and np.array_equal(got, ref)
        assert np.isfinite(got).any()
