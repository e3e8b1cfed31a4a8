"""Synthetic sequence generator: determinism, quasistatic ground truth, physics, renders, bags."""
import math

import numpy as np
import pytest
import torch

from hp_ros.core import synth as S
from hp_ros.core.hand import HandModel

SMALL = dict(width=160, height=120, fx=153.75, fy=153.75, cx=80.5, cy=61.75)  # 640x480 scaled by 1/4


def _cfg(**kw):
    base = dict(duration_s=1.5, seed=0, render=False)
    base.update(kw)
    return S.SynthConfig(**base)


@pytest.fixture(scope="module")
def seq_box():
    return S.generate_sequence(_cfg(duration_s=3.0, slips=((2.2, 0.2, 0.004),)))


@pytest.fixture(scope="module")
def hand():
    return HandModel.default(naming="wonik", dtype=torch.float64)


def test_shapes_and_stamps(seq_box):
    s = seq_box
    assert s.joint_positions.shape == (300, 16) and s.q_frames_true.shape == (90, 16)
    assert s.joint_names == HandModel.default().joint_names
    np.testing.assert_array_equal(np.diff(s.joint_stamps_ns), 10_000_000)
    assert np.all(np.abs(np.diff(s.frame_stamps_ns) - 1e9 / 30) <= 1)
    assert s.T_cam_obj.shape == (90, 4, 4) and s.fingertips_px_true.shape == (90, 4, 2)
    assert s.hand_frame == "ah_palm_link"
    # object 0.4-0.6 m in front of the camera and inside the image
    z = s.T_cam_obj[:, 2, 3]
    assert np.all((z > 0.35) & (z < 0.65))
    uv = s.K @ s.T_cam_obj[0, :3, 3]
    assert 0 < uv[0] / uv[2] < 640 and 0 < uv[1] / uv[2] < 480
    # encoder noise: published - true has the configured std
    assert abs(np.std(s.joint_positions - s.joint_positions_true) - 0.003) < 0.0005


def test_calibration_error_is_exact(seq_box):
    E = np.linalg.inv(seq_box.T_cam_hand_true) @ seq_box.T_cam_hand_published
    assert abs(np.linalg.norm(E[:3, 3]) - 0.002) < 1e-9
    ang = math.acos(np.clip((np.trace(E[:3, :3]) - 1) / 2, -1, 1))
    assert abs(ang - math.radians(0.5)) < 1e-6


def test_object_follows_contacts_by_kabsch(seq_box, hand):
    s = seq_box
    pts = hand.surface_points(torch.as_tensor(s.q_frames_true),
                              base=torch.as_tensor(s.T_cam_hand_true)[None]).numpy()[:, s.contact_point_ids]
    checked = 0
    for k in range(1, s.num_frames):
        if not (s.in_contact[k] and s.in_contact[k - 1]) or s.slip[k]:
            continue
        # independent Kabsch (SVD) of the contact points from frame k-1 to frame k
        x, y = pts[k - 1], pts[k]
        xc, yc = x - x.mean(0), y - y.mean(0)
        U, _, Vt = np.linalg.svd(xc.T @ yc)
        d = np.sign(np.linalg.det(Vt.T @ U.T))
        R = Vt.T @ np.diag([1, 1, d]) @ U.T
        t = y.mean(0) - R @ x.mean(0)
        pred = np.eye(4)
        pred[:3, :3], pred[:3, 3] = R, t
        np.testing.assert_allclose(pred @ s.T_cam_obj[k - 1], s.T_cam_obj[k], atol=1e-5)
        checked += 1
    assert checked > 40
    # the object really moves in hand (rotation and translation), and stands still before the grasp
    first = int(np.argmax(s.in_contact))
    assert first > 5 and np.allclose(s.T_cam_obj[:first], s.T_cam_obj[0])
    assert np.linalg.norm(s.T_cam_obj[-1, :3, 3] - s.T_cam_obj[first, :3, 3]) > 0.003


def test_slip_adds_unexplained_motion(seq_box):
    s = seq_box
    assert s.slip.sum() >= 5 and not s.slip[:60].any()
    clean = S.generate_sequence(_cfg(duration_s=3.0))
    k0 = int(np.nonzero(s.slip)[0][-1])
    np.testing.assert_allclose(s.T_cam_obj[:60], clean.T_cam_obj[:60], atol=1e-12)
    # after the slip window the object is ~4 mm off its slip-free trajectory
    off = np.linalg.norm(s.T_cam_obj[k0, :3, 3] - clean.T_cam_obj[k0, :3, 3])
    assert 0.003 < off < 0.006


@pytest.mark.parametrize("obj", ["builtin:cracker_box", "builtin:soup_can"])
def test_grasp_contacts_and_penetration(obj, hand):
    s = S.generate_sequence(_cfg(object=obj, duration_s=4.0, seed=2))
    first = int(np.argmax(s.in_contact))
    assert s.contact_fingers[0] and s.contact_fingers.sum() >= 3  # thumb + two fingers at least
    assert s.penetration_mm[first] < 0.5 and s.n_contacts[first] >= 3
    assert s.penetration_mm.max() < 3.0, f"max penetration {s.penetration_mm.max():.2f} mm"
    # independent check of the contact distance with trimesh at the grasp frame
    obj_model = S._object_model(obj, "auto")
    pts = hand.surface_points(torch.as_tensor(s.q_frames_true[first])[None],
                              base=torch.as_tensor(s.T_cam_hand_true)[None]).numpy()[0][s.contact_point_ids]
    p_obj = (pts - s.T_cam_obj[first, :3, 3]) @ s.T_cam_obj[first, :3, :3]
    import trimesh

    d = np.abs(trimesh.proximity.signed_distance(obj_model.trimesh, p_obj))
    assert d.max() < 1.05e-3


def test_determinism():
    a = S.generate_sequence(_cfg(render=True, duration_s=0.5, **SMALL))
    b = S.generate_sequence(_cfg(render=True, duration_s=0.5, **SMALL))
    c = S.generate_sequence(_cfg(render=True, duration_s=0.5, seed=1, **SMALL))
    for name in ("joint_positions", "T_cam_obj", "rgb", "depth_mm", "object_mask", "hand_mask", "T_cam_hand_published"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.rgb, c.rgb) and not np.allclose(a.T_cam_obj, c.T_cam_obj)
    assert not np.array_equal(a.joint_positions, c.joint_positions)


def test_masks_agree_with_depth():
    s = S.generate_sequence(_cfg(duration_s=2.0, background=False, depth_hole_blobs=0, depth_edge_hole_prob=0.0, **SMALL))
    k = s.num_frames - 1
    f = S.render_frame(s, k)
    fg = f["object_mask"] | f["hand_mask"]
    assert f["object_mask"].sum() > 300 and f["hand_mask"].sum() > 30
    assert np.all(f["depth_mm"][~fg] == 0)          # no depth where both masks are empty
    assert np.all(f["depth_mm"][fg] > 0)            # and depth everywhere on the masks (no holes here)
    # depth noise: within 5 sigma of the true z-depth (sigma = 0.0037 z^2)
    z = f["depth_true"][fg]
    err = f["depth_mm"][fg] / 1000.0 - z
    assert np.all(np.abs(err) < 5 * 0.0037 * z ** 2 + 0.0006)
    # with the background plane every pixel has a surface; holes only where the generator makes them
    s2 = S.generate_sequence(_cfg(duration_s=2.0, **SMALL))
    f2 = S.render_frame(s2, k)
    assert np.all(f2["instance"] >= 0)
    bg = ~(f2["object_mask"] | f2["hand_mask"])
    assert (f2["depth_mm"][bg] > 0).mean() > 0.97 and (f2["depth_mm"] == 0).any()


def test_object_mask_geometry_and_colours():
    import cv2

    s = S.generate_sequence(_cfg(duration_s=2.0, rgb_noise_std=0.0, lighting_variation=False, **SMALL))
    k = s.num_frames - 1
    f = S.render_frame(s, k)
    obj = S._object_model("builtin:cracker_box", "auto")
    v = obj.vertices.double().numpy() @ s.T_cam_obj[k, :3, :3].T + s.T_cam_obj[k, :3, 3]
    uv = v @ s.K.T
    uv = uv[:, :2] / uv[:, 2:]
    hull = np.zeros((s.height, s.width), np.uint8)
    cv2.fillConvexPoly(hull, np.round(cv2.convexHull(uv.astype(np.float32))[:, 0]).astype(np.int32), 1)
    hull = hull.astype(bool)
    m = f["object_mask"]
    assert (m & ~hull).sum() <= 0.03 * m.sum()          # the mask lies inside the projected object
    assert (hull & ~(m | f["hand_mask"])).sum() <= 0.1 * hull.sum()  # and fills it but for occlusion
    # colours inside the mask are shaded versions of the box's face colours (chromaticity match)
    faces = np.array([[0.55, 0.1, 0.1], [0.9, 0.15, 0.1], [0.45, 0.45, 0.1], [0.1, 0.7, 0.2],
                      [0.95, 0.8, 0.1], [0.1, 0.25, 0.85], [0.95, 0.95, 0.95]])
    rgb = f["rgb"][m].astype(float)
    rgb = rgb[rgb.sum(1) > 30]
    chrom = rgb / rgb.sum(1, keepdims=True)
    ref = faces / faces.sum(1, keepdims=True)
    dist = np.linalg.norm(chrom[:, None] - ref[None], axis=-1).min(1)
    # (vertex colours blend across the colour boundaries of the subdivided mesh: allow 20 %)
    assert np.median(dist) < 0.02 and np.mean(dist < 0.06) > 0.8


def test_fingertip_markers_mark_the_projected_fingertips():
    s = S.generate_sequence(_cfg(duration_s=2.0, rgb_noise_std=0.0, lighting_variation=False))
    k = s.num_frames - 1
    f = S.render_frame(s, k)
    hsv = __import__("cv2").cvtColor(f["rgb"], __import__("cv2").COLOR_RGB2HSV)
    found = 0
    for i, col in enumerate(s.marker_colors):
        target = __import__("cv2").cvtColor(np.uint8([[np.asarray(col) * 255]]), __import__("cv2").COLOR_RGB2HSV)[0, 0]
        dh = np.abs(hsv[..., 0].astype(int) - int(target[0]))
        sel = (np.minimum(dh, 180 - dh) < 6) & (hsv[..., 1] > 150) & (hsv[..., 2] > 60) & f["hand_mask"]
        z = s.fingertips_cam_true[k, i, 2]
        disc = math.pi * (s.K[0, 0] * s.marker_radius / z) ** 2
        if sel.sum() < 0.9 * disc:   # partly occluded (by the object or the finger): centroid biased
            continue
        vv, uu = np.nonzero(sel)
        err = np.hypot(uu.mean() - s.fingertips_px_true[k, i, 0], vv.mean() - s.fingertips_px_true[k, i, 1])
        assert err < 2.0, f"marker {i}: {err:.1f} px"
        found += 1
    assert found >= 2


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_round_trip(tmp_path, storage):
    from hp_ros.io import bag as B
    from hp_ros.io import msgs as M

    s = S.generate_sequence(_cfg(duration_s=0.5, render=True, **SMALL))
    path = S.write_sequence_bag(s, tmp_path / "bag", storage=storage)
    summary = B.bag_summary(path)
    assert summary.storage == storage
    assert summary.counts[B.TOPIC_JOINT_STATES] == 50 and summary.counts[B.TOPIC_COLOR_IMAGE] == 15
    for t in (B.TOPIC_COLOR_INFO, B.TOPIC_DEPTH_IMAGE, B.TOPIC_DEPTH_INFO, B.TOPIC_GT_OBJECT_POSE,
              B.TOPIC_GT_OBJECT_MASK, B.TOPIC_GT_HAND_MASK):
        assert summary.counts[t] == 15
    assert summary.counts[B.TOPIC_TF_STATIC] == 1
    msgs = list(B.read_bag(path))
    assert [m[2] for m in msgs] == sorted(m[2] for m in msgs)
    joints = [m for m in msgs if m[0] == B.TOPIC_JOINT_STATES]
    names, pos, stamp = M.joint_state_to_numpy(joints[7][3])
    assert names == s.joint_names and stamp == s.joint_stamps_ns[7]
    np.testing.assert_allclose(pos, s.joint_positions[7])
    img = [m for m in msgs if m[0] == B.TOPIC_COLOR_IMAGE]
    dep = [m for m in msgs if m[0] == B.TOPIC_DEPTH_IMAGE]
    assert img[3][3].encoding == "rgb8" and dep[3][3].encoding == "16UC1"
    assert img[3][3].header.frame_id == "camera_color_optical_frame"
    assert M.header_stamp_ns(img[3][3]) == s.frame_stamps_ns[3]
    np.testing.assert_array_equal(M.image_to_numpy(img[3][3]), s.rgb[3])
    np.testing.assert_array_equal(M.image_to_numpy(dep[3][3]), s.depth_mm[3])
    mask = [m for m in msgs if m[0] == B.TOPIC_GT_OBJECT_MASK][3][3]
    np.testing.assert_array_equal(M.image_to_numpy(mask) > 0, s.object_mask[3])
    pose = [m for m in msgs if m[0] == B.TOPIC_GT_OBJECT_POSE][3][3]
    np.testing.assert_allclose(M.pose_to_matrix(pose), s.T_cam_obj[3], atol=1e-9)
    info = M.camera_info_to_intrinsics([m for m in msgs if m[0] == B.TOPIC_COLOR_INFO][0][3])
    np.testing.assert_allclose(info.K, s.K)
    (T, parent, child, _), = M.tf_message_to_list([m for m in msgs if m[0] == B.TOPIC_TF_STATIC][0][3])
    assert (parent, child) == ("camera_color_optical_frame", "ah_palm_link")
    np.testing.assert_allclose(T, s.T_cam_hand_published, atol=1e-9)
    meta = S.read_sidecar(path)
    assert meta["object"] == "builtin:cracker_box" and meta["seed"] == 0 and meta["num_frames"] == 15
    with pytest.raises(FileExistsError):
        S.write_sequence_bag(s, path)


def test_simlab_naming_and_bad_inputs():
    s = S.generate_sequence(_cfg(duration_s=1.0, naming="simlab"))
    assert set(s.joint_names) == {f"joint_{i}.0" for i in range(16)} and s.hand_frame == "base_link"
    with pytest.raises(FileNotFoundError):
        S.generate_sequence(_cfg(object="/does/not/exist.obj"))
    with pytest.raises(ValueError, match="duration"):
        S.generate_sequence(_cfg(duration_s=0))
    with pytest.raises(ValueError, match="slip"):
        S.generate_sequence(_cfg(slips=((5.0, 0.1, 0.01),)))


def test_cli_errors(tmp_path, capsys):
    from hp_ros.cli import main

    (tmp_path / "exists").mkdir()
    assert main(["synth", "--out", str(tmp_path / "exists")]) == 1
    assert main(["synth", "--out", str(tmp_path / "new"), "--object", str(tmp_path / "missing.obj")]) == 1
    err = capsys.readouterr().err
    assert "exists already" in err and "not found" in err


@pytest.mark.shared_data
def test_vendor_urdf_and_ycb_mesh(shared_data):
    urdf = shared_data / "allegro" / "dex_urdf_allegro_right" / "allegro_hand_right.urdf"
    mesh = shared_data / "ycb" / "eleramp_ycbv_reoriented" / "YcbTomatoSoupCan" / "textured_simple_reoriented.obj"
    if not urdf.is_file() or not mesh.is_file():
        pytest.skip("vendor URDF or YCB mesh missing")
    s = S.generate_sequence(_cfg(hand_urdf=str(urdf), object=str(mesh), object_units="m", duration_s=2.0))
    assert s.joint_names[0].startswith("ah_joint") and s.contact_fingers[0]
    assert s.penetration_mm[int(np.argmax(s.in_contact))] < 0.5
    assert s.penetration_mm.max() < 3.0


def test_lab_push_out_of_hand_takes_penetrating_samples_to_the_surface():
    """The lab motion's contact step (issue 29: fingers penetrated the object by up to 30 mm): hand
    samples up to 6 mm inside one face of a box are pushed to its surface by moving the box away,
    by the depth of the deepest (within the tolerance); a frame without penetration is untouched."""
    from hp_ros.core.objects import ObjectModel
    from hp_ros.core.synth.assets import _object_sdf
    from hp_ros.core.synth.lab import push_out_of_hand

    sdf = _object_sdf("builtin:cracker_box", "m")
    verts = ObjectModel.builtin("cracker_box").vertices.double().numpy()
    lo, hi = verts.min(0), verts.max(0)
    T0 = np.eye(4)
    T0[:3, 3] = [0.0, 0.0, 0.5]
    rng = np.random.default_rng(0)
    # samples near the +x face: 0-6 mm inside it, spread over the face's middle
    yz = rng.uniform(0.3, 0.7, size=(40, 2)) * (hi[1:] - lo[1:]) + lo[1:]
    depth = rng.uniform(0.0, 0.006, size=40)
    pts_obj = np.column_stack([hi[0] - depth, yz])
    pts_out = pts_obj + np.array([0.02, 0.0, 0.0])          # the other frame: 2 cm outside
    pts = np.stack([pts_obj, pts_out]) + T0[:3, 3]
    T = push_out_of_hand(sdf, np.stack([T0, T0]), pts)
    np.testing.assert_allclose(T[1], T0)
    shift = T[0, :3, 3] - T0[:3, 3]
    assert shift[0] == pytest.approx(-depth.max(), abs=0.0007)   # away from the samples, along -x
    assert np.abs(shift[1:]).max() < 2e-4
    d, _ = sdf.query(torch.as_tensor(pts[0] - T[0, :3, 3], dtype=torch.float32))
    assert d.min().item() > -0.0007


def test_lab_fingers_stop_at_the_surface_where_a_translation_cannot_free_the_object():
    """Lab box seed 2 (8 s): the commanded gait squeezed the box from both sides, so after
    push_out_of_hand the true hand was still up to 6.4 mm inside it (74 frames deeper than 0.5 mm).
    The fingers now stop at its surface, the correction is in the published joint states (not only in
    the frames' truth), and only joints moved."""
    s = S.generate_sequence(_cfg(motion="lab", seed=2, duration_s=8.0))
    assert s.penetration_mm.max() < 0.6, f"max penetration {s.penetration_mm.max():.2f} mm"
    # the joint states at the frames' stamps agree with the frames' joint angles (interpolated
    # between joint-state stamps, whose rate is higher than the frames')
    q_at_frames = np.stack([np.interp(s.frame_stamps_ns, s.joint_stamps_ns, s.joint_positions_true[:, j])
                            for j in range(s.joint_positions_true.shape[1])], -1)
    assert np.abs(q_at_frames - s.q_frames_true).max() < 0.02
    # the hand still holds the box (the fingers stop at it, not away from it): two or more contacts
    # in 96 % of the frames after the grasp, as before the correction (a slip or a regrasp frees it)
    assert (s.n_contacts[s.in_contact] >= 2).mean() >= 0.95
