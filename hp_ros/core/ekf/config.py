"""Tuning of the EKF tracker: :class:`EKFConfig` (units m, rad, s, pixels).

The defaults are measured values; how each was measured is in the package docstring
(:mod:`hp_ros.core.ekf`, "Tuning") and reproducible with ``benchmarks/bench_ekf.py``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

__all__ = ["EKFConfig"]


@dataclass
class EKFConfig:
    """Tuning of :class:`EKFTracker` (units: m, rad, s, pixels)."""

    estimate_calibration: bool = True      # estimate a camera->hand correction (fingertips need it)
    contact_threshold: float = 0.004       # hand point within this distance of the surface = contact
    max_penetration: float = 0.02          # deeper "contacts" are ignored (wrong pose)
    min_contacts: int = 3                  # fewer: translation only
    min_contact_bodies: int = 2            # contacts on fewer bodies (fingers / palm): a push, not a grasp -> hold
    min_spread: float = 0.005              # second principal spread of contacts for a rotation [m]
    out_of_contact: str = "hold"           # hold | constant_velocity
    velocity_decay: float = 2.0            # 1/s, constant-velocity model decay
    # s between contact-set queries on the SDF (reused in between). 0: every joint step - a finger that
    # lifts off (lab gaiting's regrasps) otherwise keeps carrying the object for up to this long and
    # drags it 10-20 mm (offline lab, 6 runs: ADD-S 0.197 -> 0.176 cm, rotation 1.27 -> 1.03 deg at 0
    # against 0.05; ~4 SDF queries more per frame)
    contact_refresh: float = 0.0
    # process noise (standard deviations)
    pos_random_walk: float = 0.0005        # m / sqrt(s)
    rot_random_walk: float = 0.003         # rad / sqrt(s)
    # slip / rolling error of the contact motion: a random walk in the motion variable (variance grows
    # with the distance / angle travelled, not with time; measured with exact inputs, see module doc)
    pos_motion_random_walk: float = 0.0023  # m / sqrt(m travelled)
    rot_motion_random_walk: float = 0.013   # rad / sqrt(rad turned)
    # issue 29, 'lab' motion (finger gaiting: contacts slide back while the object stays, which the
    # contact model reads as motion): tuned with bench_ekf.py --motion lab --seeds 10 11 --variants
    # +depth, ADD-S / rotation over the better baseline were 0.44 / 0.68 at these defaults, 0.27 / 0.33
    # at 0.008 / 0.05, 0.18 / 0.09 at 0.015 / 0.1 (LAB_MOTION_NOISE), 0.15 / 0.06 at 0.02 / 0.2. Not the
    # default: encoder jitter inflates the distance / angle each 100 Hz step "travels" several times,
    # so at 0.015 / 0.1 the rotation variance without depth fits crosses max_covariance_trace within
    # ~2 s (the tracking node's test, live graph: LOST)
    # while full-pose depth fits arrive (one within depth_fit_window s), the in-contact noise and the
    # projection's orientation bound are these instead (lab motion, offline, 8 runs with the model
    # backend: ADD-S 0.176 -> 0.164 cm, rotation 1.03 -> 0.90 deg, worst true-hand penetration 4.77 ->
    # 1.33 mm; the noise alone raised penetration, the larger rotation sigma switching the projection
    # off). Without fits (colour only, before the first) the values above: with these the rotation
    # variance crossed max_covariance_trace within ~2 s there (LOST). depth_fit_window 0: never.
    depth_pos_motion_random_walk: float = 0.015
    depth_rot_motion_random_walk: float = 0.1
    depth_projection_max_rot_sigma: float = 0.05
    depth_fit_window: float = 0.5
    motion_smoothing: float = 0.0          # s: the travel above is that of the contact twist low-pass filtered
                                           # with this time constant (0: each step's own; encoder jitter then
                                           # counts as travel, see motion._travel)
    fit_residual_weight: float = 0.1       # x RMS residual of the rigid contact fit (per step; encoder
                                           # noise in it largely cancels between steps, so not 1)
    free_pos_random_walk: float = 0.002    # m / sqrt(s), out of contact (measured: the untouched
    free_rot_random_walk: float = 0.01     # rad / sqrt(s)   object rests; 5 mm / 20 mrad was 3-50x too much)
    calib_pos_random_walk: float = 0.0002  # m / sqrt(s)
    calib_rot_random_walk: float = 0.0005  # rad / sqrt(s)
    base_pos_random_walk: float = 0.003    # m / sqrt(m the hand base moved), moving base (/tf), hand_base.py
    base_rot_random_walk: float = 0.01     # rad / sqrt(rad it turned)
    # initial uncertainty
    init_pos_sigma: float = 0.01
    init_rot_sigma: float = 0.05
    calib_pos_sigma: float = 0.002         # prior on the published calibration (per axis)
    calib_rot_sigma: float = 0.006
    # observation noise
    fingertip_px_sigma: float = 3.0
    fingertip_3d_sigma: float = 0.005
    fingertip_offset: float = 0.0          # tip point along the fingertip link's z axis [m]
    center_px_sigma: float = 2.5           # white part of the centroid / median-depth error (measured,
    center_depth_sigma: float = 0.0005     # see the module doc); the correlated part is the bias state
    center_3d_sigma: float = 0.008
    # error of the visible-centre model (finger occlusion, depth median) correlated over ~0.5 s: a
    # first-order Gauss-Markov state, not white noise the filter could average away. Its stationary
    # sigma scales with the visible surface's spread (pixels u, v; depth), with a floor.
    center_bias_px_sigma: float = 0.3             # px, floor
    center_bias_depth_sigma: float = 0.0002       # m, floor
    center_bias_fraction: float = 0.01            # x spread of the visible surface (u, v [px], depth [m])
    center_bias_time: float = 0.5                 # s, correlation time (0: constant per track)
    center_rotation: str = "model"         # model | consider: visible-centre offset's rotation dependence
    center_corrects_rotation: bool = False  # True: the centre update may also turn the object and the
    #                                         calibration (measured: it turns model error into rotation)
    pose_pos_sigma: float = 0.01
    pose_rot_sigma: float = 0.05
    # depth fit of the model segmentation backend (update_depth_pose): R = depth_cov_scale^2 x its
    # ICP covariance + a white floor (measured against ground truth, see the module doc)
    depth_cov_scale: float = 1.0           # measured: the ICP sigma per axis = the fits' white error
    depth_pos_sigma: float = 0.00001       # m per axis, white floor (synthetic depth: see the module doc;
    depth_rot_sigma: float = 0.00005       # rad per axis   a real sensor needs far more)
    depth_min_confidence: float = 0.3      # fits with a lower depth agreement are ignored (0: always ignored)
    # error of the depth fit correlated over frames (model / occlusion / view dependent): a first-order
    # Gauss-Markov bias of the fitted pose (6 states; both sigmas 0 = no such states)
    depth_bias_pos_sigma: float = 0.000047  # m per axis, stationary (measured offset of the fits 0.05-0.07 mm)
    depth_bias_rot_sigma: float = 0.00018  # rad per axis, stationary (measured 0.1-0.16 mrad)
    depth_bias_time: float = 2.0           # s, correlation time (measured: no decay within 1 s)
    # physics: after the updates the estimate is projected out of penetration (project_out_of_penetration)
    penetration_tolerance: float = 0.0005  # m, hand points deeper than this inside the object are pushed out
    projection_iterations: int = 5         # re-linearisations of the projection (SDF queries; a pinch needed 5)
    projection_max_rot_sigma: float = 0.01  # rad: project only when the orientation is known this well (2nd
    #                                         largest rotation sigma: a body of revolution's spin is free).
    #                                         Measured in the demo without the depth fit (~3 deg sigma):
    #                                         the smallest move out of the modelled fingers is a turn that
    #                                         pushed the true fingers 25 mm in (6 mm unprojected)
    projection_feedback: bool = False      # True: the projected pose becomes the filter state (measured:
    #                                        the NIS gate then rejects the depth fits, see project_out_of_penetration)
    projection_corrects_calibration: bool = False  # with feedback: the projection may also move the
    #                                                camera->hand estimate (measured: it walks away)
    # gating / lost track
    gate_probability: float = 0.999
    lost_after_rejections: int = 15
    max_covariance_trace: float = 0.05     # m^2 + rad^2
    # slips (track_policy.slip_prior): a full-pose fit rejected after this many consecutive object
    # rejections is tried against P + a jump of the object in the hand of these sigmas (0 and 0: never).
    # Issue 29, measured (bench_ekf.py --variants +depth): on the 'lab' motion the default noise then
    # holds the track (held-out seeds 0-4: runs ending LOST 10 -> 0 of 10, ADD-S / rotation over the
    # better baseline 0.54 / 0.60 -> 0.19 / 0.11); on 'classic' no fit is ever taken as a slip (seeds
    # 0-5: the same figures to the digit)
    slip_after_rejections: int = 2
    slip_pos_sigma: float = 0.01           # m per axis (the lab generator's slips: 4-10 mm)
    slip_rot_sigma: float = 0.1            # rad per axis (a gait stroke is <= 15 deg = 0.26 rad)

    def __post_init__(self):
        if self.center_rotation not in ("model", "consider"):
            raise ValueError(f"center_rotation must be 'model' or 'consider', got {self.center_rotation!r}")
        if self.out_of_contact not in ("hold", "constant_velocity"):
            raise ValueError(f"out_of_contact must be 'hold' or 'constant_velocity', got {self.out_of_contact!r}")
        if not 0.0 < self.gate_probability < 1.0:
            raise ValueError(f"gate_probability must be in (0, 1), got {self.gate_probability}")
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float) and f.name != "fingertip_offset" and not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"{f.name} must be a finite value >= 0, got {v}")
        if self.contact_threshold <= 0:
            raise ValueError("contact_threshold must be > 0")
        if int(self.slip_after_rejections) != self.slip_after_rejections or self.slip_after_rejections < 1:
            raise ValueError(f"slip_after_rejections must be an integer >= 1, got {self.slip_after_rejections}")
        if int(self.projection_iterations) != self.projection_iterations or self.projection_iterations < 0:
            raise ValueError(f"projection_iterations must be an integer >= 0, got {self.projection_iterations}")

    @classmethod
    def from_dict(cls, values: dict) -> "EKFConfig":
        """Config from a dict, ignoring keys that are not config fields."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


# the in-contact process noise tuned on the 'lab' motion (see pos_motion_random_walk above): for
# bench_ekf.py --set, or EKFConfig(**LAB_MOTION_NOISE)
LAB_MOTION_NOISE = {"pos_motion_random_walk": 0.015, "rot_motion_random_walk": 0.1}
