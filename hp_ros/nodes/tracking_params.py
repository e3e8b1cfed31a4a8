"""The tracking node's own parameters (the common ones: :mod:`hp_ros.nodes.params`). Defaults of
filter settings come from :class:`hp_ros.core.ekf.EKFConfig`, those of the per-frame logic from
:class:`hp_ros.core.ekf.FrameTrackerConfig`: one default per setting."""
from __future__ import annotations

from hp_ros.core.ekf import EKFConfig, FrameTrackerConfig
from hp_ros.nodes.params import length_in, non_negative, one_of, Param, positive

_D = EKFConfig()
_F = FrameTrackerConfig()
OWN_PARAMS = {
    "initial_pose": Param([0.0], "initial object pose in the camera frame [x y z qx qy qz qw]; [0.0] = wait for "
                                 "/hp_ros/initial_pose or a refinement result", length_in(1, 7)),
    "estimate_calibration": Param(_D.estimate_calibration, "estimate a camera->hand correction (needed for fingertips)"),
    "use_fingertips": Param(_F.use_fingertips, "update with /hp_ros/fingertips"),
    "use_object_center": Param(_F.use_object_center, "update with /hp_ros/object_observation (centroid + median depth)"),
    "use_object_pose": Param(_F.use_object_pose, "update with the model backend's depth fit in /hp_ros/object_observation (pose "
                             "with its ICP covariance; only published with object_backend model)"),
    "depth_min_confidence": Param(_D.depth_min_confidence, "ignore depth fits with a lower depth agreement",
                                  non_negative),
    "depth_pos_sigma": Param(_D.depth_pos_sigma, "white noise floor [m] per axis of the depth fit, added to its ICP "
                             "covariance (default measured on synthetic depth: raise it for a real camera)", non_negative),
    "depth_rot_sigma": Param(_D.depth_rot_sigma, "white noise floor [rad] per axis of the depth fit's rotation",
                             non_negative),
    "project_penetration": Param(_F.project_penetration, "publish the estimate moved out of penetration after each frame's updates "
                                 "(no hand point deeper than penetration_tolerance inside the object; the covariance "
                                 "grows by the move; the filter state is not changed)"),
    "project_on_moving_base": Param(_F.project_on_moving_base, "project also while the hand base moves (camera->hand "
                                    "from /tf, an arm); the modelled fingers are then known to the /tf's accuracy"),
    "hand_alignment_time_constant": Param(_F.hand_alignment_time_constant, "moving hand base (/tf) without a "
                                          "correction estimated: /tf corrected by the segmentation's hand alignment "
                                          "to depth (/hp_ros/hand_alignment), low-passed over this many seconds "
                                          "in the hand frame; 0 = /tf as it is", non_negative),
    "calibrate_on_moving_base": Param(_F.calibrate_on_moving_base, "estimate_calibration also on a moving hand base "
                                      "(/tf): off by default, the correction was not observable enough there and "
                                      "walked 2 -> 24 mm (lab motion), taking the modelled hand with it"),
    "penetration_tolerance": Param(_D.penetration_tolerance, "hand points deeper than this [m] inside the object "
                                   "are pushed out", positive),
    "contact_threshold": Param(_D.contact_threshold, "hand point within this distance [m] of the object = contact", positive),
    "contact_map_threshold": Param(0.002, "a hand link within this distance [m] of the object is in contact in "
                                          "/hp_ros/contacts (the filter's own contact set uses contact_threshold)", positive),
    "out_of_contact": Param(_D.out_of_contact, "motion without contacts", one_of("hold", "constant_velocity")),
    "fingertip_px_sigma": Param(_D.fingertip_px_sigma, "fingertip observation noise [px]", positive),
    "fingertip_offset": Param(_D.fingertip_offset, "observed tip point along the fingertip link z axis [m]"),
    "calib_pos_sigma": Param(_D.calib_pos_sigma, "std. dev. [m] per axis of the camera->hand calibration error", positive),
    "calib_rot_sigma": Param(_D.calib_rot_sigma, "std. dev. [rad] per axis of the camera->hand calibration error", positive),
    "center_px_sigma": Param(_D.center_px_sigma, "object centroid noise [px]", positive),
    "center_depth_sigma": Param(_D.center_depth_sigma, "object median depth noise [m]", positive),
    "center_bias_px_sigma": Param(_D.center_bias_px_sigma, "least std. dev. [px] of the centroid's slowly varying "
                                  "bias (occlusion, mask edges; estimated as a state)", non_negative),
    "center_bias_depth_sigma": Param(_D.center_bias_depth_sigma, "least std. dev. [m] of the median depth's slowly "
                                     "varying bias", non_negative),
    "pos_motion_random_walk": Param(_D.pos_motion_random_walk, "in-contact process noise [m per sqrt(m)] of the object's "
                                    "translation: a random walk in the distance its contacts travel", non_negative),
    "rot_motion_random_walk": Param(_D.rot_motion_random_walk, "in-contact process noise [rad per sqrt(rad)] of the object's "
                                    "rotation: a random walk in the angle its contacts turn", non_negative),
    "base_pos_random_walk": Param(_D.base_pos_random_walk, "process noise [m per sqrt(m)] of a moving hand base (/tf): "
                                  "a random walk in the distance it moved", non_negative),
    "base_rot_random_walk": Param(_D.base_rot_random_walk, "process noise [rad per sqrt(rad)] of a moving hand base: a "
                                  "random walk in the angle it turned", non_negative),
    "gate_probability": Param(_D.gate_probability, "chi-square probability of the NIS gate",
                              lambda v: None if 0 < v < 1 else f"must be in (0, 1), got {v}"),
    "lost_after_rejections": Param(_D.lost_after_rejections, "consecutive rejected object observations -> LOST "
                                                              "(fingertip updates do not count)", positive),
    "max_covariance_trace": Param(_D.max_covariance_trace, "pose covariance trace [m^2+rad^2] above which -> LOST", positive),
    "slip_pos_sigma": Param(_D.slip_pos_sigma, "size [m per axis] of a slip of the object in the hand: a depth fit "
                            "rejected after slip_after_rejections consecutive rejected depth fits is tried against "
                            "the covariance with such a slip added (0 with slip_rot_sigma 0: never)", non_negative),
    "slip_rot_sigma": Param(_D.slip_rot_sigma, "size [rad per axis] of a slip's rotation", non_negative),
    "slip_after_rejections": Param(_D.slip_after_rejections, "consecutive rejected depth fits (full poses; an "
                                                              "accepted centre in between does not count) before a "
                                                              "slip is considered", positive),
    "motion_smoothing": Param(_D.motion_smoothing, "time constant [s] of the low-pass filter on the contact motion "
                              "whose distance / angle drives the in-contact noise (0: each joint-state step's own, "
                              "encoder jitter included)", non_negative),
    "min_confidence": Param(_F.min_confidence, "ignore observations with a lower confidence", non_negative),
    "pairing_timeout": Param(_F.pairing_timeout, "latency budget [s]: a frame is processed (and its pose published) at the "
                                   "latest this long after the tracker first heard of it (its camera_info or an "
                                   "observation), normally earlier: once its observations and the joint states "
                                   "after it arrived; observations arriving later are applied afterwards",
                             positive),
    "pose_every_frame": Param(True, "publish a pose for every camera frame (its camera_info stamp): predicted from "
                                    "the joint states when the frame's observations are late or missing (status "
                                    "'predicted')"),
    "reprocess_window": Param(_F.reprocess_window, "an observation up to this much [s] older than the newest processed frame is "
                                   "still applied: the filter returns to its frame and re-predicts the frames after "
                                   "it (0 = late observations are dropped)", non_negative),
    "max_joint_gap": Param(_F.max_joint_gap, "max distance [s] from an image stamp to the joint states around it", positive),
    "publish_on_joint_states": Param(_F.publish_on_joint_states, "also publish a predicted pose at the newest joint state each time the tracker runs "
                                                                   "(on every frame, observation and the 10 ms timer)"),
    "publish_when_lost": Param(False, "keep publishing pose and TF while the track is LOST (default: status only, "
                                      "so a manipulation pipeline never acts on a pose the filter disowned)"),
    "request_refinement": Param(True, "when LOST, ask /hp_ros/refine_pose (if available) and re-initialise"),
    "refinement_timeout": Param(20.0, "give up on a refine_pose call after this long [s] and ask again", positive),
    "min_refinement_iou": Param(0.7, "a refinement answer re-initialises the tracker only when its mask IoU "
                                     "reaches this (else the node asks again)", non_negative),
    "expected_rate": Param(30.0, "camera frame rate [Hz]: /diagnostics checks the pose rate against it (+-10 %)",
                           positive),
    "frame_delay_limits": Param([-0.1, 0.5], "acceptable delay [s] of a published frame (node clock minus its stamp), "
                                             "min and max: /diagnostics warns about late and early frames", length_in(2)),
}
