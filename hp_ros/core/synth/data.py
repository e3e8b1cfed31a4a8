"""What goes in and what comes out of the generator: :class:`SynthConfig`, :class:`SynthSequence`.

Instance ids in renders: 0 object, 1 hand, 2 markers, 3 background (``INSTANCE_*``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

MOTIONS = ("classic", "lab")
INSTANCE_OBJECT, INSTANCE_HAND, INSTANCE_MARKERS, INSTANCE_BACKGROUND = 0, 1, 2, 3
# thumb, index, middle, ring: hues far from the built-in objects' colours
DEFAULT_MARKER_COLORS = ((1.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 0.5, 0.0), (0.5, 1.0, 0.0))


@dataclass
class SynthConfig:
    """Parameters of a synthetic sequence (see :mod:`hp_ros.core.synth` and its modules for what
    each part means)."""

    object: str = "builtin:cracker_box"          # "builtin:<name>" or a mesh path
    object_units: str = "auto"                   # for mesh files: "m", "mm" or "auto"
    hand_urdf: Optional[str] = None              # None = project URDF (primitive geometry)
    naming: str = "wonik"                        # joint naming of the hand model / joint states
    duration_s: float = 10.0
    fps: float = 30.0
    joint_rate_hz: float = 100.0
    seed: int = 0
    width: int = 640
    height: int = 480
    fx: float = 615.0
    fy: float = 615.0
    cx: float = 322.0
    cy: float = 247.0
    render: bool = True
    slips: Sequence = ()                         # [(time_s, duration_s, magnitude_m), ...]
    encoder_noise_std: float = 0.003             # rad
    joint_bias_std: float = 0.0                  # rad, constant per joint
    depth_noise_coeff: float = 0.0037            # sigma_z = coeff * z^2 (m)
    depth_hole_blobs: float = 4.0                # mean number of random hole blobs per frame
    depth_edge_hole_prob: float = 0.6            # probability of a hole at a depth discontinuity
    calib_error_m: float = 0.002                 # published camera->hand translation error (m)
    calib_error_rad: float = math.radians(0.5)   # published camera->hand rotation error (rad)
    markers: bool = True
    marker_colors: Sequence = DEFAULT_MARKER_COLORS
    marker_radius: Optional[float] = None        # None: from the fingertip geometry (~15 mm)
    background: bool = True
    lighting_variation: bool = True
    rgb_noise_std: float = 2.0                   # in 0-255 units
    camera_distance: float = 0.5                 # object centre to camera (m), +-10 % per seed
    rotation_amplitude_deg: float = 12.0
    contact_threshold: float = 0.001             # m, hand samples this close are contacts
    grasp_gap: float = 0.0004                    # m, finger closing stops at min SDF in [0, gap]
    ik_knot_s: float = 0.05                      # IK solved every ik_knot_s, spline in between
    start_time_ns: int = 1_700_000_000_000_000_000
    motion: str = "classic"                      # "classic" (fixed base, Kabsch chain) or "lab" (see .lab)
    arm_max_speed: float = 0.3                   # m/s, lab: peak speed of the hand base
    arm_max_rate_deg: float = 60.0               # deg/s, lab: peak angular rate of the hand base
    arm_max_angle_deg: float = 25.0              # deg, lab: largest orientation change of the hand
    tf_noise_m: float = 0.0002                   # m, lab: white noise of the published /tf
    tf_noise_rad: float = 0.0005                 # rad, lab: white noise of the published /tf

    def validate(self) -> "SynthConfig":
        if not self.duration_s > 0:
            raise ValueError(f"duration_s must be > 0, got {self.duration_s}")
        if not self.fps > 0 or not self.joint_rate_hz > 0:
            raise ValueError(f"fps and joint_rate_hz must be > 0, got {self.fps}, {self.joint_rate_hz}")
        if int(self.width) < 16 or int(self.height) < 16:
            raise ValueError(f"image size must be at least 16x16, got {self.width}x{self.height}")
        if self.naming not in ("wonik", "simlab"):
            raise ValueError(f"naming must be 'wonik' or 'simlab', got {self.naming!r}")
        for name in ("encoder_noise_std", "joint_bias_std", "depth_noise_coeff", "depth_hole_blobs",
                     "calib_error_m", "calib_error_rad", "rgb_noise_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.depth_edge_hole_prob <= 1:
            raise ValueError(f"depth_edge_hole_prob must be in [0, 1], got {self.depth_edge_hole_prob}")
        if self.motion not in MOTIONS:
            raise ValueError(f"motion must be one of {MOTIONS}, got {self.motion!r}")
        if len(self.marker_colors) != 4 or any(len(c) != 3 for c in self.marker_colors):
            raise ValueError("marker_colors must be 4 RGB triples (thumb, index, middle, ring) in [0, 1]")
        for s in self.slips:
            if len(s) != 3:
                raise ValueError(f"a slip is (time_s, duration_s, magnitude_m), got {s!r}")
            t, d, m = (float(x) for x in s)
            if d <= 0 or t < 0 or t >= self.duration_s:
                raise ValueError(f"slip {s!r}: need 0 <= time_s < duration_s ({self.duration_s}) and duration_s > 0")
        return self

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["slips"] = [list(map(float, s)) for s in self.slips]
        d["marker_colors"] = [list(map(float, c)) for c in self.marker_colors]
        return d


@dataclass
class SynthSequence:
    """A generated sequence: numpy arrays (``Nj`` joint samples, ``Nf`` frames).

    Poses are float64 ``(4, 4)`` ``T_a_b``; ``q`` vectors follow ``joint_names``.
    Image arrays are None when ``config.render`` was False (see :func:`iter_rendered_frames`).
    """

    config: SynthConfig
    joint_names: list
    joint_stamps_ns: np.ndarray          # (Nj,) int64
    joint_positions: np.ndarray          # (Nj, J) as published (noise + bias)
    joint_positions_true: np.ndarray     # (Nj, J)
    frame_stamps_ns: np.ndarray          # (Nf,) int64
    q_frames_true: np.ndarray            # (Nf, J)
    T_cam_obj: np.ndarray                # (Nf, 4, 4) ground truth
    T_cam_hand_true: np.ndarray          # (4, 4)
    T_cam_hand_published: np.ndarray     # (4, 4) with the calibration error
    K: np.ndarray                        # (3, 3)
    width: int
    height: int
    in_contact: np.ndarray               # (Nf,) bool
    slip: np.ndarray                     # (Nf,) bool
    fingertips_px_true: np.ndarray       # (Nf, 4, 2) thumb, index, middle, ring
    fingertips_cam_true: np.ndarray      # (Nf, 4, 3)
    contact_point_ids: np.ndarray        # (C,) indices into hand.surface_points
    contact_fingers: np.ndarray          # (4,) bool, which fingers touch at the grasp
    penetration_mm: np.ndarray           # (Nf,) max penetration of hand samples into the object
    n_contacts: np.ndarray               # (Nf,) hand samples within contact_threshold
    hand_frame: str                      # hand base link name (TF child frame)
    camera_frame: str = "camera_color_optical_frame"
    marker_colors: np.ndarray = None     # (4, 3) in [0, 1]
    marker_radius: float = 0.0
    rgb: Optional[np.ndarray] = None           # (Nf, H, W, 3) uint8
    depth_mm: Optional[np.ndarray] = None      # (Nf, H, W) uint16
    object_mask: Optional[np.ndarray] = None   # (Nf, H, W) bool
    hand_mask: Optional[np.ndarray] = None     # (Nf, H, W) bool (markers included)
    scene: dict = field(default_factory=dict, repr=False)  # lighting/background parameters
    # moving hand base (motion "lab"; None: fixed at T_cam_hand_true / _published)
    T_cam_hand_frames: Optional[np.ndarray] = None            # (Nf, 4, 4) true, per frame
    T_cam_hand_frames_published: Optional[np.ndarray] = None  # (Nf, 4, 4) as /tf gives it at the frames
    tf_stamps_ns: Optional[np.ndarray] = None                 # (Nt,) int64 stamps of /tf
    T_world_hand_tf: Optional[np.ndarray] = None              # (Nt, 4, 4) published world -> hand base
    T_cam_world: Optional[np.ndarray] = None                  # (4, 4) camera -> world (/tf_static)
    world_frame: str = "world"

    @property
    def num_frames(self) -> int:
        return len(self.frame_stamps_ns)

    def cam_hand_frames(self, published: bool = False) -> np.ndarray:
        """Camera->hand base at every frame ``(Nf, 4, 4)``: the true one, or (``published``) the one
        a tracker gets (with the calibration error; on a moving base from ``/tf`` at the frame)."""
        moving = self.T_cam_hand_frames_published if published else self.T_cam_hand_frames
        if moving is not None:
            return moving
        T = self.T_cam_hand_published if published else self.T_cam_hand_true
        return np.repeat(T[None], self.num_frames, axis=0)

    def metadata(self) -> dict:
        """JSON-serialisable description (config, frames, grasp facts) for sidecar files."""
        return {
            "generator": "hp_ros.core.synth", "config": self.config.to_dict(),
            "object": self.config.object, "seed": int(self.config.seed),
            "joint_names": list(self.joint_names), "hand_frame": self.hand_frame,
            "camera_frame": self.camera_frame, "K": self.K.tolist(), "width": self.width, "height": self.height,
            "T_cam_hand_true": self.T_cam_hand_true.tolist(),
            "T_cam_hand_published": self.T_cam_hand_published.tolist(),
            "motion": self.config.motion,
            "num_frames": self.num_frames, "num_joint_states": int(len(self.joint_stamps_ns)),
            "contact_point_ids": self.contact_point_ids.tolist(),
            "contact_fingers": self.contact_fingers.tolist(),
            "max_penetration_mm": float(self.penetration_mm.max()) if len(self.penetration_mm) else 0.0,
            "first_contact_frame": int(np.argmax(self.in_contact)) if self.in_contact.any() else -1,
            "slip_frames": np.nonzero(self.slip)[0].tolist(),
            "marker_colors": None if self.marker_colors is None else np.asarray(self.marker_colors).tolist(),
            "marker_radius": float(self.marker_radius),
            "instance_ids": {"object": INSTANCE_OBJECT, "hand": INSTANCE_HAND, "markers": INSTANCE_MARKERS,
                             "background": INSTANCE_BACKGROUND},
        }
