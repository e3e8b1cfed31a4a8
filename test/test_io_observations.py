"""hp_ros.io.observations: typed observations <-> hp_ros_msgs messages, both ways (rclpy classes)."""
from __future__ import annotations

import numpy as np
import pytest

from hp_ros.core.observation import FingertipObservation, ObjectObservation
from hp_ros.io import observations as O

hp_msgs = pytest.importorskip("hp_ros_msgs.msg")


def test_object_observation_round_trip_with_and_without_pose():
    T = np.eye(4)
    T[:3, :3] = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    T[:3, 3] = [0.1, -0.2, 0.6]
    cov = np.diag([1e-6, 2e-6, 3e-6, 1e-4, 2e-4, 3e-4])
    o = ObjectObservation(True, 0.8, 320.5, 240.25, (10, 20, 30, 40), 900, 0.61, np.array([0.1, -0.2, 0.61]),
                          "model", T, cov, 0.9)
    m = O.object_observation_to_msg(o, 1_700_000_000_123_456_789, "cam", hp_msgs.ObjectObservation)
    assert m.has_pose and m.header.frame_id == "cam" and m.header.stamp.nanosec == 123_456_789
    back = O.object_observation_from_msg(m)
    np.testing.assert_allclose(back.pose, T, atol=1e-12)
    np.testing.assert_allclose(back.pose_covariance, cov)
    assert (back.valid, back.confidence, back.centroid_u, back.centroid_v, back.bbox, back.area, back.backend,
            back.pose_confidence) == (True, 0.8, 320.5, 240.25, (10, 20, 30, 40), 900, "model", 0.9)
    np.testing.assert_allclose(back.center_3d, o.center_3d)
    # a pose without its covariance is not sent: the tracker needs both
    o.pose_covariance = None
    back = O.object_observation_from_msg(O.object_observation_to_msg(o, 1, "cam", hp_msgs.ObjectObservation))
    assert back.pose is None and back.pose_covariance is None and back.pose_confidence == 0.0
    # a valid observation with a NaN centroid is refused
    bad = O.object_observation_to_msg(ObjectObservation(True, 1.0, float("nan"), 1.0), 1, "cam",
                                      hp_msgs.ObjectObservation)
    with pytest.raises(ValueError, match="non-finite centroid"):
        O.object_observation_from_msg(bad)
    assert not O.object_observation_from_msg(O.object_observation_to_msg(
        ObjectObservation(False), 1, "cam", hp_msgs.ObjectObservation)).valid


def test_fingertips_round_trip_and_pixels_by_link():
    uv = np.array([[1.0, 2.0], [np.nan, np.nan], [5.0, 6.0], [7.0, 8.0]])
    f = FingertipObservation(("a", "b", "c", "d"), uv, np.array([0.9, 0.0, 0.2, 1.0]), uv + 1)
    back = O.fingertips_from_msg(O.fingertips_to_msg(f, 5, "cam", hp_msgs.FingertipObservations))
    assert back.names == ("a", "b", "c", "d")
    np.testing.assert_array_equal(back.uv, uv)
    np.testing.assert_array_equal(back.fk_uv, uv + 1)
    # in the hand's order, below min_confidence = not seen, unknown names reported
    px, unknown = FingertipObservation(("d", "x", "a", "c"), uv, f.confidence).pixels_for(["a", "b", "c", "d"], 0.3)
    np.testing.assert_array_equal(px[2], uv[3])
    np.testing.assert_array_equal(px[3], uv[0])
    assert np.isnan(px[0]).all() and np.isnan(px[1]).all() and unknown == ["x"]  # a: 0.2 < 0.3; b: absent
    m = O.fingertips_to_msg(f, 5, "cam", hp_msgs.FingertipObservations)
    m.u = [1.0]
    with pytest.raises(ValueError, match="names"):
        O.fingertips_from_msg(m)
