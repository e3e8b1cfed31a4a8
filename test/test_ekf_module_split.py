"""Issue 25's split of the EKF tracker and the frame tracker: the observation updates
(tracker_updates.py) and the late-observation pass (late_observations.py) are mixins, so every
method the classes had before is still found on them, defined once."""
from __future__ import annotations

from hp_ros.core.ekf import EKFTracker, FrameTracker
from hp_ros.core.ekf.late_observations import LateObservations
from hp_ros.core.ekf.tracker_updates import TrackerUpdates

# the class attributes (methods, properties, constants) before the split
_EKF_TRACKER_NAMES = (
    "OBJECT_KINDS", "T_cam_obj", "T_cam_obj_published", "_DYNAMIC", "_STEP_AUX", "_apply", "_apply_motion", "_as_q",
    "_candidate_points", "_center_observation", "_check_K", "_check_lost", "_check_pose", "_fk_factors",
    "_forward_kinematics", "_hand_point_model", "_keep_center_stats", "_linearize_center", "_object_point_model",
    "_seen_fingertips", "_set_q", "_set_x", "_step_aux", "_update", "_visible_stats", "center_bias_sigma",
    "center_model", "contacts", "covariance", "covariance_published", "covariance_trace", "depth_bias_sigma",
    "depth_pose_covariance", "fingertip_points_hand", "hand_signed_distance", "hand_surface_points", "initialize",
    "initialized", "nees", "penetration_jacobian", "pose_model", "predict", "project_out_of_penetration",
    "recentred_pose", "rerun", "reset", "restore", "set_calibration", "set_camera", "set_hand_base", "snapshot",
    "update_center", "update_center_3d", "update_depth_pose", "update_fingertips_2d", "update_fingertips_3d",
    "update_pose", "visible_center_offset", "x")
_FRAME_TRACKER_NAMES = (
    "_apply_observations", "_cam_hand", "_ensure_filter", "_frame", "_gap_ns", "_initialize", "_late_ready",
    "_move_base", "_moving", "_predict_to", "_process_frame", "_reprocess_late", "_transition", "add_frame",
    "add_joint_states", "add_observation", "flush", "pending", "process", "refinement_start_pose", "reinitialize",
    "reset", "set_calibration", "set_camera", "set_hand_base", "set_initial_pose", "state")


def _defined_in(cls, name):
    return [c for c in cls.__mro__ if name in vars(c)]


def test_tracker_keeps_every_name_and_defines_each_once():
    assert issubclass(EKFTracker, TrackerUpdates)
    for name in _EKF_TRACKER_NAMES:
        assert len(_defined_in(EKFTracker, name)) == 1, name
    for name in ("update_center", "update_fingertips_2d", "update_pose", "update_depth_pose", "_update", "_apply"):
        assert _defined_in(EKFTracker, name) == [TrackerUpdates], name


def test_frame_tracker_keeps_every_name_and_defines_each_once():
    assert issubclass(FrameTracker, LateObservations)
    for name in _FRAME_TRACKER_NAMES:
        assert len(_defined_in(FrameTracker, name)) == 1, name
    assert _defined_in(FrameTracker, "_reprocess_late") == [LateObservations]
