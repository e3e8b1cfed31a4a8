"""Segmentation backends against ground truth: synthetic sequences (hp_ros.core.synth), an
independent rasteriser (hp_ros.core.render), hand-computed values, and a real RGB-D frame."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hp_ros.core import segmentation as S
from hp_ros.core.metrics import mask_iou

K = np.array([[615.0, 0, 322.0], [0, 615.0, 247.0], [0, 0, 1]])
BOX = (0.005, -0.15, -0.08, 0.25, 0.15, 0.20)


@pytest.fixture(scope="module")
def hand():
    from hp_ros.core.hand import HandModel
    return HandModel.default()


@pytest.fixture(scope="module")
def seq():
    from hp_ros.core.synth import SynthConfig, generate_sequence
    return generate_sequence(SynthConfig(object="builtin:cracker_box", duration_s=0.8, fps=10, seed=3))


def _q_at(seq, k):
    j = min(np.searchsorted(seq.joint_stamps_ns, seq.frame_stamps_ns[k]), len(seq.joint_stamps_ns) - 1)
    return seq.joint_positions[j]


def _run(seq, hand, cfg):
    sg = S.Segmenter(seq.K, seq.width, seq.height, hand, cfg)
    out = []
    for k in range(seq.num_frames):
        out.append(sg.segment(seq.rgb[k], S.depth_to_metres(seq.depth_mm[k], "16UC1"), _q_at(seq, k),
                              seq.T_cam_hand_published))
    return out


def test_synthetic_depth_and_color_backends_hand_mask_and_fingertips(seq, hand):
    cols = np.asarray(seq.marker_colors).reshape(-1) * 255
    common = dict(workspace_box=BOX, marker_colors=cols, marker_radius=seq.marker_radius)
    depth = _run(seq, hand, S.SegmenterConfig(object_backend="depth", **common))
    color = _run(seq, hand, S.SegmenterConfig(object_backend="color", hsv_ranges=(0, 100, 60, 180, 255, 255), **common))
    iou_d = [mask_iou(r.object_mask, m)[0] for r, m in zip(depth, seq.object_mask)]
    iou_c = [mask_iou(r.object_mask, m)[0] for r, m in zip(color, seq.object_mask)]
    iou_h = [mask_iou(r.hand_mask, m)[0] for r, m in zip(depth, seq.hand_mask)]
    err = np.concatenate([np.linalg.norm(r.fingertips.uv - t, axis=1) for r, t in zip(depth, seq.fingertips_px_true)])
    assert np.mean(iou_d) >= 0.9, iou_d
    assert np.mean(iou_c) >= 0.9, iou_c
    assert np.mean(iou_h) >= 0.95, iou_h  # published calibration (with error), corrected against depth
    assert np.isfinite(err).mean() >= 0.75
    assert np.nanmedian(err) <= 3.0, err
    for r in depth:
        o = r.observation
        assert o.valid and 0 < o.confidence <= 1
        assert o.median_depth == pytest.approx(np.median(seq.depth_mm[0][seq.object_mask[0]]) / 1000, abs=0.08)


def test_hand_silhouette_matches_independent_rasteriser(hand):
    from hp_ros.core.camera import project_points
    from hp_ros.core.render import rasterize
    from scipy.spatial.transform import Rotation
    for seed in range(2):
        q = hand.random_q(1, torch.Generator().manual_seed(seed)) * 0.5
        T = np.eye(4)
        T[:3, :3] = Rotation.random(random_state=seed).as_matrix()
        T[:3, 3] = [0.01, -0.02, 0.45]
        r = S.HandMasker(hand, K, 640, 480).render(q[0].numpy(), T)
        v, f, _ = hand.posed_mesh(q, torch.tensor(T, dtype=torch.float32)[None])
        uv, z = project_points(torch.tensor(K), v.double())
        fr = rasterize(uv, z, f, (480, 640))
        ref = (fr.face[0] >= 0).numpy()
        assert mask_iou(r.silhouette, ref)[0] > 0.96
        both = ref & r.silhouette
        np.testing.assert_allclose(np.median(np.abs(r.zbuf[both] - fr.zbuf[0].numpy()[both])), 0, atol=1e-3)
        tips = hand.fingertips(q, torch.tensor(T, dtype=torch.float32)[None])[0].double().numpy()
        np.testing.assert_allclose(r.fingertips_uv, (tips @ K.T)[:, :2] / tips[:, 2:], atol=1e-3)


def test_color_conversions_and_depth_units():
    rgb = np.random.default_rng(0).integers(0, 255, (4, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(S.to_rgb(rgb[..., ::-1].copy(), "bgr8"), rgb)
    rgba = np.dstack([rgb, np.full((4, 5), 7, np.uint8)])
    np.testing.assert_array_equal(S.to_rgb(rgba, "rgba8"), rgb)
    np.testing.assert_array_equal(S.to_rgb(rgba[..., [2, 1, 0, 3]].copy(), "bgra8"), rgb)
    np.testing.assert_array_equal(S.to_rgb(rgb[..., 0].copy(), "mono8"), np.repeat(rgb[..., :1], 3, 2))
    with pytest.raises(ValueError, match="unsupported colour encoding"):
        S.to_rgb(rgb, "bgr16")
    d = np.array([[0, 1500]], np.uint16)
    np.testing.assert_allclose(S.depth_to_metres(d, "16UC1"), [[0.0, 1.5]])
    np.testing.assert_allclose(S.depth_to_metres(np.array([[np.nan, 0.7, -1]], np.float32), "32FC1"), [[0, 0.7, 0]])
    with pytest.raises(ValueError, match="unsupported depth encoding"):
        S.depth_to_metres(d, "mono16")


def test_hsv_wraps_around_red_and_rejects_bad_ranges():
    import cv2
    px = np.array([[[255, 0, 0], [255, 0, 40], [0, 255, 0], [120, 120, 120]]], np.uint8)  # red, pink-red, green, grey
    hsv = cv2.cvtColor(px, cv2.COLOR_RGB2HSV)
    m = S.HSVColorModel([170, 100, 60, 10, 255, 255]).mask(hsv)
    assert m.tolist() == [[True, True, False, False]]
    with pytest.raises(ValueError, match="6 numbers"):
        S.HSVColorModel([1, 2, 3])


def test_histogram_model_learns_object_colour():
    import cv2
    rng = np.random.default_rng(1)
    img = np.zeros((60, 80, 3), np.uint8)
    img[:] = (90, 110, 100)
    img[20:40, 30:50] = (200, 40, 30)
    img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    gt = np.zeros((60, 80), bool)
    gt[20:40, 30:50] = True
    hm = S.HistogramColorModel()
    with pytest.raises(RuntimeError, match="not learned"):
        hm.mask(cv2.cvtColor(img, cv2.COLOR_RGB2HSV))
    hm.learn(cv2.cvtColor(img, cv2.COLOR_RGB2HSV), gt)
    assert mask_iou(hm.mask(cv2.cvtColor(img, cv2.COLOR_RGB2HSV)), gt)[0] > 0.95


def test_clean_mask_keeps_largest_fills_holes_and_confidence():
    m = np.zeros((50, 60), bool)
    m[10:30, 10:30] = True
    m[15:18, 15:18] = False        # hole
    m[40:45, 50:55] = True          # small blob (25 px)
    r = S.clean_mask(m, min_area=10, open_px=0, close_px=0)
    want = np.zeros_like(m)
    want[10:30, 10:30] = True
    np.testing.assert_array_equal(r.mask, want)
    assert r.confidence == pytest.approx((400 - 9) / (400 - 9 + 25))
    assert S.clean_mask(np.zeros_like(m)).confidence == 0.0
    m[34:49, 40:55] = True          # 225 px blob next to the prior beats the 391 px one 30 px away
    near = S.clean_mask(m, min_area=10, open_px=0, close_px=0, keep="near_prior", prior_uv=(47, 41))
    assert near.mask[41, 47] and not near.mask[20, 20]


def test_object_observation_and_depth_box_in_hand_frame():
    mask = np.zeros((480, 640), bool)
    mask[100:110, 200:220] = True
    depth = np.full((480, 640), 0.5, np.float32)
    depth[100, 200] = 0.0
    o = S.object_observation(mask, K, depth)
    assert o.valid and o.area == 200 and o.bbox == (200, 100, 20, 10)
    assert (o.centroid_u, o.centroid_v) == pytest.approx((209.5, 104.5))
    assert o.median_depth == pytest.approx(0.5)
    np.testing.assert_allclose(o.center_3d, [(209.5 - 322) / 615 * 0.5, (104.5 - 247) / 615 * 0.5, 0.5])
    assert not S.object_observation(np.zeros_like(mask), K).valid
    # box in the hand frame against an explicit per-pixel transform
    from scipy.spatial.transform import Rotation
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("xyz", [0.3, -0.2, 0.5]).as_matrix()
    T[:3, 3] = [0.02, -0.01, 0.5]
    d = np.random.default_rng(2).uniform(0.3, 0.8, (480, 640)).astype(np.float32)
    box = (-0.05, -0.06, -0.04, 0.07, 0.05, 0.06)
    got = S.DepthBoxForeground(K, 640, 480, box, "hand").mask(d, T)
    v, u = np.mgrid[0:480, 0:640]
    p = np.stack([(u - K[0, 2]) / K[0, 0] * d, (v - K[1, 2]) / K[1, 1] * d, d], -1).reshape(-1, 3)
    ph = (p - T[:3, 3]) @ T[:3, :3]
    want = ((ph >= box[:3]) & (ph <= box[3:])).all(1).reshape(480, 640)
    assert (got != want).sum() <= 5 and want.sum() > 1000   # float32 ties at the faces only
    with pytest.raises(ValueError, match="min < max"):
        S.DepthBoxForeground(K, 640, 480, (0, 0, 0, 0, 1, 1))


def test_bad_configuration_is_a_clear_error():
    with pytest.raises(ValueError, match="object backend"):
        S.Segmenter(K, 640, 480, None, S.SegmenterConfig(object_backend="colour"))
    with pytest.raises(ValueError, match="detectron2"):
        S.Segmenter(K, 640, 480, None, S.SegmenterConfig(object_backend="detectron2"))
    sg = S.Segmenter(K, 640, 480, None, S.SegmenterConfig(object_backend="color"))
    with pytest.raises(ValueError, match="rgb must be"):
        sg.segment(np.zeros((10, 10, 3), np.uint8))


def test_detectron2_backend_only_when_installed(tmp_path):
    try:
        import detectron2  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="detectron2"):
            S.Detectron2Backend("cfg.yaml", "w.pkl")
        return
    pytest.skip("detectron2 installed: needs a user config and weights to test")


@pytest.mark.shared_data
@pytest.mark.xfail(reason="HOPE frame: a GT-free depth setting (camera-frame box around the documented position) "
                   "gives IoU 0.23; RANSAC support-plane removal reaches only 0.37 (soft, non-planar couch): "
                   "known gap", strict=False)
def test_real_frames_run_and_hope_mask_iou(shared_data):
    import cv2
    real = shared_data / "real"
    frames = sorted((real / "posecnn_ycbvideo_demo_frames").glob("*-color.png"))
    Kp = np.array([[1066.778, 0, 312.9869], [0, 1067.487, 241.3109], [0, 0, 1]])
    for f in frames:
        rgb = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)
        depth = cv2.imread(str(f).replace("-color", "-depth"), cv2.IMREAD_UNCHANGED)
        for backend in ("color", "depth", "color|depth"):
            sg = S.Segmenter(Kp, 640, 480, None, S.SegmenterConfig(
                object_backend=backend, workspace_frame="camera", workspace_box=(-0.3, -0.3, 0.3, 0.3, 0.3, 1.5)))
            r = sg.segment(rgb, S.depth_to_metres(depth, "16UC1", 1e-4))
            assert r.object_mask.shape == (480, 640)
    d = real / "diffdope_hope_example" / "scene"
    if not (d / "seg.png").exists():
        pytest.skip("diffdope frame absent")
    rgb = cv2.cvtColor(cv2.imread(str(d / "rgb.png")), cv2.COLOR_BGR2RGB)
    depth = cv2.imread(str(d / "depth.png"), cv2.IMREAD_UNCHANGED)
    gt = cv2.imread(str(d / "seg.png"), cv2.IMREAD_UNCHANGED) > 0
    Kh = np.array([[1390.53, 0, 964.957], [0, 1386.99, 522.586], [0, 0, 1]])
    cfg = S.SegmenterConfig(**HOPE_SETTINGS)
    r = S.Segmenter(Kh, 1920, 1080, None, cfg).segment(rgb, S.depth_to_metres(depth, "16UC1"))
    assert mask_iou(r.object_mask, gt)[0] >= 0.8


# Principled setting for the diffdope frame (no use of seg.png): a camera-frame workspace box of
# the object's size around its documented reference position t = (-0.161, 0.206, 0.747) m,
# cut just above the couch surface, and the largest component.
HOPE_SETTINGS = dict(object_backend="depth", workspace_frame="camera",
                     workspace_box=(-0.25, 0.12, 0.66, -0.07, 0.30, 0.80), min_area=500, open_px=2, close_px=3)


def test_hand_aligner_recovers_calibration_error(seq, hand):
    """ICP against depth moves the published camera->hand towards the true one."""
    import cv2
    al = S.HandAligner(hand, seq.K, seq.width, seq.height, marker_radius=seq.marker_radius)
    hm = S.HandMasker(hand, seq.K, seq.width, seq.height, marker_radius=seq.marker_radius)
    T_pub, T_true = seq.T_cam_hand_published, seq.T_cam_hand_true
    for k in range(4):
        d = S.depth_to_metres(seq.depth_mm[k], "16UC1")
        T = al.update(seq.q_frames_true[k], T_pub, d, hm.render(seq.q_frames_true[k], al.correction @ T_pub))
    # error of the hand's fingertips (what the masks depend on), before and after
    tips = hand.fingertips(torch.tensor(seq.q_frames_true[3:4], dtype=torch.float32))[0].double().numpy()
    err = lambda A: np.linalg.norm((tips @ A[:3, :3].T + A[:3, 3]) - (tips @ T_true[:3, :3].T + T_true[:3, 3]), axis=1).max()
    assert err(T_pub) > 0.002
    assert err(T) < 0.5 * err(T_pub), (err(T), err(T_pub))
    assert np.linalg.norm(cv2.Rodrigues(al.correction[:3, :3])[0]) < 0.05


def test_color_or_depth_union_rejects_background_of_object_colour(seq, hand):
    """color|depth: colour pixels whose depth lies outside the workspace are not object."""
    k = 2
    rgb = seq.rgb[k].copy()
    patch = (slice(400, 475), slice(10, 630))   # object-coloured background patch, larger than the object
    assert not (seq.object_mask[k][patch].any() or seq.hand_mask[k][patch].any())
    assert 75 * 620 > seq.object_mask[k].sum()
    rgb[patch] = np.median(rgb[seq.object_mask[k]], 0).astype(np.uint8)
    cfg = S.SegmenterConfig(object_backend="color|depth", workspace_box=BOX, color_in_workspace=False,
                            hsv_ranges=(0, 100, 60, 180, 255, 255))
    sg = S.Segmenter(seq.K, seq.width, seq.height, hand, cfg)
    q = _q_at(seq, k)
    r = sg.segment(rgb, S.depth_to_metres(seq.depth_mm[k], "16UC1"), q, seq.T_cam_hand_published)
    assert mask_iou(r.object_mask, seq.object_mask[k])[0] >= 0.9
