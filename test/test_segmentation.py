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


def _ycb_model(shared_data, name):
    from hp_ros.core.objects import ObjectModel
    return ObjectModel.load(shared_data / "ycb" / "eleramp_ycbv_reoriented" / name / "textured_simple_reoriented.obj",
                            units="m")


def _kept_extent(mask, depth, K):
    """3D size of a mask's valid points, computed independently of S.extent_3d (covariance
    eigenvectors instead of an SVD, full point set)."""
    v, u = np.nonzero(mask & (depth > 0))
    if len(v) < 10:
        return float("nan")   # not checkable: the size check passes such components unchanged
    z = depth[v, u].astype(np.float64)
    p = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], -1)
    p -= p.mean(0)
    _, vecs = np.linalg.eigh(p.T @ p)
    q = p @ vecs
    return float(np.linalg.norm(np.percentile(q, 95, 0) - np.percentile(q, 5, 0)))


@pytest.mark.shared_data
def test_real_frames_run_and_object_size_check(shared_data):
    """Every real RGB-D frame runs through the colour, depth and combined backends; the object-size
    check (known object model) rejects what is not of the object's size."""
    import cv2
    real = shared_data / "real"
    frames = sorted((real / "posecnn_ycbvideo_demo_frames").glob("*-color.png"))
    assert len(frames) == 5
    Kp = np.array([[1066.778, 0, 312.9869], [0, 1067.487, 241.3109], [0, 0, 1]])
    can = _ycb_model(shared_data, "YcbTomatoSoupCan")   # on frame 3 (untextured mesh: size only)
    scene = dict(workspace_frame="camera", workspace_box=(-0.3, -0.3, 0.3, 0.3, 0.3, 1.5))
    for f in frames:
        rgb = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)
        depth = S.depth_to_metres(cv2.imread(str(f).replace("-color", "-depth"), cv2.IMREAD_UNCHANGED), "16UC1", 1e-4)
        for backend in ("color", "depth", "color|depth", "color+depth"):
            for size in (0.0, -1.0):
                sg = S.Segmenter(Kp, 640, 480, None, S.SegmenterConfig(object_backend=backend, object_size=size,
                                                                       **scene), object_model=can)
                r = sg.segment(rgb, depth)
                assert r.object_mask.shape == (480, 640) and 0 <= r.object_confidence <= 1
                if size and r.object_mask.any():   # what is kept has the can's size (factor 2)
                    e = _kept_extent(r.object_mask, depth, Kp)
                    assert np.isnan(e) or can.diameter / 2 <= e <= 2 * can.diameter, (f.name, backend, e)
    # frame 3, depth only: the box holds table + objects as one blob, far larger than the can
    rgb = cv2.cvtColor(cv2.imread(str(frames[2])), cv2.COLOR_BGR2RGB)
    depth = S.depth_to_metres(cv2.imread(str(frames[2]).replace("-color", "-depth"), cv2.IMREAD_UNCHANGED), "16UC1", 1e-4)
    blob = S.Segmenter(Kp, 640, 480, None, S.SegmenterConfig(object_backend="depth", **scene)).segment(rgb, depth)
    assert _kept_extent(blob.object_mask, depth, Kp) > 2 * can.diameter
    checked = S.Segmenter(Kp, 640, 480, None, S.SegmenterConfig(object_backend="depth", object_size=-1, **scene),
                          object_model=can).segment(rgb, depth)
    assert not checked.object_mask.any() and checked.object_confidence == 0.0
    assert not checked.observation.valid


def _hope(shared_data):
    import cv2
    from hp_ros.core.objects import ObjectModel
    d = shared_data / "real" / "diffdope_hope_example"
    if not (d / "scene" / "seg.png").exists():
        pytest.skip("diffdope frame absent")
    rgb = cv2.cvtColor(cv2.imread(str(d / "scene" / "rgb.png")), cv2.COLOR_BGR2RGB)
    depth = S.depth_to_metres(cv2.imread(str(d / "scene" / "depth.png"), cv2.IMREAD_UNCHANGED), "16UC1")
    gt = cv2.imread(str(d / "scene" / "seg.png"), cv2.IMREAD_UNCHANGED) > 0   # scoring only
    obj = ObjectModel.load(d / "mesh" / "AlphabetSoup.ply", units="mm")
    Kh = np.array([[1390.53, 0, 964.957], [0, 1386.99, 522.586], [0, 0, 1]])
    return rgb, depth, gt, obj, Kh


# GT-free setting for the diffdope frame: everything from the known object model (colour
# histogram of its texture, size check against its diameter), the whole scene as workspace.
HOPE_SETTINGS = dict(color_model="object", object_size=-1, histogram_threshold=0.3, workspace_frame="camera",
                     workspace_box=(-1.0, -1.0, 0.3, 1.0, 1.0, 1.2), min_area=500, open_px=2, close_px=3)


@pytest.mark.shared_data
def test_hope_frame_runs_through_colour_and_depth_backends(shared_data):
    rgb, depth, gt, obj, Kh = _hope(shared_data)
    for backend in ("color", "depth", "color|depth", "color+depth"):
        r = S.Segmenter(Kh, 1920, 1080, None, S.SegmenterConfig(object_backend=backend, **HOPE_SETTINGS),
                        object_model=obj).segment(rgb, depth)
        assert r.object_mask.shape == gt.shape and 0 <= r.object_confidence <= 1
        if r.object_mask.any():
            e = _kept_extent(r.object_mask, depth, Kh)
            assert np.isnan(e) or obj.diameter / 2 <= e <= 2 * obj.diameter, (backend, e)


@pytest.mark.shared_data
@pytest.mark.xfail(reason="GT-free colour setting on the HOPE frame (object lying among 17 similar toys on a grey "
                   "couch): the texture's colours do not transfer (camera hue ~20-30 deg off the texture's blue, 46 % "
                   "of the object is achromatic like the couch): IoU 0.00 for colour/depth with the model colour+size; "
                   "a convexity depth segmentation reaches 0.76 only with the right segment picked by hand. Measured "
                   "figure kept as a record; the pose-prior 'model' backend below is the answer", strict=False)
def test_hope_mask_iou_colour_only_gt_free(shared_data):
    rgb, depth, gt, obj, Kh = _hope(shared_data)
    cfg = S.SegmenterConfig(object_backend="color", **HOPE_SETTINGS)
    r = S.Segmenter(Kh, 1920, 1080, None, cfg, object_model=obj).segment(rgb, depth)
    assert mask_iou(r.object_mask, gt)[0] >= 0.8


# reference pose of the HOPE mesh in the camera (SOURCES.md; mesh in mm -> metres)
HOPE_T_REF = np.eye(4)
HOPE_T_REF[:3, :3] = np.reshape([-0.791346, 0.075847, 0.606646, 0.465293, 0.718378, 0.517141,
                                 -0.396577, 0.691506, -0.603776], (3, 3))
HOPE_T_REF[:3, 3] = np.array([-161.169, 206.221, 747.151]) / 1000.0


def _perturbed(T, rng, pos_sigma=0.01, rot_deg=5.0):
    """``T`` with a random translation (``pos_sigma`` per axis) and rotation (rotation vector of
    ``rot_deg / sqrt(3)`` per axis, ~``rot_deg`` in total) applied in the camera frame."""
    from scipy.spatial.transform import Rotation
    out = np.array(T, dtype=np.float64)
    out[:3, 3] = out[:3, 3] + rng.normal(0, pos_sigma, 3)
    out[:3, :3] = Rotation.from_rotvec(rng.normal(0, np.radians(rot_deg) / np.sqrt(3), 3)).as_matrix() @ out[:3, :3]
    return out


@pytest.fixture(scope="module")
def hope_model(shared_data):
    rgb, depth, gt, obj, Kh = _hope(shared_data)
    sg = S.Segmenter(Kh, 1920, 1080, None, S.SegmenterConfig(object_backend="model"), object_model=obj)
    return rgb, depth, gt, sg


@pytest.mark.shared_data
def test_hope_model_backend_mask_iou_from_perturbed_reference_pose(hope_model):
    """Pose prior = the reference pose with ~1 cm / ~5 deg random error: the depth refinement
    earns the IoU (the reference pose rendered as is scores ~0.78, itself ~2 cm off the depth)."""
    rgb, depth, gt, sg = hope_model
    unrefined = sg.model_masker.render(HOPE_T_REF, (0, 0, 1920, 1080))
    assert mask_iou(np.isfinite(unrefined), gt)[0] < 0.8
    ious = []
    for seed in range(5):
        prior = _perturbed(HOPE_T_REF, np.random.default_rng(seed))
        r = sg.segment(rgb, depth, T_cam_obj_prior=prior, prior_pos_sigma=0.01)
        ious.append(mask_iou(r.object_mask, gt)[0])
        assert r.object_confidence > 0.8 and r.observation.valid
        T = r.observation.pose
        assert T.shape == (4, 4) and np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-6)
    assert min(ious) >= 0.8, ious


@pytest.mark.shared_data
def test_hope_model_backend_follows_the_prior(hope_model):
    """Control: the mask comes from the prior, not from anything else in the frame. A prior 10 cm
    to the side lands on other toys (low IoU); one 15 cm in front of the couch, in free space,
    gives no mask and zero confidence; no prior gives no mask."""
    rgb, depth, gt, sg = hope_model
    aside = HOPE_T_REF.copy()
    aside[:3, 3] += (0.10, 0.0, 0.0)
    r = sg.segment(rgb, depth, T_cam_obj_prior=aside, prior_pos_sigma=0.01)
    assert mask_iou(r.object_mask, gt)[0] < 0.2
    assert np.linalg.norm(r.observation.pose[:3, 3] - aside[:3, 3]) < 0.06   # stayed near its prior
    floating = HOPE_T_REF.copy()
    floating[:3, 3] *= 0.8   # along the viewing ray, ~15 cm towards the camera
    r = sg.segment(rgb, depth, T_cam_obj_prior=floating)
    assert r.object_confidence < 0.1 and r.object_mask.sum() < 0.1 * gt.sum()
    r = sg.segment(rgb, depth)
    assert not r.object_mask.any() and r.object_confidence == 0.0 and r.observation.pose is None


def test_object_surface_colors_are_area_weighted():
    """Texture look-up at barycentric UVs weights colours by surface area; vertex colours are
    interpolated when there is no texture."""
    import trimesh
    from hp_ros.core.objects import ObjectModel
    # quad A (area 1) textured red, quad B (area 3) blue, each on half of the texture
    v = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [2, 0, 0], [5, 0, 0], [5, 1, 0], [2, 1, 0]], float)
    f = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    uv = np.array([[.05, .1], [.4, .1], [.4, .9], [.05, .9], [.6, .1], [.95, .1], [.95, .9], [.6, .9]])
    tex = np.zeros((4, 8, 3))
    tex[:, :4, 0] = 1.0
    tex[:, 4:, 2] = 1.0
    obj = ObjectModel(trimesh.Trimesh(v * 0.01, f, process=False), uv=uv, texture=tex)
    c = S.object_surface_colors(obj, 20000)
    assert c.shape == (20000, 3) and c.dtype == np.uint8
    red = np.all(c == (255, 0, 0), axis=1).mean()
    blue = np.all(c == (0, 0, 255), axis=1).mean()
    assert red + blue == 1.0
    assert red == pytest.approx(0.25, abs=0.015)          # by area, not by texel or vertex count
    tri = ObjectModel(trimesh.Trimesh(v[:3] * 0.01, f[:1], process=False), vertex_colors=np.eye(3))
    np.testing.assert_allclose(S.object_surface_colors(tri, 20000).mean(0), [85, 85, 85], atol=2.0)


def test_color_model_from_object_model_on_synthetic_sequence(seq, hand):
    """The colour histogram learned from the object model alone (no first mask) segments the
    rendered object; size check against the model's diameter on."""
    from hp_ros.core.objects import ObjectModel
    obj = ObjectModel.builtin("cracker_box")
    cfg = S.SegmenterConfig(object_backend="color", color_model="object", object_size=-1, histogram_threshold=0.3,
                            workspace_box=BOX)
    sg = S.Segmenter(seq.K, seq.width, seq.height, hand, cfg, object_model=obj)
    assert sg.hist_model.ready and sg.object_size == pytest.approx(obj.diameter)
    iou = [mask_iou(sg.segment(seq.rgb[k], S.depth_to_metres(seq.depth_mm[k], "16UC1"), _q_at(seq, k),
                               seq.T_cam_hand_published).object_mask, seq.object_mask[k])[0]
           for k in range(seq.num_frames)]
    assert np.mean(iou) >= 0.9, iou
    with pytest.raises(ValueError, match="object model"):
        S.Segmenter(K, 640, 480, None, S.SegmenterConfig(object_backend="color", color_model="object"))
    with pytest.raises(RuntimeError, match="from_object_model"):
        S.HistogramColorModel().relative_to(None)


def test_clean_mask_prefers_the_component_of_the_object_size():
    """Two fronto-parallel rectangles: the larger image blob is ~3x too big in 3D and loses."""
    m = np.zeros((200, 300), bool)
    m[20:80, 20:80] = True            # 60 x 60 px at 1.0 m: 0.098 m sides
    m[120:140, 200:240] = True        # 40 x 20 px at 0.5 m: 0.033 x 0.016 m
    depth = np.where(np.arange(300)[None, :] < 150, 1.0, 0.5) * np.ones((200, 1))
    v, u = np.mgrid[0:200, 0:300]
    pts = np.stack([(u - K[0, 2]) / K[0, 0] * depth, (v - K[1, 2]) / K[1, 1] * depth, depth], -1)
    px = 0.5 / K[0, 0]                # metres per pixel at 0.5 m
    size = px * np.hypot(40, 20)      # the small rectangle's diagonal
    r = S.clean_mask(m, min_area=10, open_px=0, close_px=0, points=pts, expected_size=size)
    assert r.mask[130, 220] and not r.mask[50, 50]
    # 5-95 % span of n pixel centres (linear percentiles): 0.9 (n - 1) pixels per axis
    e_small = px * np.hypot(0.9 * 39, 0.9 * 19)
    assert S.extent_3d(pts[m & (u > 150)]) == pytest.approx(e_small, rel=1e-6)
    assert r.confidence == pytest.approx(800 / 4400 * e_small / size, rel=1e-6)
    assert S.clean_mask(m, min_area=10, open_px=0, close_px=0).mask[50, 50]     # no check: the largest
    none = S.clean_mask(m & (u < 150), min_area=10, open_px=0, close_px=0, points=pts, expected_size=size)
    assert not none.mask.any() and none.confidence == 0.0                       # >2x too large: rejected
    with pytest.raises(ValueError, match="points must be"):
        S.clean_mask(m, points=pts[:10], expected_size=size)


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


def test_model_backend_on_synthetic_sequence_with_hand(seq, hand):
    """Model backend with the ground-truth pose perturbed by ~1 cm / ~5 deg as prior: object IoU
    >= 0.9 on every frame with the hand holding the object (hand pixels kept out), pose refined
    against depth, and nothing without a prior."""
    from hp_ros.core.objects import ObjectModel
    obj = ObjectModel.builtin("cracker_box")
    sg = S.Segmenter(seq.K, seq.width, seq.height, hand, S.SegmenterConfig(object_backend="model", workspace_box=BOX),
                     object_model=obj)
    rng = np.random.default_rng(7)
    ious, err_prior, err_model = [], [], []
    for k in range(seq.num_frames):
        depth = S.depth_to_metres(seq.depth_mm[k], "16UC1")
        prior = _perturbed(seq.T_cam_obj[k], rng)
        r = sg.segment(seq.rgb[k], depth, _q_at(seq, k), seq.T_cam_hand_published, T_cam_obj_prior=prior,
                       prior_pos_sigma=0.01)
        ious.append(mask_iou(r.object_mask, seq.object_mask[k])[0])
        assert (r.object_mask & seq.hand_mask[k]).sum() <= 0.01 * r.object_mask.sum()
        assert 0.8 < r.object_confidence <= 1.0
        err_prior.append(np.linalg.norm(prior[:3, 3] - seq.T_cam_obj[k][:3, 3]))
        err_model.append(np.linalg.norm(r.observation.pose[:3, 3] - seq.T_cam_obj[k][:3, 3]))
    assert min(ious) >= 0.9, ious
    assert max(err_model) < 0.003 and np.mean(err_model) < 0.2 * np.mean(err_prior), (err_model, err_prior)
    # no prior: the model backend has no input; model|depth falls back to depth at half confidence
    r = sg.segment(seq.rgb[0], S.depth_to_metres(seq.depth_mm[0], "16UC1"), _q_at(seq, 0), seq.T_cam_hand_published)
    assert not r.object_mask.any() and r.object_confidence == 0.0 and r.observation.pose is None
    both = S.Segmenter(seq.K, seq.width, seq.height, hand,
                       S.SegmenterConfig(object_backend="model|depth", workspace_box=BOX), object_model=obj)
    depth = S.depth_to_metres(seq.depth_mm[0], "16UC1")
    alone = both.segment(seq.rgb[0], depth, _q_at(seq, 0), seq.T_cam_hand_published)
    assert "model" not in alone.raw and "depth" in alone.raw
    with_prior = both.segment(seq.rgb[0], depth, _q_at(seq, 0), seq.T_cam_hand_published,
                              T_cam_obj_prior=_perturbed(seq.T_cam_obj[0], rng))
    assert mask_iou(with_prior.object_mask, seq.object_mask[0])[0] >= 0.9
    assert alone.object_confidence <= 0.5 < with_prior.object_confidence


def test_model_backend_configuration_errors():
    from hp_ros.core.objects import ObjectModel
    assert S.parse_combination("model+color") == (["model", "color"], "+")
    with pytest.raises(ValueError, match="object model"):
        S.Segmenter(K, 640, 480, None, S.SegmenterConfig(object_backend="model"))
    for bad, match in ((dict(model_tolerance=0.03), "model_tolerance"), (dict(model_margin=0.1), "model_max_margin"),
                       (dict(model_scale=0.0), "model_scale"), (dict(model_icp_iterations=-1), "model_icp_iterations"),
                       (dict(model_dilate_px=1.5), "model_dilate_px")):
        with pytest.raises(ValueError, match=match):
            S.Segmenter(K, 640, 480, None, S.SegmenterConfig(object_backend="color", **bad))
    sg = S.Segmenter(K, 640, 480, None, S.SegmenterConfig(object_backend="model"),
                     object_model=ObjectModel.builtin("soup_can"))
    rgb, depth = np.zeros((480, 640, 3), np.uint8), np.full((480, 640), 0.5, np.float32)
    with pytest.raises(ValueError, match="T_cam_obj_prior"):
        sg.segment(rgb, depth, T_cam_obj_prior=np.eye(3))
    with pytest.raises(ValueError, match="prior_pos_sigma"):
        sg.segment(rgb, depth, T_cam_obj_prior=np.eye(4), prior_pos_sigma=-1.0)


def test_model_backend_falls_back_without_a_prior(seq, hand):
    """object_backend model with fallback_backend color|depth (the node's default): a frame without
    the tracker's pose (before the first, after LOST) is segmented by the fallback, a frame with one
    by the model backend alone; both find the object (IoU >= 0.9 against ground truth)."""
    from hp_ros.core.objects import ObjectModel
    sg = S.Segmenter(seq.K, seq.width, seq.height, hand,
                     S.SegmenterConfig(object_backend="model", fallback_backend="color|depth", workspace_box=BOX,
                                       hsv_ranges=(0, 100, 60, 180, 255, 255)),
                     object_model=ObjectModel.builtin("cracker_box"))
    depth = S.depth_to_metres(seq.depth_mm[1], "16UC1")
    args = (seq.rgb[1], depth, _q_at(seq, 1), seq.T_cam_hand_published)
    alone = sg.segment(*args)
    assert sg.active_backend == "color|depth" and alone.observation.backend == "color|depth"
    assert alone.observation.pose is None and "depth" in alone.raw
    fitted = sg.segment(*args, T_cam_obj_prior=_perturbed(seq.T_cam_obj[1], np.random.default_rng(2), 0.003, 2.0),
                        prior_pos_sigma=0.003)
    assert sg.active_backend == "model" and fitted.observation.pose is not None and "depth" not in fitted.raw
    for r in (alone, fitted):
        assert mask_iou(r.object_mask, seq.object_mask[1])[0] >= 0.9
    with pytest.raises(ValueError, match="fallback_backend"):
        S.Segmenter(K, 640, 480, None, S.SegmenterConfig(object_backend="model", fallback_backend="model|depth"),
                    object_model=ObjectModel.builtin("cracker_box"))


def test_model_backend_searches_only_when_the_direct_fit_is_poor(seq, hand, monkeypatch):
    """Tracking (a prior known to within the final gate after a confident fit): the fit refines the
    prior directly, without the coarse search, and gets the pose from 2 cm off. A prior 3 cm off
    that claims 3 mm is caught by the fit's depth agreement and searched again in the same frame."""
    from hp_ros.core.objects import ObjectModel
    from hp_ros.core.segmentation.model import ModelObjectMasker
    calls = []
    search = ModelObjectMasker._coarse_search
    monkeypatch.setattr(ModelObjectMasker, "_coarse_search", lambda self, *a, **k: calls.append(1) or search(self, *a, **k))
    sg = S.Segmenter(seq.K, seq.width, seq.height, hand, S.SegmenterConfig(object_backend="model", workspace_box=BOX),
                     object_model=ObjectModel.builtin("cracker_box"))
    rng = np.random.default_rng(5)
    for k in range(seq.num_frames):
        depth = S.depth_to_metres(seq.depth_mm[k], "16UC1")
        wide = k == 0
        prior = _perturbed(seq.T_cam_obj[k], rng, 0.01 if wide else 0.002, 5.0 if wide else 1.0)
        r = sg.segment(seq.rgb[k], depth, _q_at(seq, k), seq.T_cam_hand_published, T_cam_obj_prior=prior,
                       prior_pos_sigma=0.01 if wide else 0.002)
        assert np.linalg.norm(r.observation.pose[:3, 3] - seq.T_cam_obj[k][:3, 3]) < 0.003
    assert len(calls) == 1 and sg.model_masker.searches_after_direct == 0   # only the wide first prior searched
    depth = S.depth_to_metres(seq.depth_mm[0], "16UC1")
    for off, searched in ((0.02, 0), (0.03, 1)):
        far = np.array(seq.T_cam_obj[0])
        far[:3, 3] += (off, 0.0, 0.0)
        r = sg.segment(seq.rgb[0], depth, _q_at(seq, 0), seq.T_cam_hand_published, T_cam_obj_prior=far,
                       prior_pos_sigma=0.003)
        assert sg.model_masker.searches_after_direct == searched and len(calls) == 1 + searched
        if not searched:
            assert np.linalg.norm(r.observation.pose[:3, 3] - seq.T_cam_obj[0][:3, 3]) < 0.003
            assert mask_iou(r.object_mask, seq.object_mask[0])[0] >= 0.9


def test_model_backend_warp_rows_match_the_numpy_reference(seq, hand):
    """The ICP's residual rows from the Warp kernels (hp_ros.core.segmentation.icp_rows) against the
    numpy reference (signed_distance + _visible_samples) at perturbed poses, every gate and stride,
    with and without excluded pixels: the same rows in the same order to float64 rounding; and the
    whole fit (pose, inliers, confidence, covariance) the same with either."""
    from hp_ros.core.objects import ObjectModel
    from hp_ros.core.segmentation.model import ModelObjectMasker
    mm = ModelObjectMasker(ObjectModel.builtin("cracker_box"), seq.K, seq.width, seq.height)
    rng = np.random.default_rng(11)
    for k in range(0, seq.num_frames, 3):
        depth = S.depth_to_metres(seq.depth_mm[k], "16UC1")
        exclude = seq.hand_mask[k] if k % 2 else None
        T = _perturbed(seq.T_cam_obj[k], rng, 0.004, 2.0)
        mm.rows_backend = "numpy"
        P_ref = mm._depth_points(depth, exclude, T, 0.02)
        mm.rows_backend = "warp"
        P = mm._depth_points(depth, exclude, T, 0.02)
        assert len(P) > 500 and np.array_equal(P, P_ref)
        mm._icp_rows.set_frame(depth, exclude)
        mm._icp_rows.set_points(P)
        for gate, wide in ((0.02, True), (0.012, False), (0.003, False)):
            ref = mm._rows_numpy(T, P, depth, exclude, gate, wide)
            got = mm._icp_rows.rows(T, gate, *(mm.wide_every if wide else (1, 1)))
            assert len(ref[1]) > 50 and len(ref[3]) > 50
            for a, b in zip(got, ref):
                assert a.shape == b.shape
                np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
        fits = []
        for backend in ("numpy", "warp"):
            mm.rows_backend, mm._last_confidence = backend, 0.0
            fits.append(mm.fit(depth, T, 0.004, exclude))
        a, b = fits
        assert a.inliers == b.inliers and a.confidence == b.confidence and np.array_equal(a.mask, b.mask)
        np.testing.assert_allclose(b.T_cam_obj, a.T_cam_obj, atol=1e-12)
        np.testing.assert_allclose(b.covariance, a.covariance, rtol=1e-8, atol=1e-18)
        assert np.linalg.norm(b.T_cam_obj[:3, 3] - seq.T_cam_obj[k][:3, 3]) < 0.003
