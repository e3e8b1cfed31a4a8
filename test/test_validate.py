"""Validation at the door (issue 28): every conversion of hp_ros.io.msgs refuses a message that
must not be used, with an InvalidMessage whose kind is one of a fixed set of keys. Hypothesis
strategies per message type (rosbags message classes: no ROS needed)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rosbags.typesys import Stores, get_typestore

from hp_ros.io import msgs as M
from hp_ros.io.validate import MAX_IMAGE_SIDE, InvalidMessage

T = get_typestore(Stores.ROS2_JAZZY).types
CI, Image, JS = T["sensor_msgs/msg/CameraInfo"], T["sensor_msgs/msg/Image"], T["sensor_msgs/msg/JointState"]
TS = T["geometry_msgs/msg/TransformStamped"]
K = np.array([[615.0, 0.0, 320.0], [0.0, 615.0, 240.0], [0.0, 0.0, 1.0]])
FRAME = "camera_color_optical_frame"
WEIRD = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -1.0, 1e308, -1e-300, 5e-324])
KINDS = {"camera_info_size", "camera_info_k", "camera_info_distortion", "camera_info_frame", "pose_quaternion",
         "pose_translation", "joint_states_length", "joint_states_nan", "image_size"}


def info(**kw):
    m = M.make_camera_info(K, 640, 480, CI, stamp_ns=5, frame_id=FRAME)
    for k, v in kw.items():
        setattr(m, k, v)
    return m


def transform(t=(0.1, 0.0, 0.5), q=(0.0, 0.0, 0.0, 1.0)):
    m = M.make_transform_stamped(np.eye(4), 5, FRAME, "ah_palm_link", TS)
    m.transform.translation.x, m.transform.translation.y, m.transform.translation.z = t
    r = m.transform.rotation
    r.x, r.y, r.z, r.w = q
    return m


def test_valid_messages_pass():
    assert np.allclose(M.camera_info_to_intrinsics(info(), FRAME).K, K)
    assert np.allclose(M.transform_stamped_to_matrix(transform(q=(0, 0, 0, 2.0)))[0][:3, :3], np.eye(3))


@pytest.mark.parametrize("q", [(0, 0, 0, 0), (math.nan, 0, 0, 1), (0, 0, 0, math.inf)])
def test_finding1_zero_or_nan_quaternion_is_refused(q):
    with pytest.raises(InvalidMessage) as e:
        M.transform_stamped_to_matrix(transform(q=q))
    assert e.value.kind == "pose_quaternion"


@pytest.mark.parametrize("t", [(math.nan, 0, 0.5), (0, math.inf, 0.5), (0, 0, 1e9)])
def test_finding2_non_finite_translation_is_refused(t):
    with pytest.raises(InvalidMessage) as e:
        M.transform_stamped_to_matrix(transform(t=t))
    assert e.value.kind == "pose_translation"


@pytest.mark.parametrize("i,v", [(0, math.nan), (0, math.inf), (4, math.nan), (2, math.inf), (0, 1e-6), (2, 5000.0)])
def test_finding3_non_finite_or_implausible_k_is_refused(i, v):
    k = K.ravel().copy()
    k[i] = v
    p = np.hstack([k.reshape(3, 3), np.zeros((3, 1))]).ravel()  # P = [K | 0], as a camera publishes it
    with pytest.raises(InvalidMessage) as e:
        M.camera_info_to_intrinsics(info(k=k, p=p))
    assert e.value.kind == "camera_info_k"


@pytest.mark.parametrize("w,h", [(100000, 100000), (0, 480), (640, MAX_IMAGE_SIDE + 1)])
def test_finding4_huge_or_empty_sizes_are_refused_before_allocation(w, h):
    with pytest.raises(InvalidMessage) as e:
        M.camera_info_to_intrinsics(info(width=w, height=h))
    assert e.value.kind == "camera_info_size"
    img = M.numpy_to_image(np.zeros((2, 2, 3), np.uint8), "rgb8", 5, FRAME, Image)
    img.width, img.height, img.step = w, h, 3 * w
    with pytest.raises(InvalidMessage):
        M.image_to_numpy(img)


def test_finding9_distortion_and_frame_are_checked():
    with pytest.raises(InvalidMessage) as e:
        M.camera_info_to_intrinsics(info(distortion_model="fisheye_of_doom"))
    assert e.value.kind == "camera_info_distortion" and e.value.value == "fisheye_of_doom"
    with pytest.raises(InvalidMessage) as e:
        M.camera_info_to_intrinsics(info(d=np.array([0.1, math.nan, 0, 0, 0])))
    assert e.value.kind == "camera_info_distortion"
    m = info()
    m.header.frame_id = "some_other_camera"
    with pytest.raises(InvalidMessage) as e:
        M.camera_info_to_intrinsics(m, FRAME)
    assert e.value.kind == "camera_info_frame"
    assert M.camera_info_to_intrinsics(m).K is not None  # no frame required: any frame


@st.composite
def camera_infos(draw):
    """CameraInfo with one or more fields broken (or none)."""
    m = info()
    k = K.ravel().copy()
    for i in draw(st.lists(st.integers(0, 8), max_size=3)):
        k[i] = draw(WEIRD)
    m.k = k
    m.width = draw(st.sampled_from([640, 0, 1, 100000, 2**31 - 1]))
    m.height = draw(st.sampled_from([480, 0, 100000]))
    m.distortion_model = draw(st.sampled_from(["plumb_bob", "rational_polynomial", "", "unknown", "\x00" * 3]))
    m.d = np.array(draw(st.lists(st.one_of(WEIRD, st.floats(-1, 1)), max_size=16)), dtype=np.float64)
    return m


@settings(max_examples=300, deadline=None)
@given(camera_infos())
def test_camera_info_fuzz_valid_or_refused_with_a_known_kind(m):
    """Any CameraInfo either converts to finite intrinsics inside the image or is refused with a
    known kind - never another exception, never NaN intrinsics."""
    try:
        intr = M.camera_info_to_intrinsics(m, FRAME)
    except InvalidMessage as e:
        assert e.kind in KINDS, e.kind
        return
    assert np.all(np.isfinite(intr.K)) and 0 < intr.width <= MAX_IMAGE_SIDE and 0 < intr.height <= MAX_IMAGE_SIDE
    assert 0 <= intr.K[0, 2] <= intr.width and intr.K[0, 0] > 0 and np.all(np.isfinite(intr.D))


@settings(max_examples=300, deadline=None)
@given(t=st.tuples(*[st.one_of(WEIRD, st.floats(-2, 2))] * 3), q=st.tuples(*[st.one_of(WEIRD, st.floats(-1, 1))] * 4))
def test_transform_fuzz_gives_a_finite_rigid_transform_or_is_refused(t, q):
    try:
        T_, *_ = M.transform_stamped_to_matrix(transform(t=t, q=q))
    except InvalidMessage as e:
        assert e.kind in KINDS
        return
    assert np.all(np.isfinite(T_))
    np.testing.assert_allclose(T_[:3, :3] @ T_[:3, :3].T, np.eye(3), atol=1e-9)


@settings(max_examples=200, deadline=None)
@given(pos=st.lists(st.one_of(WEIRD, st.floats(-3, 3)), max_size=20), n_names=st.integers(0, 20))
def test_joint_state_fuzz(pos, n_names):
    m = M.make_joint_state([f"ah_joint{i // 4}{i % 4}" for i in range(len(pos))], np.array(pos, float), 5, JS)
    m.name = m.name[:n_names] + [f"extra{i}" for i in range(max(0, n_names - len(pos)))]
    try:
        names, p, _ = M.joint_state_to_numpy(m)
    except InvalidMessage as e:
        assert e.kind in KINDS
        return
    assert len(names) == p.size and np.all(np.isfinite(p))
