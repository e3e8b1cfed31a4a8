"""Camera: CameraInfo parsing (binning, ROI, P vs K), projection vs OpenCV, RoI crops."""
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from hp_ros.core.camera import Camera, RoI

K_FULL = [610.0, 0.0, 321.5, 0.0, 612.0, 243.25, 0.0, 0.0, 1.0]


def _info(**kw):
    d = dict(width=640, height=480, k=list(K_FULL), p=[0.0] * 12, binning_x=0, binning_y=0,
             roi=dict(x_offset=0, y_offset=0, width=0, height=0, do_rectify=False))
    d.update(kw)
    return d


def test_from_camera_info_plain_dict_and_message_like():
    cam = Camera.from_camera_info(_info())
    assert (cam.width, cam.height) == (640, 480)
    np.testing.assert_allclose(cam.K.numpy(), np.reshape(K_FULL, (3, 3)))
    # ROS 1 field names and attribute access (message-like object)
    msg = SimpleNamespace(K=K_FULL, P=[0.0] * 12, width=640, height=480, binning_x=1,
                          binning_y=1, roi=SimpleNamespace(x_offset=0, y_offset=0, width=0,
                                                           height=0, do_rectify=False))
    np.testing.assert_allclose(Camera.from_camera_info(msg).K.numpy(), cam.K.numpy())


def test_from_camera_info_binning_and_roi():
    info = _info(binning_x=2, binning_y=4,
                 roi=dict(x_offset=100, y_offset=40, width=320, height=240, do_rectify=True))
    cam = Camera.from_camera_info(info)
    fx, cx, fy, cy = 610.0, 321.5, 612.0, 243.25
    expected = np.array([[fx / 2, 0, (cx - 100) / 2], [0, fy / 4, (cy - 40) / 4], [0, 0, 1]])
    np.testing.assert_allclose(cam.K.numpy(), expected)
    assert (cam.width, cam.height) == (160, 60)


def test_from_camera_info_prefers_nonzero_p_and_validates():
    P = [600.0, 0.0, 320.0, 0.0, 0.0, 601.0, 240.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    cam = Camera.from_camera_info(_info(p=P))
    np.testing.assert_allclose(cam.K.numpy(), [[600, 0, 320], [0, 601, 240], [0, 0, 1]])
    cam_k = Camera.from_camera_info(_info(p=P), use_projection_matrix=False)
    np.testing.assert_allclose(cam_k.K.numpy(), np.reshape(K_FULL, (3, 3)))
    with pytest.raises(ValueError, match="uncalibrated"):
        Camera.from_camera_info(_info(k=[0.0] * 9))
    with pytest.raises(ValueError, match="9 entries"):
        Camera.from_camera_info(_info(k=[1.0] * 8))
    with pytest.raises(ValueError, match="width and height"):
        Camera.from_camera_info({"k": K_FULL})


def test_project_matches_cv2_project_points():
    cam = Camera.from_camera_info(_info())
    rng = np.random.default_rng(0)
    pts = np.stack([rng.uniform(-0.2, 0.2, 50), rng.uniform(-0.2, 0.2, 50),
                    rng.uniform(0.3, 1.5, 50)], 1)
    uv, z = cam.project(torch.tensor(pts)[None])
    ref, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), cam.K.numpy(), np.zeros(5))
    np.testing.assert_allclose(uv[0].numpy(), ref[:, 0], atol=1e-9)
    np.testing.assert_allclose(z[0].numpy(), pts[:, 2])


def test_roi_intrinsics_map_points_consistently():
    cam = Camera.from_camera_info(_info())
    pts = torch.tensor([[[0.05, -0.02, 0.5], [-0.04, 0.03, 0.45], [0.0, 0.0, 0.6]]],
                       dtype=torch.float64)
    roi = cam.roi(pts, size=64, margin=0.1)
    uv_cam, _ = cam.project(pts)
    uv_roi, _ = roi.project(pts)
    # RoI pixel -> camera pixel mapping agrees with projecting with the full camera
    np.testing.assert_allclose(roi.to_camera_pixels(uv_roi).numpy(), uv_cam.numpy(), atol=1e-9)
    # all points inside the RoI with the margin
    assert bool((uv_roi > -0.5).all() and (uv_roi < 63.5).all())
    ext = (uv_cam.amax(1) - uv_cam.amin(1)).amax() + 1.0  # pixel-edge extent
    assert float(roi.side[0]) == pytest.approx(float(ext) * 1.2)
    centre = 0.5 * (uv_roi.amin(1) + uv_roi.amax(1))
    np.testing.assert_allclose(centre.numpy(), [[31.5, 31.5]], atol=1e-9)


def test_roi_crop_bilinear_of_affine_image_is_exact():
    cam = Camera.from_intrinsics(500.0, 500.0, 160.0, 120.0, 320, 240)
    v, u = np.mgrid[0:240, 0:320].astype(np.float64)
    img = np.stack([0.3 * u + 0.1 * v, 2.0 * v - u, np.ones_like(u)], -1)  # (H, W, 3)
    roi = RoI(cam, torch.tensor([[40.25, 30.5]]), torch.tensor([100.0]), 64)
    out = roi.crop(img, mode="bilinear")
    assert out.shape == (1, 3, 64, 64)
    # direct: RoI pixel (i, j) centre sits at camera pixel left + (j + 0.5) * side / S
    j = np.arange(64)
    uc = 40.25 + (j + 0.5) * 100.0 / 64
    vc = 30.5 + (j + 0.5) * 100.0 / 64
    U, V = np.meshgrid(uc, vc)
    np.testing.assert_allclose(out[0, 0].numpy(), 0.3 * U + 0.1 * V, atol=1e-9)
    np.testing.assert_allclose(out[0, 1].numpy(), 2.0 * V - U, atol=1e-9)


def test_roi_crop_nearest_and_valid_mask():
    cam = Camera.from_intrinsics(500.0, 500.0, 16.0, 12.0, 32, 24)
    mask = np.zeros((24, 32), dtype=bool)
    mask[5:15, 8:20] = True
    # scale 1 and integer offsets: nearest crop is a plain slice
    roi = RoI(cam, torch.tensor([[3.5, 1.5]]), torch.tensor([16.0]), 16)
    out = roi.crop(mask, mode="nearest")
    np.testing.assert_array_equal(out[0, 0].numpy().astype(bool), mask[2:18, 4:20])
    # window sticking out of the image: outside pixels are zero and flagged invalid
    roi2 = RoI(cam, torch.tensor([[-8.5, -4.5]]), torch.tensor([16.0]), 16)
    valid = roi2.valid_mask()[0, 0].numpy()
    assert valid[:4].sum() == 0 and valid[:, :8].sum() == 0 and valid[4:, 8:].all()
    np.testing.assert_array_equal(roi2.crop(mask, mode="nearest")[0, 0, 4:, 8:].numpy() > 0,
                                  mask[:12, :8])
    with pytest.raises(ValueError, match="does not match camera"):
        roi.crop(np.zeros((10, 10)))
    with pytest.raises(ValueError, match="unknown crop mode"):
        roi.crop(mask, mode="cubic")


def test_roi_crop_area_averages_blocks():
    cam = Camera.from_intrinsics(500.0, 500.0, 16.0, 16.0, 32, 32)
    rng = np.random.default_rng(1)
    img = rng.random((32, 32))
    roi = RoI(cam, torch.tensor([[-0.5, -0.5]]), torch.tensor([32.0]), 16)  # zoom out by 2
    out = roi.crop(img, mode="area")[0, 0].numpy()
    blocks = img.reshape(16, 2, 16, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(out[1:-1, 1:-1], blocks[1:-1, 1:-1], atol=1e-6)


def test_roi_crop_area_pools_only_its_window_with_the_whole_images_values():
    """The area crop box-averages only the camera pixels its samples need (not the whole image): the
    same values as pooling the whole image, for RoIs inside, across the border of and outside the
    image, zooming out by 2 to 20."""
    import torch.nn.functional as F

    cam = Camera.from_intrinsics(600.0, 600.0, 320.0, 240.0, 640, 480)
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 2, 480, 640, generator=g)
    for _ in range(60):
        side = float(torch.rand(1, generator=g)) * 700 + 40
        left = torch.rand(1, 2, generator=g, dtype=torch.float64) * torch.tensor([900.0, 700.0]) - 300
        for S in (40, 96):
            roi = RoI(cam, left, torch.tensor([side], dtype=torch.float64), S)
            k = int(side // S)
            if k < 2:
                continue
            whole = F.avg_pool2d(img, k, stride=1, padding=k // 2, count_include_pad=False)[..., :480, :640]
            grid = roi._grid(torch.float32, "cpu").clone()
            shift = (k - 1) / 2.0 - k // 2
            grid[..., 0] -= 2.0 * shift / 640
            grid[..., 1] -= 2.0 * shift / 480
            expected = F.grid_sample(whole, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            torch.testing.assert_close(roi.crop(img, mode="area"), expected, atol=1e-4, rtol=0)  # float rounding


def test_one_camera_info_rule_for_every_node_realsense_like():
    """A RealSense-like CameraInfo with 2x2 binning, an ROI and P != K: the tracking and segmentation
    nodes (io.msgs.camera_info_to_intrinsics) and the refinement node (Camera.from_camera_info)
    read the same intrinsics of the published image: P's, shifted by the ROI, divided by the binning."""
    from hp_ros.io import msgs

    CameraInfo = pytest.importorskip("sensor_msgs.msg").CameraInfo
    K = np.array([[615.7, 0.0, 323.1], [0.0, 615.9, 238.4], [0.0, 0.0, 1.0]])
    P = np.array([[612.0, 0.0, 320.0, 0.0], [0.0, 612.5, 240.5, 0.0], [0.0, 0.0, 1.0, 0.0]])
    msg = msgs.make_camera_info(K, 1280, 720, CameraInfo, P=P, D=np.array([0.1, -0.05, 0.0, 0.0, 0.01]))
    msg.binning_x, msg.binning_y = 2, 2
    msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height = 160, 120, 960, 480
    expected = np.array([[306.0, 0.0, (320.0 - 160) / 2], [0.0, 306.25, (240.5 - 120) / 2], [0.0, 0.0, 1.0]])
    intr = msgs.camera_info_to_intrinsics(msg)
    cam = Camera.from_camera_info(msg)
    np.testing.assert_allclose(intr.K, expected)
    np.testing.assert_allclose(cam.K.numpy(), expected)
    assert (intr.width, intr.height) == (cam.width, cam.height) == (480, 240)
    assert not intr.distorted  # P given: the rectified image
    # without P the raw image's K, and its distortion is reported
    msg.p = [0.0] * 12
    intr = msgs.camera_info_to_intrinsics(msg)
    np.testing.assert_allclose(intr.K, Camera.from_camera_info(msg).K.numpy())
    np.testing.assert_allclose(intr.K[0], [615.7 / 2, 0.0, (323.1 - 160) / 2])
    assert intr.distorted
    msg.k = [0.0] * 9
    with pytest.raises(ValueError, match="uncalibrated"):
        msgs.camera_info_to_intrinsics(msg)
