"""The segmentation node's own parameters (the common ones: :mod:`hp_ros.nodes.params`) and the core
:class:`SegmenterConfig` built from them (also the offline pipeline's, :mod:`hp_ros.tools.offline`)."""
from __future__ import annotations

from hp_ros.core.device import device_error
from hp_ros.nodes.params import non_negative, one_of, Param, positive

def _backend_check(v):
    from hp_ros.core.segmentation.registry import parse_combination
    try:
        parse_combination(v)
    except ValueError as e:
        return str(e)
    return None


SEG_PARAMS = {
    "object_backend": Param("model", "object mask backends: color, depth, external, detectron2, model (the "
                            "tracker's pose on /hp_ros/object_pose refined against depth), or several joined by '+' "
                            "(intersection) or '|' (union)", _backend_check),
    "fallback_backend": Param("color|depth", "object backends of the frames the model backend cannot serve (no "
                              "tracker pose within prior_max_age: before the first pose, after LOST; or no "
                              "depth); '' = none", lambda v: None if v == "" else _backend_check(v)),
    "color_model": Param("hsv", "colour model: hsv (hsv_ranges), histogram (learned from the first confident "
                         "mask, hsv_ranges bootstrap it when set) or object (histogram of the object_mesh's "
                         "texture/colours)", one_of("hsv", "histogram", "object")),
    "object_size": Param(0.0, "expected 3D size (m) of the object mask's component: components more than "
                         "object_size_tolerance times off are rejected, others ranked by it (0 = off, "
                         "-1 = the object_mesh's diameter)"),
    "object_size_tolerance": Param(2.0, "factor beyond which a component's 3D size is implausible (>= 1)", positive),
    "hsv_ranges": Param([0.0, 100.0, 60.0, 180.0, 255.0, 255.0],
                        "object HSV boxes, 6 numbers each: h_min s_min v_min h_max s_max v_max (H 0-180); "
                        "h_min > h_max wraps around red"),
    "histogram_threshold": Param(0.5, "back-projection threshold (0-1) of the histogram model", positive),
    "histogram_rate": Param(0.05, "blend rate of later confident masks into the histogram", non_negative),
    "workspace_box": Param([0.005, -0.15, -0.08, 0.25, 0.15, 0.20],
                           "depth workspace box x_min y_min z_min x_max y_max z_max (m) in workspace_frame"),
    "workspace_frame": Param("hand", "frame of workspace_box: hand (hand base) or camera", one_of("hand", "camera")),
    "color_in_workspace": Param(True, "search colour only inside the projected workspace box"),
    "hand_dilate_px": Param(0, "hand silhouette dilation (pixels) against residual calibration error", non_negative),
    "hand_depth_tolerance": Param(0.02, "hand pixels whose depth is this much (m) behind the hand are background",
                                  positive),
    "hand_occluder_tolerance": Param(0.006, "hand pixels whose depth is this much (m) in front of the hand are "
                                     "occluded (the object)", positive),
    "hand_align_iterations": Param(2, "ICP steps per frame correcting camera->hand against depth (0 = off)",
                                   non_negative),
    "hand_align_every": Param(3, "run the camera->hand alignment on every n-th frame (the correction is held "
                              "between; a calibration error drifts slowly)", positive),
    "hand_depth_scale": Param(0.5, "resolution factor of the rendered hand depth (0-1]", positive),
    "hand_margin_px": Param(2, "ring around the visible hand removed from the object mask (pixels)", non_negative),
    "min_area": Param(100, "smallest object component kept (pixels)", non_negative),
    "open_px": Param(1, "morphological opening radius of the object mask", non_negative),
    "close_px": Param(2, "morphological closing radius of the object mask", non_negative),
    "keep": Param("largest", "component kept: largest or near_prior (nearest the fingertips)",
                  one_of("largest", "near_prior")),
    "marker_colors": Param([0.0], "fingertip marker colours, 12 numbers (RGB 0-255 thumb, index, middle, ring); "
                           "[0.0] = no marker detection"),
    "marker_radius": Param(0.0144, "fingertip marker sphere radius (m)", positive),
    "marker_window_px": Param(40, "marker search half-window around the FK fingertip (pixels)", positive),
    "marker_hue_tolerance": Param(10, "marker hue tolerance (OpenCV hue units, 0-90)", positive),
    "depth_scale": Param(0.001, "metres per unit of 16UC1 depth", positive),
    "depth_max_dt": Param(0.02, "max colour/depth stamp difference (s) for pairing", positive),
    "input_wait": Param(0.3, "longest wait (s) of a colour image for its camera_info, depth and joint states",
                        positive),
    "joint_max_gap": Param(0.3, "joint states up to this far (s) from the image stamp are used (held, not "
                           "extrapolated); farther = no hand mask", positive),
    "model_margin": Param(0.02, "model backend: search margin (m) around the prior pose (3 x its position "
                          "sigma when larger)", positive),
    "model_max_margin": Param(0.04, "model backend: largest search margin (m)", positive),
    "model_tolerance": Param(0.006, "model backend: depth within this (m) of the fitted model surface is object",
                             positive),
    "model_icp_iterations": Param(8, "model backend: robust ICP steps per frame after the coarse search (a fit "
                                  "without it, from the tracker's pose: at most 4; 0 = coarse search only)",
                                  non_negative),
    "model_scale": Param(0.5, "model backend: working resolution factor (0-1]", positive),
    "model_dilate_px": Param(2, "model backend: silhouette growth (pixels)", non_negative),
    "model_device": Param("cpu", "model backend: torch and Warp device of the fit's signed-distance grid and "
                                 "silhouette render: cpu or cuda[:N] (CUDA asked for but not usable here: one "
                                 "error in the log, then the CPU)", device_error),
    "prior_max_age": Param(0.5, "model backend: a tracker pose more than this (s) from the image stamp is not "
                           "used as the prior", positive),
    "image_queue_depth": Param(5, "reader queue of the colour / depth streams (keep-last): a node that falls behind "
                               "drops the oldest frames instead of lagging; raise it to segment every frame of "
                               "a bag (loopback DDS delivers large images in bursts)", positive),
    "use_depth": Param(True, "subscribe to the aligned depth image"),
    "latest_only": Param(True, "segment the newest colour image whose inputs are there and drop older waiting "
                         "ones (live: a node that falls behind catches up instead of working through a backlog; "
                         "the tracker poses dropped frames from the joint states); false: every image in order"),
    "external_mask_topic": Param("", "mono8 mask topic for the external backend (same stamps as the images)"),
    "detectron2_config": Param("", "detectron2 (PointRend) config file for the detectron2 backend"),
    "detectron2_weights": Param("", "detectron2 weights file"),
    "publish_overlay": Param(True, "publish the RGB overlay"),
}


def segmenter_config(p: dict, colors: list, device: str = "cpu"):
    """The core :class:`SegmenterConfig` of the node's parameters ``p`` (also the offline pipeline's,
    :mod:`hp_ros.tools.offline`); ``colors``: the 12 marker colour numbers or []."""
    from hp_ros.core.segmentation.segmenter import SegmenterConfig

    return SegmenterConfig(
        object_backend=p["object_backend"], fallback_backend=p["fallback_backend"],
        color_model=p["color_model"], hsv_ranges=list(p["hsv_ranges"]),
        histogram_threshold=p["histogram_threshold"], histogram_rate=p["histogram_rate"],
        workspace_box=list(p["workspace_box"]), workspace_frame=p["workspace_frame"],
        color_in_workspace=p["color_in_workspace"], hand_dilate_px=p["hand_dilate_px"],
        hand_depth_tolerance=p["hand_depth_tolerance"], hand_occluder_tolerance=p["hand_occluder_tolerance"],
        hand_align_iterations=p["hand_align_iterations"], hand_align_every=p["hand_align_every"],
        hand_depth_scale=p["hand_depth_scale"],
        hand_margin_px=p["hand_margin_px"], min_area=p["min_area"], open_px=p["open_px"], close_px=p["close_px"],
        keep=p["keep"], object_size=p["object_size"], object_size_tolerance=p["object_size_tolerance"],
        marker_colors=colors, marker_radius=p["marker_radius"],
        marker_window_px=p["marker_window_px"], marker_hue_tolerance=p["marker_hue_tolerance"],
        model_margin=p["model_margin"], model_max_margin=p["model_max_margin"],
        model_tolerance=p["model_tolerance"], model_icp_iterations=p["model_icp_iterations"],
        model_scale=p["model_scale"], model_dilate_px=p["model_dilate_px"],
        model_device=device)
