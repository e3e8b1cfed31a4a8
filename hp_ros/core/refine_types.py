"""The refiner's settings, inputs and outputs (:mod:`hp_ros.core.refine`): :class:`RefineConfig`,
:class:`FrameObservation`, :class:`RefineResult`. ROS-free."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch

__all__ = ["RefineConfig", "FrameObservation", "RefineResult"]


@dataclass
class RefineConfig:
    """Optimisation settings (lengths in metres, angles in radians)."""

    max_iterations: int = 30
    roi_size: int = 96                 # RoI side S (pixels) of the main optimisation
    roi_margin: float = 0.25           # RoI margin, fraction of the object's projected size
    band: float = 2.0                  # soft silhouette half-width (RoI pixels)
    lr_translation: float = 5.0e-3     # Adam step (m) at the start; cosine decay to lr_final_ratio
    lr_rotation: float = 5.0e-2        # Adam step (rad)
    lr_final_ratio: float = 0.05
    lr_hand_translation: float = 1.0e-3
    lr_hand_rotation: float = 5.0e-3
    lr_joint: float = 5.0e-3
    early_stop_patience: int = 10      # stop after this many iterations without relative improvement (0: never)
    early_stop_rel_tol: float = 1.0e-3
    optimize_camera_hand: bool = False
    optimize_joint_offsets: bool = False
    # coarse search before Adam (robustness to a poor initial pose); 0 or 1 disables it
    num_hypotheses: int = 8
    hypothesis_rotation: float = math.radians(25.0)
    hypothesis_translation: float = 0.03
    coarse_size: int = 40              # RoI side used to score hypotheses
    top_k: int = 2                     # hypotheses refined briefly before choosing one
    top_k_iterations: int = 8          # their Adam iterations (0: only scored at roi_size, the best continues)
    # plain gradient-descent steps on the penetration term at the end (Adam drifts tangentially)
    penetration_gd_steps: int = 5
    penetration_tolerance: float = 0.0015  # m: GD steps only while deeper than this
    physics_fraction: float = 0.4      # last part of the iterations with the physics terms on
    physics_lr_scale: float = 0.3      # Adam step scale in that stage (starts near the solution)
    static_hand_occluder: bool = True  # hand not optimised: pre-render it once as an occluding depth map
    rgb_gain: bool = True              # fit a per-channel colour gain (lighting) in closed form
    adam_beta1: float = 0.5            # lower than torch's 0.9: less overshoot in short runs
    curvature: bool = False            # estimate the loss curvature (12 extra gradient evaluations)
    seed: int = 0
    # depth (hp_ros.core.refine_depth): Geman-McClure scale of the depth residuals, and a start from
    # the model backend's depth fit (ICP, hp_ros.core.segmentation.model) when the frame has depth
    depth_scale: float = 0.01          # m
    depth_fit: bool = True
    depth_fit_sigma: float = 0.013     # m: prior position std. dev. given to the depth fit (its search margin 3x)
    depth_fit_min_confidence: float = 0.3
    depth_fit_max_rot_sigma: float = 0.05  # rad: rotation directions the depth fit constrains less are kept
    face_budget: int = 3000            # faces rendered (quadric decimation above; <= 0: the full mesh)

    def __post_init__(self):
        if self.max_iterations < 0:
            raise ValueError(f"max_iterations must be >= 0, got {self.max_iterations}")
        for name in ("roi_size", "coarse_size"):
            if getattr(self, name) < 8:
                raise ValueError(f"{name} must be >= 8 pixels, got {getattr(self, name)}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        for name in ("lr_translation", "lr_rotation", "band"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


@dataclass
class FrameObservation:
    """One observed frame. Images are camera-sized ``H x W`` (numpy or torch).

    Attributes:
        rgb: ``(H, W, 3)`` uint8 (0-255) or float in [0, 1]; None disables the RGB term.
        object_mask: ``(H, W)`` bool/0-1/0-255 mask; None disables the object mask (and RGB) terms.
        hand_mask: ``(H, W)`` or None.
        depth: ``(H, W)`` float depth [m] aligned with the image (0 or NaN = no depth), or None
            (no depth term, no depth-fit start).
        q: ``(J,)`` joint angles (model order) or None (no hand).
        T_cam_hand: ``(4, 4)`` hand base pose in the camera frame, or None (no hand).
        stamp_ns: frame time stamp (informational).
    """

    rgb: Optional[object] = None
    object_mask: Optional[object] = None
    hand_mask: Optional[object] = None
    depth: Optional[object] = None
    q: Optional[object] = None
    T_cam_hand: Optional[object] = None
    stamp_ns: int = 0


@dataclass
class RefineResult:
    """Refinement output (all tensors detached, float32).

    Attributes:
        T_cam_obj: ``(B, 4, 4)`` refined object poses; T_cam_obj_init: ``(B, 4, 4)`` the given ones.
        T_cam_hand: ``(B, 4, 4)`` hand base poses after the (optional) correction, or None.
        joint_offsets: ``(J,)`` or None.
        history: per-iteration values, keys ``total`` and the unweighted terms.
        initial_loss, final_loss: total loss before / after (same resolution and weights).
        final_terms: unweighted terms at the final pose.
        mask_iou: ``(B,)`` IoU of the rendered (hard) object mask vs the observed one at the camera's
            resolution (NaN without an observed mask); mask_iou_roi: the same in the RoI.
        max_penetration_mm: ``(B,)``; contact_count: ``(B,)`` hand points within 1 mm (0 without hand).
        iterations: Adam iterations of the main stage; elapsed_s: wall time of :meth:`Refiner.refine`.
        hypotheses: number of poses scored by the coarse search (0 = no search); chosen_hypothesis.
        hessian_diag: ``(6,)`` diagonal curvature of the loss w.r.t. the last frame's pose delta
            (central differences of the gradient) when ``config.curvature``; else None.
    """

    T_cam_obj: torch.Tensor
    T_cam_obj_init: torch.Tensor
    T_cam_hand: Optional[torch.Tensor]
    joint_offsets: Optional[torch.Tensor]
    history: Dict[str, List[float]]
    initial_loss: float
    final_loss: float
    final_terms: Dict[str, float]
    mask_iou: np.ndarray
    max_penetration_mm: np.ndarray
    contact_count: np.ndarray
    iterations: int
    elapsed_s: float
    hypotheses: int = 0
    chosen_hypothesis: int = 0
    hessian_diag: Optional[np.ndarray] = None
    mask_iou_roi: Optional[np.ndarray] = None
    depth_fit_confidence: float = float("nan")   # of the ICP start (NaN: none)
