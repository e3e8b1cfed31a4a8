"""The refinement node's own parameters (the common ones: :mod:`hp_ros.nodes.params`). The loss
terms' parameters come from the priors registry (:mod:`hp_ros.core.priors`): ``default_terms`` and one
``weights.<name>`` per registered term with its default weight. The refinement settings' defaults
come from :class:`hp_ros.core.refine.RefineConfig` and :mod:`hp_ros.core.global_pose`: one default
per setting."""
from __future__ import annotations

import math

from hp_ros.core import priors
from hp_ros.core.device import device_error
from hp_ros.core.global_pose import DEFAULT_GLOBAL_HYPOTHESES, DEFAULT_GLOBAL_ITERATIONS, AnswerCheck
from hp_ros.core.refine import RefineConfig
from hp_ros.nodes.params import length_in, non_negative, Param, positive

WEIGHT_PREFIX = "weights."  # one parameter per registered prior: weights.<name>


def terms_problem(v):
    names = priors.term_names()
    bad = [t for t in v if t not in names]
    return f"unknown terms {bad}; valid: {list(names)}" if bad else None


def _weight_check(v):
    return None if math.isfinite(v) and v >= 0 else f"must be a finite number >= 0, got {v!r}"


def prior_params() -> dict:
    """The parameters the priors registry (:mod:`hp_ros.core.priors`) gives: ``default_terms`` (every
    ``terms`` name) and one ``weights.<name>`` per registered term, with its default weight."""
    out = {"default_terms": Param(list(priors.term_names()), "loss terms used when a request names none",
                                  terms_problem)}
    for p in priors.PRIORS.values():
        switch = f"'{p.term}' term" if p.term else "not switchable by terms"
        out[WEIGHT_PREFIX + p.name] = Param(float(p.weight), f"weight of {p.doc} ({p.kind}, {switch}; 0 = off)",
                                            _weight_check)
    return out


def weights_from_params(params: dict) -> "priors.Weights":
    """The refinement's :class:`hp_ros.core.priors.Weights` from the declared ``weights.<name>`` parameters."""
    n = len(WEIGHT_PREFIX)
    return priors.Weights({k[n:]: float(v) for k, v in params.items() if k.startswith(WEIGHT_PREFIX)})


_CORE = RefineConfig()  # the core's defaults are the node's: one value per setting
_CHECK = AnswerCheck()

# the node's own parameters before and after those of the priors registry (prior_params)
_BASE_PARAMS = {
    "buffer_size": Param(30, "number of synchronised frames kept (ring buffer)", positive),
    "max_frame_age": Param(2.0, "buffered frames older than this [s] behind the newest buffered frame are dropped",
                           positive),
    "request_wait": Param(0.5, "longest wait [s] for a requested frame newer than the buffer (its image and "
                               "masks still on the way) and for the joint states to reach it", non_negative),
    "sync_tolerance": Param(0.005, "max stamp difference [s] to pair an image with its masks / a request stamp",
                            non_negative),
    "max_joint_gap": Param(0.1, "max distance [s] from a frame stamp to the joint states around it", positive),
    "use_depth": Param(True, "use the aligned depth image: the robust depth term, the start from the depth fit, "
                             "and the global estimate of a request without an initial pose"),
    "global_hypotheses": Param(DEFAULT_GLOBAL_HYPOTHESES, "poses around a global estimate's best scored with its "
                                                          "candidates", non_negative),
    "global_iterations": Param(DEFAULT_GLOBAL_ITERATIONS, "Adam iterations at most after a global estimate (0: "
                                                          "none, its depth fit and the colours' coarse search are "
                                                          "the answer; a request's max_iterations overrides)",
                               non_negative),
    "global_min_iou": Param(_CHECK.min_mask_iou, "a global estimate's refined answer with a lower mask IoU (camera "
                                                 "resolution) is rejected: its basin is excluded and the search run "
                                                 "again", non_negative),
    "global_max_penetration_mm": Param(_CHECK.max_penetration_mm, "a global estimate's refined answer with the hand "
                                                                  "deeper inside the object [mm] is rejected (as "
                                                                  "global_min_iou)", non_negative),
    "global_attempts": Param(_CHECK.attempts, "global searches of one request at most (each after a rejected "
                                              "answer); the best-fitting answer is returned", positive),
    "max_pose_age": Param(2.0, "a request without an initial pose starts from the tracked/refined pose when it is "
                               "at most this old [s] against the requested frame, else from a global estimate",
                          positive),
    "image_linger": Param(1.0, "the colour, depth and mask subscriptions stay open this long [s] after the first "
                               "camera_info and after each request, and are closed in between (an idle node receives no "
                               "images; a request then refines the first frame that arrives); keep it above the "
                               "tracker's retry after a failed answer (0.5 s), whose request then finds them open; "
                               "negative = always open (a request can refine any frame of the last buffer_size)"),
    "open_wait": Param(1.0, "longest extra wait [s] of a request that opened the image subscriptions for its first "
                            "frames (discovery, the segmentation node starting its masks)", non_negative),
    "first_frame_wait": Param(5.0, "longest wait [s] of a request that finds no camera_info or no synchronised frame "
                                   "yet (the cold start's first request at graph start-up): it is served as soon as "
                                   "the first frame (with depth, for a global estimate) is buffered, else answered "
                                   "'not ready:'", non_negative),
    "max_iterations": Param(_CORE.max_iterations, "default Adam iterations per request", positive),
    "roi_size": Param(_CORE.roi_size, "side [px] of the square region around the object that is rendered", positive),
    "num_hypotheses": Param(_CORE.num_hypotheses, "poses around the initial one scored before Adam (0 or 1 = no "
                                                  "coarse search)", non_negative),
}
_AFTER_PARAMS = {
    "early_stop_patience": Param(_CORE.early_stop_patience, "stop after this many iterations without improvement "
                                                            "(0 = never)", non_negative),
    "optimize_camera_hand": Param(_CORE.optimize_camera_hand, "also optimise a camera->hand correction"),
    "optimize_joint_offsets": Param(_CORE.optimize_joint_offsets, "also optimise per-joint offsets"),
    "refined_pose_sigma": Param([0.003, 0.003, 0.003, 0.035, 0.035, 0.035],
                                "std. dev. of the refined pose [x y z (m) rx ry rz (rad)], divided by the mask IoU",
                                length_in(6)),
    "publish_refined_pose": Param(True, "publish every successful result on /hp_ros/refined_pose"),
    "diagnostics_period": Param(1.0, "period [s] of the /diagnostics status", positive),
    "device": Param("cpu", "torch and Warp device of the refinement: cpu or cuda[:N] (CUDA asked for but not "
                           "usable here: one error in the log, then the CPU)", device_error),
}


def own_params() -> dict:
    """The node's own parameters; the registry is read when called (a prior registered since is in them)."""
    return {**_BASE_PARAMS, **prior_params(), **_AFTER_PARAMS}


OWN_PARAMS = own_params()  # with the shipped registry (the README's tables)
