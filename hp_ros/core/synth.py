"""Synthetic Allegro in-hand manipulation sequences with ground truth (ROS-free).

``generate_sequence(SynthConfig(...)) -> SynthSequence``; rendering is exact ray casting
(:mod:`hp_ros.core.raycast`); :func:`write_sequence_bag` turns a sequence into a rosbag2.

Scene and frames
----------------
* The hand base (palm link, ``hand.base_link``) is **fixed in the camera frame**:
  ``T_cam_hand_true`` is constant; the camera looks at the palm side from the front-index side
  from ~0.5 m (fingers point up in the image). ``T_cam_hand_published`` = ``T_cam_hand_true @
  E`` with ``E`` a rotation of exactly ``calib_error_rad`` about a random axis and a
  translation of exactly ``calib_error_m`` in a random direction, both in the hand-base frame.
* Object poses ``T_cam_obj`` map object-frame points (the mesh's own frame) into the colour
  optical frame (REP-103).

Motion (all finger motion; the base never moves)
------------------------------------------------
1. approach (``t < t_grasp``, about 20 % of the sequence, at most 2 s): the object rests still in
   free space in front of the palm; the fingers move from an open pre-shape along a straight
   joint-space path to the grasp configuration, where each finger first touches the object
   (``min SDF`` of its surface samples in [0, ``grasp_gap``]; no penetration at the grasp frame);
2. hold, then lift (object moved ~1.4 cm away from the palm/upwards by the fingers);
3. in-hand rotation: smooth oscillating rotations (``rotation_amplitude_deg``) about the grasp
   axis and the palm normal, with small translations.
The finger joints come from a damped least-squares IK that moves each finger's contact centroid
with the desired object motion. The **ground-truth object motion is not that desired motion**:
between consecutive frames in contact it is exactly the Kabsch/Procrustes fit (``roma``, no
weights, no scaling) of the contact points from the previous to the current hand configuration,
in the camera frame — the tracker's quasistatic model. Contact points: the hand surface samples
``hand.surface_points(q)`` with indices ``contact_point_ids`` = all samples within
``contact_threshold`` (1 mm) of the object at the grasp frame (fixed for the sequence).
Slip events ``(time_s, duration_s, magnitude_m)`` add, on top of the Kabsch motion, a
translation of ``magnitude_m`` spread uniformly over the window, along the object's longest
axis (tangent to the grasped faces), sign random; those frames have ``slip=True``.

Sensors
-------
* joint states at ``joint_rate_hz`` (100 Hz) with Gaussian encoder noise ``encoder_noise_std``
  (rad) plus an optional constant per-joint bias ``joint_bias_std``; names = ``hand.joint_names``.
* images at ``fps`` (30 Hz), 640 x 480, default intrinsics fx = fy = 615, cx = 322, cy = 247
  (a RealSense D435 colour stream at 640x480 reports values of this size).
* depth (mm, uint16, aligned to colour) = z-depth + Gaussian noise with
  ``sigma = depth_noise_coeff * z**2`` (default 0.0037 m^-1: Intel's RMS model
  ``z^2 * subpixel / (focal * baseline)`` with subpixel 0.08, focal 430 px, baseline 50 mm,
  i.e. ~0.9 mm at 0.5 m), rounded to mm; holes (0) at random small blobs and, with
  probability ``depth_edge_hole_prob``, at depth discontinuities (> 1 cm between neighbours).
* RGB: Lambertian shading (ambient + one directional light; light direction, intensities and
  background colours vary per seed) of per-vertex colours (object: ``ObjectModel.vertex_colors``;
  hand: ``HandModel.link_colors``), Gaussian pixel noise.
* fingertip markers (``markers=True``): a coloured sphere of radius ``marker_radius`` (default:
  encloses the fingertip link, ~18 mm) centred on each fingertip point ``hand.fingertips(q)``, so
  an unoccluded marker's image centroid is the projected fingertip. Default colours thumb magenta, index cyan, middle orange, ring lime. Markers are paint:
  they are rendered (in the hand mask) but are not part of the contact geometry.
* background (``background=True``): a large, slightly tilted plane 0.8-1.0 m away whose colour
  varies smoothly; with it every pixel has a surface.

Instance ids in renders: 0 object, 1 hand, 2 markers, 3 background (``INSTANCE_*``).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

__all__ = ["SynthConfig", "SynthSequence", "generate_sequence", "iter_rendered_frames", "render_frame",
           "write_sequence_bag", "kabsch", "INSTANCE_OBJECT", "INSTANCE_HAND", "INSTANCE_MARKERS",
           "INSTANCE_BACKGROUND", "DEFAULT_MARKER_COLORS", "SIDECAR_NAME", "read_sidecar"]

INSTANCE_OBJECT, INSTANCE_HAND, INSTANCE_MARKERS, INSTANCE_BACKGROUND = 0, 1, 2, 3
# thumb, index, middle, ring: hues far from the built-in objects' colours
DEFAULT_MARKER_COLORS = ((1.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 0.5, 0.0), (0.5, 1.0, 0.0))
SIDECAR_NAME = "hp_ros_synth.json"


@dataclass
class SynthConfig:
    """Parameters of a synthetic sequence (see the module doc for what each part means)."""

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

    @property
    def num_frames(self) -> int:
        return len(self.frame_stamps_ns)

    def metadata(self) -> dict:
        """JSON-serialisable description (config, frames, grasp facts) for sidecar files."""
        return {
            "generator": "hp_ros.core.synth", "config": self.config.to_dict(),
            "object": self.config.object, "seed": int(self.config.seed),
            "joint_names": list(self.joint_names), "hand_frame": self.hand_frame,
            "camera_frame": self.camera_frame, "K": self.K.tolist(), "width": self.width, "height": self.height,
            "T_cam_hand_true": self.T_cam_hand_true.tolist(),
            "T_cam_hand_published": self.T_cam_hand_published.tolist(),
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


# ============================================================================ models (cached)

@functools.lru_cache(maxsize=8)
def _hand_model(urdf: Optional[str], naming: str):
    from hp_ros.core.hand import HandModel

    if urdf is None:
        return HandModel.default(naming=naming, dtype=torch.float64)
    path = Path(urdf)
    if not path.is_file():
        raise FileNotFoundError(f"hand URDF not found: {path}")
    return HandModel.from_urdf(path, naming=naming, dtype=torch.float64)


@functools.lru_cache(maxsize=8)
def _object_model(spec: str, units: str):
    import warnings

    from hp_ros.core.objects import ObjectModel

    if not spec.startswith("builtin:") and not Path(spec).is_file():
        raise FileNotFoundError(f"object mesh not found: {spec} (or use builtin:cracker_box / builtin:soup_can)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obj = ObjectModel.from_spec(spec, units=units) if not spec.startswith("builtin:") else ObjectModel.from_spec(spec)
    return obj


@functools.lru_cache(maxsize=8)
def _object_sdf(spec: str, units: str):
    import warnings

    from hp_ros.core.sdf import MeshSDF

    obj = _object_model(spec, units)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # open YCB meshes: winding-number sign (warned by MeshSDF)
        return MeshSDF(obj.vertices, obj.faces, max_dist=0.05)


# ============================================================================ small helpers

def kabsch(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Rigid ``(4, 4)`` T minimising ``sum |T x_i - y_i|^2`` (no scaling, no weights; roma), float64.

    ``x``, ``y``: ``(N, 3)`` (or ``(B, N, 3)`` -> ``(B, 4, 4)``), N >= 3 non-collinear.
    """
    import roma

    xt = torch.as_tensor(np.asarray(x, dtype=np.float64))
    yt = torch.as_tensor(np.asarray(y, dtype=np.float64))
    R, t = roma.rigid_points_registration(xt, yt)
    T = np.zeros(R.shape[:-2] + (4, 4))
    T[..., :3, :3] = R.numpy()
    T[..., :3, 3] = t.numpy()
    T[..., 3, 3] = 1.0
    return T


def _rotvec_to_matrix(rv: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(np.asarray(rv, dtype=np.float64)).as_matrix()


def _pose(R=None, t=None) -> np.ndarray:
    T = np.eye(4)
    if R is not None:
        T[:3, :3] = R
    if t is not None:
        T[:3, 3] = t
    return T


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _transform(T: np.ndarray, p: np.ndarray) -> np.ndarray:
    return p @ T[..., :3, :3].swapaxes(-1, -2) + T[..., None, :3, 3]


def _random_unit(rng) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


# ============================================================================ grasp synthesis

def _finger_joint_index(hand) -> np.ndarray:
    """(4, 4) canonical joint indices [finger, k] (fingers thumb, index, middle, ring)."""
    idx = np.zeros((4, 4), dtype=int)
    for j, name in enumerate(hand.joint_names):
        fk = hand.naming.parse_joint(name)
        if fk is None:
            raise ValueError(f"joint {name!r} does not follow the {hand.naming.scheme} naming")
        idx[fk] = j
    return idx


def _finger_of_link(hand) -> np.ndarray:
    """(L,) finger index of each link (-1 for palm/base)."""
    out = np.full(hand.num_links, -1)
    for i, ln in enumerate(hand.link_names):
        p = hand.naming.parse_link(ln)
        if isinstance(p, tuple):
            out[i] = p[0]
    return out


def _posture(hand, fj, thumb, finger, abduction=(0.0, 0.0, 0.0)) -> np.ndarray:
    q = np.zeros(hand.num_joints)
    q[fj[0]] = thumb
    for f in (1, 2, 3):
        q[fj[f]] = [abduction[f - 1]] + list(finger)
    lo, hi = (x.numpy() for x in hand.joint_limits)
    return np.clip(q, lo, hi)


def _min_sdf_per_finger(hand, sdf, q: np.ndarray, T_palm_obj: np.ndarray, point_finger: np.ndarray):
    """min SDF ``(B, 5)`` over each finger's surface samples (column 4 = palm/base), q ``(B, J)``."""
    pts = hand.surface_points(torch.as_tensor(q))                    # (B, N, 3) palm frame
    p_obj = _transform(np.linalg.inv(T_palm_obj), pts.numpy())
    d, _ = sdf.query(torch.as_tensor(p_obj, dtype=torch.float32))
    d = d.numpy()
    out = np.full((len(q), 5), np.inf)
    for f in range(4):
        out[:, f] = d[:, point_finger == f].min(axis=1)
    palm = point_finger < 0
    if palm.any():
        out[:, 4] = d[:, palm].min(axis=1)
    return out


def _close_fingers(hand, sdf, q_open, q_close, T_palm_obj, point_finger, gap, n_grid=48, n_bisect=18):
    """Per finger, the first s in [0, 1] on q_open + s (q_close - q_open) where it touches (min SDF <= gap).

    Returns (s (4,), touched (4,) bool, min_sdf (5,) at the result).
    """
    fj = _finger_joint_index(hand)
    s_grid = np.linspace(0.0, 1.0, n_grid)
    dq = q_close - q_open
    q = q_open + s_grid[:, None] * dq                                  # every finger at s_k
    d = _min_sdf_per_finger(hand, sdf, q, T_palm_obj, point_finger)[:, :4]
    s = np.ones(4)
    touched = np.zeros(4, dtype=bool)
    lo, hi = np.zeros(4), np.ones(4)
    for f in range(4):
        hit = np.nonzero(d[:, f] <= gap)[0]
        if len(hit):
            k = hit[0]
            touched[f] = True
            if k == 0:
                lo[f] = hi[f] = 0.0
            else:
                lo[f], hi[f] = s_grid[k - 1], s_grid[k]
    for _ in range(n_bisect):                                         # all fingers at once
        mid = 0.5 * (lo + hi)
        qm = q_open.copy()
        for f in range(4):
            qm[fj[f]] += mid[f] * dq[fj[f]]
        dm = _min_sdf_per_finger(hand, sdf, qm[None], T_palm_obj, point_finger)[0, :4]
        inside = dm <= gap
        hi = np.where(touched & inside, mid, hi)
        lo = np.where(touched & ~inside, mid, lo)
    s = np.where(touched, hi, 1.0)
    q_grasp = q_open.copy()
    for f in range(4):
        q_grasp[fj[f]] += s[f] * dq[fj[f]]
    dfin = _min_sdf_per_finger(hand, sdf, q_grasp[None], T_palm_obj, point_finger)[0]
    return q_grasp, s, touched, dfin


def _plan_grasp(hand, obj, sdf, rng, cfg):
    """Object pose in the palm frame and the grasp configuration.

    Orientation: the object's smallest bounding-box extent along the grasp axis (palm z: thumb
    below, fingers above), the largest along palm y (across the fingers), with a random twist
    of +-10 deg about the grasp axis. Position: in front of the palm (1.5 cm clearance),
    centred between the thumb and finger tips of a half-closed reference posture; shifted along
    the grasp axis until the thumb and at least two fingers touch.
    """
    fj = _finger_joint_index(hand)
    point_finger = _finger_of_link(hand)[hand.point_link_ids.numpy()]
    verts = obj.vertices.double().numpy()
    lo_b, hi_b = verts.min(0), verts.max(0)
    ext = hi_b - lo_b
    centre_obj = 0.5 * (lo_b + hi_b)
    order = np.argsort(ext)                 # small, middle, large
    R = np.zeros((3, 3))
    R[2, order[0]] = 1.0                    # palm z <- smallest
    R[1, order[2]] = 1.0                    # palm y <- largest
    R[0, order[1]] = 1.0                    # palm x <- middle
    if np.linalg.det(R) < 0:
        R[0] *= -1.0
    twist = _rotvec_to_matrix(np.array([0.0, 0.0, rng.uniform(-1, 1) * math.radians(10)]))
    R = twist @ R
    ext_palm = np.abs(R) @ ext

    q_open = _posture(hand, fj, thumb=[1.0, 0.05, 0.05, 0.05], finger=[0.05, 0.05, 0.05])
    q_close = _posture(hand, fj, thumb=[1.0, 0.9, 1.3, 1.4], finger=[0.9, 1.5, 1.5])
    q_ref = 0.5 * (q_open + q_close)
    tips = hand.fingertips(torch.as_tensor(q_ref)[None])[0].numpy()
    link_k = np.array([(p[1] if isinstance(p, tuple) else -1)
                       for p in (hand.naming.parse_link(n) for n in hand.link_names)])
    point_k = link_k[hand.point_link_ids.numpy()]
    x_tip = float(tips[1:, 0].mean())
    z_mid = 0.5 * (tips[0, 2] + tips[1:, 2].mean())
    best = None
    # fingertip grasp: the object's near face ~2 cm behind the reference finger tips, so that the
    # distal links (not the proximal phalanges) make the contacts
    for dx, dz in ((0, 0), (0.01, 0), (0, -0.01), (0, 0.01), (0.01, -0.01), (0.01, 0.01), (0.02, 0),
                   (-0.01, 0), (0, -0.02), (0, 0.02), (0.02, -0.02), (0.02, 0.02)):
        c = np.array([x_tip - 0.02 + 0.5 * ext_palm[0] + dx, 0.0, z_mid + dz])
        T_palm_obj = _pose(R, c - R @ centre_obj)
        q_g, s, touched, dmin = _close_fingers(hand, sdf, q_open, q_close, T_palm_obj, point_finger, cfg.grasp_gap)
        pts = hand.surface_points(torch.as_tensor(q_g)[None])[0].numpy()
        d, _ = sdf.query(torch.as_tensor(_transform(np.linalg.inv(T_palm_obj), pts), dtype=torch.float32))
        near = d.numpy() < cfg.contact_threshold
        # a finger is well placed when all its contacts are on its distal links (k >= 2)
        distal = np.array([touched[f] and near[point_finger == f].any()
                           and (point_k[near & (point_finger == f)] >= 2).all() for f in range(4)])
        ok = bool(distal[0] and distal[1:].sum() >= 2 and dmin[4] > cfg.contact_threshold
                  and not (near & ~distal[np.maximum(point_finger, 0)]).any())
        score = (ok, int(distal.sum()), -abs(dx) - abs(dz))
        if best is None or score > best[0]:
            best = (score, T_palm_obj, q_g, distal)
        if ok and distal.sum() == 4:
            break
    (ok, _, _), T_palm_obj, q_grasp, touched = best
    if not ok:
        raise ValueError(f"could not find a fingertip grasp of object {cfg.object!r} (extents {np.round(ext, 3).tolist()} m): "
                         "the thumb and two fingers must reach it; is it a hand-sized object in metres?")
    # fingers that do not make a good contact stay open
    for f in range(4):
        if not touched[f]:
            q_grasp[fj[f]] = q_open[fj[f]]
    return T_palm_obj, q_open, q_grasp, touched, point_finger


def _camera_pose(rng, c_palm: np.ndarray, distance: float) -> np.ndarray:
    """T_cam_palm: camera ``distance`` from the object centre, looking at it from the front-index side,
    palm +z (the fingers) pointing up in the image."""
    a = np.array([0.45, 0.85, 0.25]) / np.linalg.norm([0.45, 0.85, 0.25])
    a = _rotvec_to_matrix(_random_unit(rng) * math.radians(rng.uniform(0, 12))) @ a
    cam = c_palm + distance * a
    z = -a
    y = -np.array([0.0, 0.0, 1.0])
    y = y - z * (y @ z)
    y /= np.linalg.norm(y)
    x = np.cross(y, z)
    T_palm_cam = _pose(np.stack([x, y, z], axis=1), cam)
    return np.linalg.inv(T_palm_cam)


# ============================================================================ IK

def _ik(hand, q_start: np.ndarray, handle_links, handle_local, targets, fj, fingers, weights=(1.0,),
        mu=1e-6, iters=25, max_step=0.15):
    """Damped weighted least-squares IK of P points per finger, batched over B time samples.

    q_start ``(J,)``; handle_links ``(F,)`` link index per IK finger; handle_local ``(F, P, 3)``
    points in that link's frame; targets ``(B, F, P, 3)`` palm frame; weights ``(P,)``.
    Minimises ``sum_p w_p |p_fp(q) - target|^2 + mu |q_f - q_start_f|^2`` per finger within the
    joint limits, with the analytic Jacobian of revolute joints (``axis x (p - joint origin)``).
    Returns q ``(B, J)`` and the residual distances ``(B, F, P)``.
    """
    B = targets.shape[0]
    P = handle_local.shape[1]
    q = np.tile(q_start, (B, 1))
    lo, hi = (x.numpy() for x in hand.joint_limits)
    axes = np.stack([j.axis for j in hand.description.actuated_joints])         # (J, 3) in child frame
    child = np.asarray(hand._joint_child)
    # a joint moves the handle only if its child link is the handle link or one of its ancestors
    parent_of = {j.child: j.parent for j in hand.description.joints}
    names = hand._urdf_link_names
    moves = np.zeros((len(fingers), 4), dtype=bool)
    for i, (f, L) in enumerate(zip(fingers, handle_links)):
        chain, cur = set(), names[L]
        while cur is not None:
            chain.add(cur)
            cur = parent_of.get(cur)
        moves[i] = [names[child[j]] in chain for j in fj[f]]
    w = np.sqrt(np.asarray(weights, dtype=float))[None, :, None]                   # (1, P, 1)
    res = np.zeros((B, len(fingers), P))
    for it in range(iters + 1):
        T = hand.forward_kinematics(torch.as_tensor(q)).numpy()                   # (B, L, 4, 4)
        for i, (f, L) in enumerate(zip(fingers, handle_links)):
            p = np.einsum("bij,pj->bpi", T[:, L, :3, :3], handle_local[i]) + T[:, L, None, :3, 3]  # (B, P, 3)
            err = targets[:, i] - p
            res[:, i] = np.linalg.norm(err, axis=-1)
            if it == iters:
                continue
            jj = fj[f]
            Tc = T[:, child[jj]]                                                   # (B, 4, 4, 4)
            a_w = np.einsum("bkij,kj->bki", Tc[..., :3, :3], axes[jj])              # (B, 4, 3)
            Jf = np.cross(a_w[:, None], p[:, :, None] - Tc[:, None, :, :3, 3])     # (B, P, 4, 3)
            Jf = (Jf * moves[i][None, None, :, None]).transpose(0, 1, 3, 2) * w[..., None]  # (B, P, 3, 4)
            Jf = Jf.reshape(B, 3 * P, 4)
            e = (err * w).reshape(B, 3 * P)
            A = Jf.transpose(0, 2, 1) @ Jf + mu * np.eye(4)
            bvec = (Jf.transpose(0, 2, 1) @ e[..., None])[..., 0] - mu * (q[:, jj] - q_start[jj])
            step = np.linalg.solve(A, bvec[..., None])[..., 0]
            n = np.linalg.norm(step, axis=1, keepdims=True)
            step *= np.minimum(1.0, max_step / np.maximum(n, 1e-12))
            q[:, jj] = np.clip(q[:, jj] + step, lo[jj], hi[jj])
    return q, res


# ============================================================================ generation

def _timeline(D: float):
    t_grasp = min(2.0, 0.2 * D)
    t_lift0 = t_grasp + min(0.3, 0.05 * D)
    t_lift1 = t_lift0 + min(1.5, 0.15 * D)
    return t_grasp, t_lift0, t_lift1


def _desired_motion(t: np.ndarray, c0: np.ndarray, rng_params: dict, D: float, scale: float = 1.0) -> np.ndarray:
    """Desired object motion ``(B, 4, 4)`` in the palm frame (relative to the grasp pose)."""
    _, t_l0, t_l1 = _timeline(D)
    p = {k: (v * scale if k in ("lift", "a1", "a2", "wig") else v) for k, v in rng_params.items()}
    lift = _smoothstep((t - t_l0) / max(t_l1 - t_l0, 1e-6))[:, None] * p["lift"][None]
    tr = np.maximum(t - t_l1, 0.0)
    ramp = _smoothstep(tr / min(1.0, max(0.25 * (D - t_l1), 1e-3)))
    rv = ramp[:, None] * (p["a1"] * np.sin(2 * np.pi * p["f1"] * tr)[:, None] * p["axis1"][None]
                          + p["a2"] * np.sin(2 * np.pi * p["f2"] * tr + p["ph2"])[:, None] * p["axis2"][None])
    wiggle = ramp[:, None] * p["wig"][None] * np.sin(2 * np.pi * p["f3"] * tr)[:, None]
    R = _rotvec_to_matrix(rv)
    T = np.tile(np.eye(4), (len(t), 1, 1))
    T[:, :3, :3] = R
    T[:, :3, 3] = c0 + lift + wiggle - (R @ c0)
    return T


class _single_thread_torch:
    """Run torch single-threaded inside the block: the generator's ops are small, and on a busy
    2-core machine intra-op threading made batched FK 10-300x slower (measured)."""

    def __enter__(self):
        self._n = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self._n)
        return False


def generate_sequence(cfg: SynthConfig) -> SynthSequence:
    """Generate a sequence (see the module doc). Deterministic for a given config (incl. seed)."""
    cfg.validate()
    with _single_thread_torch():
        return _generate(cfg)


def _generate(cfg: SynthConfig) -> SynthSequence:
    hand = _hand_model(None if cfg.hand_urdf is None else str(cfg.hand_urdf), cfg.naming)
    obj = _object_model(str(cfg.object), cfg.object_units)
    sdf = _object_sdf(str(cfg.object), cfg.object_units)
    rng = np.random.default_rng(cfg.seed)
    fj = _finger_joint_index(hand)
    D = float(cfg.duration_s)

    # ---- grasp and camera -------------------------------------------------------------
    T_palm_obj0, q_open, q_grasp, touched, point_finger = _plan_grasp(hand, obj, sdf, rng, cfg)
    c0 = T_palm_obj0[:3, :3] @ (0.5 * (obj.vertices.double().numpy().min(0) + obj.vertices.double().numpy().max(0))) \
        + T_palm_obj0[:3, 3]
    dist = cfg.camera_distance * rng.uniform(0.9, 1.1)
    T_cam_palm = _camera_pose(rng, c0, dist)
    err_t = _random_unit(rng) * cfg.calib_error_m
    err_R = _rotvec_to_matrix(_random_unit(rng) * cfg.calib_error_rad)
    T_cam_palm_pub = T_cam_palm @ _pose(err_R, err_t)

    # contact points at the grasp: all surface samples within the threshold
    pts_g = hand.surface_points(torch.as_tensor(q_grasp)[None])[0].numpy()
    d_g, _ = sdf.query(torch.as_tensor(_transform(np.linalg.inv(T_palm_obj0), pts_g), dtype=torch.float32))
    contact_ids = np.nonzero(d_g.numpy() < cfg.contact_threshold)[0]
    if len(contact_ids) < 3:
        raise ValueError(f"only {len(contact_ids)} contact samples at the grasp; need >= 3 (increase n_surface_points?)")
    # IK handles per touching finger: the centroid of its contact samples on its most-touched
    # link, and a second point 1 cm inside the finger along the contact normal (weighted less),
    # which keeps the fingertip from rolling (tilting) on the object surface
    link_ids = hand.point_link_ids.numpy()
    local = hand.local_surface_points.double().numpy()
    _, n_obj = sdf.query(torch.as_tensor(_transform(np.linalg.inv(T_palm_obj0), pts_g), dtype=torch.float32))
    n_palm = n_obj.double().numpy() @ T_palm_obj0[:3, :3].T
    T_g = hand.forward_kinematics(torch.as_tensor(q_grasp)[None])[0].numpy()
    ik_fingers, handle_links, handle_local = [], [], []
    for f in range(4):
        ids = contact_ids[point_finger[contact_ids] == f]
        if len(ids) == 0:
            continue
        links, counts = np.unique(link_ids[ids], return_counts=True)
        L = links[np.argmax(counts)]
        sel = ids[link_ids[ids] == L]
        n_link = T_g[L, :3, :3].T @ n_palm[sel].mean(0)
        n_link /= max(np.linalg.norm(n_link), 1e-12)
        c = local[sel].mean(0)
        ik_fingers.append(f)
        handle_links.append(int(L))
        handle_local.append(np.stack([c, c - 0.01 * n_link]))
    handle_local = np.asarray(handle_local)                                  # (F, 2, 3)

    # ---- time base ----------------------------------------------------------------------
    Nj = int(round(D * cfg.joint_rate_hz))
    Nf = int(round(D * cfg.fps))
    tj = np.arange(Nj) / cfg.joint_rate_hz
    tf = np.arange(Nf) / cfg.fps
    t_all, inv = np.unique(np.concatenate([tj, tf]), return_inverse=True)
    t_grasp, _, _ = _timeline(D)
    t_grasp = tf[np.searchsorted(tf, t_grasp)] if np.searchsorted(tf, t_grasp) < Nf else tf[-1]
    t_pre = 0.25 * t_grasp
    params = dict(
        lift=np.array([-0.006, 0.0, 0.006]) * rng.uniform(0.8, 1.2),
        a1=math.radians(cfg.rotation_amplitude_deg) * rng.uniform(0.7, 1.0), f1=rng.uniform(0.18, 0.3),
        axis1=np.array([0.0, 0.0, 1.0]),
        a2=math.radians(cfg.rotation_amplitude_deg) * rng.uniform(0.3, 0.6), f2=rng.uniform(0.25, 0.4),
        ph2=rng.uniform(0, 2 * np.pi), axis2=np.array([1.0, 0.0, 0.0]),
        wig=_random_unit(rng) * 0.004, f3=rng.uniform(0.2, 0.5),
    )

    # ---- joint trajectory --------------------------------------------------------------
    q_all = np.tile(q_grasp, (len(t_all), 1))
    pre = t_all < t_grasp
    s = _smoothstep((t_all[pre] - t_pre) / (t_grasp - t_pre))[:, None]
    q_all[pre] = q_open + s * (q_grasp - q_open)
    hold = ~pre
    ik_res = np.zeros(0)
    scale = 0.0
    if hold.any() and ik_fingers:
        # IK on knots every ik_knot_s, joint values in between by a C2 cubic spline
        from scipy.interpolate import CubicSpline

        n_knots = max(4, int(math.ceil((t_all[-1] - t_grasp) / cfg.ik_knot_s)) + 1)
        t_knots = np.linspace(t_grasp, max(t_all[-1], t_grasp + 1e-3), n_knots)
        p_handle0 = np.einsum("fij,fpj->fpi", T_g[handle_links, :3, :3], handle_local) + T_g[handle_links, None, :3, 3]
        centre = p_handle0[:, 0].mean(0)      # rotations about the grip centre, as finger twisting does
        scale = 1.0
        for _ in range(4):                    # shrink the motion until the fingers can follow it
            Tm = _desired_motion(t_knots, centre, params, D, scale)
            targets = np.einsum("bij,fpj->bfpi", Tm[:, :3, :3], p_handle0) + Tm[:, None, None, :3, 3]
            q_knots, ik_res = _ik(hand, q_grasp, handle_links, handle_local, targets, fj, ik_fingers,
                                  weights=(1.0, 0.6))
            if ik_res[..., 0].max() < 1e-3:
                break
            scale *= 0.7
        q_knots[0] = q_grasp
        q_all[hold] = CubicSpline(t_knots, q_knots, axis=0, bc_type="clamped")(t_all[hold])
    q_joint_true = q_all[inv[:Nj]]
    q_frames = q_all[inv[Nj:]]

    # ---- object ground truth: Kabsch chain of the contact points -------------------------
    T_cam_obj = np.zeros((Nf, 4, 4))
    in_contact = tf >= t_grasp - 1e-9
    slip = np.zeros(Nf, dtype=bool)
    pts_f = hand.surface_points(torch.as_tensor(q_frames), base=torch.as_tensor(T_cam_palm)[None]).numpy()  # (Nf, N, 3)
    C = pts_f[:, contact_ids]
    deltas = kabsch(C[:-1], C[1:]) if Nf > 1 else np.zeros((0, 4, 4))    # frame k-1 -> k
    slip_dir_obj = np.zeros(3)
    ext_axis = np.argmax(obj.vertices.double().numpy().max(0) - obj.vertices.double().numpy().min(0))
    slip_dir_obj[ext_axis] = 1.0
    slip_signs = [rng.choice([-1.0, 1.0]) for _ in cfg.slips]
    T_cam_obj[0] = T_cam_palm @ T_palm_obj0
    for k in range(1, Nf):
        T = T_cam_obj[k - 1]
        if in_contact[k] and in_contact[k - 1]:
            T = deltas[k - 1] @ T
        extra = np.zeros(3)
        for (ts, dur, mag), sign in zip(cfg.slips, slip_signs):
            a, b = float(ts), float(ts) + float(dur)
            overlap = max(0.0, min(tf[k], b) - max(tf[k - 1], a))
            if overlap > 0 and in_contact[k]:
                extra += sign * float(mag) * overlap / float(dur) * (T[:3, :3] @ slip_dir_obj)
                slip[k] = True
        T = T.copy()
        T[:3, 3] += extra
        T_cam_obj[k] = T

    # ---- physical check: penetration and contact count per frame ------------------------
    p_obj = _transform(np.linalg.inv(T_cam_obj), pts_f)                 # (Nf, N, 3) object frame
    d_all, _ = sdf.query(torch.as_tensor(p_obj, dtype=torch.float32))
    d_all = d_all.numpy()
    penetration_mm = np.maximum(-d_all.min(axis=1), 0.0) * 1e3
    n_contacts = (d_all < cfg.contact_threshold).sum(axis=1)

    # ---- published joint states ----------------------------------------------------------
    bias = rng.normal(0.0, cfg.joint_bias_std, size=hand.num_joints) if cfg.joint_bias_std > 0 else 0.0
    q_pub = q_joint_true + bias + rng.normal(0.0, 1.0, size=q_joint_true.shape) * cfg.encoder_noise_std

    # ---- fingertips in the image ---------------------------------------------------------
    tips = hand.fingertips(torch.as_tensor(q_frames), base=torch.as_tensor(T_cam_palm)[None]).numpy()
    K = cfg.K
    uv = tips @ K.T
    tips_px = uv[..., :2] / uv[..., 2:3]

    # ---- scene appearance (per seed) -------------------------------------------------------
    scene = _scene_params(rng, cfg, c0, T_cam_palm)
    marker_radius = cfg.marker_radius if cfg.marker_radius is not None else _auto_marker_radius(hand)

    start = int(cfg.start_time_ns)
    seq = SynthSequence(
        config=cfg, joint_names=list(hand.joint_names),
        joint_stamps_ns=start + np.round(tj * 1e9).astype(np.int64), joint_positions=q_pub,
        joint_positions_true=q_joint_true, frame_stamps_ns=start + np.round(tf * 1e9).astype(np.int64),
        q_frames_true=q_frames, T_cam_obj=T_cam_obj, T_cam_hand_true=T_cam_palm,
        T_cam_hand_published=T_cam_palm_pub, K=K, width=int(cfg.width), height=int(cfg.height),
        in_contact=in_contact, slip=slip, fingertips_px_true=tips_px, fingertips_cam_true=tips,
        contact_point_ids=contact_ids, contact_fingers=touched, penetration_mm=penetration_mm,
        n_contacts=n_contacts, hand_frame=hand.base_link,
        marker_colors=np.asarray(cfg.marker_colors, float), marker_radius=float(marker_radius), scene=scene,
    )
    seq.scene["ik_residual_max_m"] = float(ik_res[..., 0].max()) if ik_res.size else 0.0
    seq.scene["motion_scale"] = float(scale)
    if cfg.render:
        frames = list(iter_rendered_frames(seq))
        seq.rgb = np.stack([f["rgb"] for f in frames])
        seq.depth_mm = np.stack([f["depth_mm"] for f in frames])
        seq.object_mask = np.stack([f["object_mask"] for f in frames])
        seq.hand_mask = np.stack([f["hand_mask"] for f in frames])
    return seq


# ============================================================================ rendering

def _auto_marker_radius(hand) -> float:
    """A sphere around the fingertip point that encloses the fingertip link (98th percentile of the
    distances of its surface samples, +2 %): ~18 mm for the built-in hand. Markers are paint: the
    part of the ball that reaches into the object is simply hidden by it in the render."""
    tip_ids = [hand.link_index(n) for n in hand.fingertip_links]
    ids = hand.point_link_ids.numpy()
    pts = hand.local_surface_points.double().numpy()
    sel = np.isin(ids, tip_ids)
    if not sel.any():
        return 0.012
    return float(np.clip(np.percentile(np.linalg.norm(pts[sel], axis=1), 98) * 1.02, 0.006, 0.03))


def _scene_params(rng, cfg: SynthConfig, c0_palm: np.ndarray, T_cam_palm: np.ndarray) -> dict:
    var = cfg.lighting_variation
    light = np.array([-0.3, -0.6, -1.0])
    if var:
        light = _rotvec_to_matrix(_random_unit(rng) * math.radians(rng.uniform(0, 35))) @ light
    light /= np.linalg.norm(light)
    c_cam = T_cam_palm[:3, :3] @ c0_palm + T_cam_palm[:3, 3]
    return dict(
        light_dir=light,                                                # towards the light, camera frame
        ambient=float(rng.uniform(0.25, 0.45)) if var else 0.35,
        diffuse=float(rng.uniform(0.55, 0.8)) if var else 0.65,
        light_color=(np.array([1.0, 1.0, 1.0]) + (rng.uniform(-0.06, 0.06, 3) if var else 0.0)),
        bg_distance=float(c_cam[2] + rng.uniform(0.3, 0.5)),
        bg_tilt=_random_unit(rng) * math.radians(rng.uniform(0, 20)),
        bg_colors=rng.uniform(0.15, 0.6, size=(4, 4, 3)) if var else np.full((4, 4, 3), 0.4),
    )


def _background_mesh(seq: SynthSequence):
    """A 6 m x 6 m plane (40 x 40 grid) at ``bg_distance``, tilted, with smooth colour variation."""
    sc = seq.scene
    n = 40
    u = np.linspace(-3.0, 3.0, n)
    X, Y = np.meshgrid(u, u)
    V = np.stack([X.ravel(), Y.ravel(), np.zeros(n * n)], axis=1)
    R = _rotvec_to_matrix(sc["bg_tilt"])
    V = V @ R.T + np.array([0.0, 0.0, sc["bg_distance"]])
    i = np.arange(n - 1)
    a = (i[:, None] * n + i[None, :]).ravel()
    F = np.concatenate([np.stack([a, a + 1, a + n + 1], 1), np.stack([a, a + n + 1, a + n], 1)])
    # bilinear colour field from a coarse 4x4 grid of random colours
    g = sc["bg_colors"]
    s = (X.ravel() + 3.0) / 6.0 * 3.0
    t = (Y.ravel() + 3.0) / 6.0 * 3.0
    i0, j0 = np.clip(s.astype(int), 0, 2), np.clip(t.astype(int), 0, 2)
    fs, ft = (s - i0)[:, None], (t - j0)[:, None]
    col = ((1 - fs) * (1 - ft) * g[j0, i0] + fs * (1 - ft) * g[j0, i0 + 1] + (1 - fs) * ft * g[j0 + 1, i0]
           + fs * ft * g[j0 + 1, i0 + 1])
    return V, F, col


@functools.lru_cache(maxsize=4)
def _unit_sphere():
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=2, radius=1.0)
    return np.asarray(m.vertices), np.asarray(m.faces)


class _FrameRenderer:
    """Renders the frames of one sequence.

    Speed: the camera and the background plane are fixed over a sequence, so the background's
    depth, ids and shaded colour are ray-cast once (:func:`_background_layer`, cached). Each frame
    then finds the nearest hits of the object, hand and markers alone (the background excluded)
    with :meth:`~hp_ros.core.raycast.RayCaster.render_hits` (rasterised primary visibility:
    cost ~ their image area), and keeps a foreground hit where it is nearer than the background:
    the same ids and depth as ray-casting everything together."""

    def __init__(self, seq: SynthSequence):
        from hp_ros.core.raycast import RayCaster

        cfg = seq.config
        self.seq = seq
        self.hand = _hand_model(None if cfg.hand_urdf is None else str(cfg.hand_urdf), cfg.naming)
        self.obj = _object_model(str(cfg.object), cfg.object_units)
        self.rc = RayCaster(seq.K, seq.width, seq.height, max_depth=20.0)
        self.obj_v = self.obj.vertices.double().numpy()
        self.obj_f = self.obj.faces.numpy()
        self.obj_c = self.obj.vertex_colors.double().numpy()
        self.hand_f = self.hand.mesh_faces.numpy()
        self.hand_c = self.hand.link_colors[self.hand.mesh_vert_link_ids.numpy()]
        sv, sf = _unit_sphere()
        self.marker_v = sv * seq.marker_radius
        self.marker_f = np.concatenate([sf + k * len(sv) for k in range(4)])
        self.marker_c = np.repeat(np.asarray(seq.marker_colors, float), len(sv), axis=0)
        self.bg = _background_layer(seq)
        self.T_base = torch.as_tensor(seq.T_cam_hand_true)[None]

    def render(self, k: int) -> dict:
        from hp_ros.core.raycast import MeshInstance

        seq, cfg = self.seq, self.seq.config
        T = seq.T_cam_obj[k]
        obj_v = self.obj_v @ T[:3, :3].T + T[:3, 3]
        hv, _, _ = self.hand.posed_mesh(torch.as_tensor(seq.q_frames_true[k])[None], base=self.T_base)
        hand_v = hv[0].numpy().astype(np.float64)
        inst = [MeshInstance(obj_v, self.obj_f, self.obj_c), MeshInstance(hand_v, self.hand_f, self.hand_c)]
        if cfg.markers:
            mv = (self.marker_v[None] + seq.fingertips_cam_true[k][:, None]).reshape(-1, 3)
            inst.append(MeshInstance(mv, self.marker_f, self.marker_c))
        else:
            inst.append(MeshInstance(np.zeros((3, 3)), np.zeros((0, 3), dtype=np.int64), None))
        pix, out = self.rc.render_hits(inst)
        # z-test against the cached background: a foreground hit wins where it is nearer
        bg_z = self.bg["depth"][pix]
        front = (out.depth > 0) & ((bg_z == 0) | (out.depth < bg_z))
        sel = pix[front]
        depth = self.bg["depth"].copy()
        depth[sel] = out.depth[front]
        instance = self.bg["instance"].copy()
        instance[sel] = out.instance[front]
        lin = self.bg["linear_rgb"].copy()
        lin[sel] = _shade_linear(out.normal[front], out.color[front], seq.scene)
        H, W = seq.height, seq.width
        depth, instance = depth.reshape(H, W), instance.reshape(H, W)
        rng = np.random.default_rng([int(cfg.seed), 7919, int(k)])  # per-frame stream: order independent
        return dict(rgb=_noisy_rgb(lin.reshape(H, W, 3), cfg, rng), depth_mm=_depth_mm(depth, cfg, rng),
                    object_mask=instance == INSTANCE_OBJECT,
                    hand_mask=(instance == INSTANCE_HAND) | (instance == INSTANCE_MARKERS),
                    instance=instance, depth_true=depth)


_BACKGROUND_CACHE: dict = {}


def _background_layer(seq: SynthSequence) -> dict:
    """The background plane alone, ray-cast through every pixel: flat ``depth`` ``(H*W,)``
    float32 (0 = no hit), ``instance`` ``(H*W,)`` int32 (INSTANCE_BACKGROUND or -1) and
    ``linear_rgb`` ``(H*W, 3)`` float32 (shaded, 0..255, before noise and rounding). Identical for
    every frame of a sequence (fixed camera, plane and light), so cached per scene."""
    from hp_ros.core.raycast import MeshInstance, RayCaster

    cfg, sc = seq.config, seq.scene
    key = (bool(cfg.background), seq.width, seq.height, np.asarray(seq.K, np.float64).tobytes(),
           np.concatenate([np.ravel(np.asarray(sc[n], np.float64)) for n in
                           ("bg_distance", "bg_tilt", "bg_colors", "light_dir", "ambient", "diffuse",
                            "light_color")]).tobytes())
    hit = _BACKGROUND_CACHE.get(key)
    if hit is not None:
        return hit
    n = seq.width * seq.height
    if cfg.background:
        out = RayCaster(seq.K, seq.width, seq.height, max_depth=20.0).render([MeshInstance(*_background_mesh(seq))])
        depth = out.depth.reshape(n)
        layer = dict(depth=depth, instance=np.where(depth > 0, INSTANCE_BACKGROUND, -1).astype(np.int32),
                     linear_rgb=_shade_linear(out.normal.reshape(n, 3), out.color.reshape(n, 3), sc))
    else:
        layer = dict(depth=np.zeros(n, np.float32), instance=np.full(n, -1, np.int32),
                     linear_rgb=np.zeros((n, 3), np.float32))
    for v in layer.values():
        v.setflags(write=False)  # shared between renderers: frames work on copies
    if len(_BACKGROUND_CACHE) >= 4:
        _BACKGROUND_CACHE.pop(next(iter(_BACKGROUND_CACHE)))
    _BACKGROUND_CACHE[key] = layer
    return layer


def _shade_linear(normal: np.ndarray, color: np.ndarray, scene: dict) -> np.ndarray:
    """Lambert shading of ray hits: ``normal``/``color`` ``(..., 3)`` -> ``(..., 3)`` float32 in
    0..255 (before noise and rounding); misses (zero colour) stay black."""
    lam = np.clip(normal @ np.asarray(scene["light_dir"], np.float32), 0.0, None)[..., None]
    gain = (np.asarray(scene["light_color"], np.float64) * 255.0).astype(np.float32)
    return color * (np.float32(scene["ambient"]) + np.float32(scene["diffuse"]) * lam) * gain


@functools.lru_cache(maxsize=1)
def _normal_quantiles() -> np.ndarray:
    """``(65536,)`` float32 standard-normal quantiles at (i + 0.5) / 65536 (tails to +-4.3 sigma)."""
    from scipy.special import ndtri

    return ndtri((np.arange(65536) + 0.5) / 65536).astype(np.float32)


def _standard_normal(rng, shape) -> np.ndarray:
    """Standard-normal noise ``shape`` float32 by table lookup of 16-bit uniform draws: ~5x faster
    than ``rng.standard_normal`` and indistinguishable after mm / 8-bit rounding."""
    return _normal_quantiles()[rng.integers(0, 65536, size=shape, dtype=np.uint16)]


def _noisy_rgb(linear_rgb: np.ndarray, cfg: SynthConfig, rng) -> np.ndarray:
    """``(H, W, 3)`` float32 0..255 -> uint8 with Gaussian sensor noise (``cfg.rgb_noise_std``).
    Consumes ``linear_rgb`` (modified in place)."""
    img = linear_rgb
    if cfg.rgb_noise_std > 0:
        noise = _standard_normal(rng, img.shape)
        noise *= np.float32(cfg.rgb_noise_std)
        img += noise
    np.rint(img, out=img)
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)


def _depth_mm(z: np.ndarray, cfg: SynthConfig, rng) -> np.ndarray:
    """RealSense-like depth ``(H, W)`` uint16 mm from the true z-depth ``z`` ``(H, W)`` metres
    (0 = no surface): noise growing with z^2, holes at depth edges and small random blobs."""
    H, W = z.shape
    z = np.asarray(z, np.float32)
    valid = z > 0
    zn = _standard_normal(rng, z.shape)
    zn *= np.float32(cfg.depth_noise_coeff)
    zn *= z
    zn *= z
    zn += z
    # holes at depth discontinuities (more than 1 cm between 4-neighbours)
    edge = np.zeros_like(valid)
    dzx = np.abs(np.diff(z, axis=1)) > 0.01
    dzy = np.abs(np.diff(z, axis=0)) > 0.01
    edge[:, 1:] |= dzx
    edge[:, :-1] |= dzx
    edge[1:] |= dzy
    edge[:-1] |= dzy
    holes = np.zeros_like(valid)
    on_edge = np.flatnonzero(edge)
    holes.flat[on_edge[rng.random(len(on_edge)) < cfg.depth_edge_hole_prob]] = True
    # random small blobs (specular / low-texture dropouts)
    n_blobs = rng.poisson(cfg.depth_hole_blobs) if cfg.depth_hole_blobs > 0 else 0
    for _ in range(n_blobs):
        cu, cv = rng.uniform(0, W), rng.uniform(0, H)
        ru, rv = rng.uniform(1.5, 6.0, size=2) * (W / 640.0)
        u0, u1 = max(int(cu - ru), 0), min(int(cu + ru) + 2, W)
        v0, v1 = max(int(cv - rv), 0), min(int(cv + rv) + 2, H)
        vv, uu = np.mgrid[v0:v1, u0:u1]
        holes[v0:v1, u0:u1] |= ((uu - cu) / ru) ** 2 + ((vv - cv) / rv) ** 2 <= 1.0
    zn *= np.float32(1000.0)
    np.rint(zn, out=zn)
    np.clip(zn, 1, 65535, out=zn)
    mm = zn.astype(np.uint16)
    mm[~valid | holes] = 0
    return mm


def iter_rendered_frames(seq: SynthSequence) -> Iterator[dict]:
    """Render every frame of ``seq`` in order: dicts with ``rgb`` (H, W, 3) uint8, ``depth_mm``
    (H, W) uint16, ``object_mask``/``hand_mask`` (H, W) bool, ``instance`` (H, W) int32 and
    ``depth_true`` (H, W) float32 metres (noise-free z-depth). Deterministic per frame."""
    r = _FrameRenderer(seq)
    for k in range(seq.num_frames):
        with _single_thread_torch():
            frame = r.render(k)
        yield frame


def render_frame(seq: SynthSequence, k: int) -> dict:
    """Render one frame (same output as :func:`iter_rendered_frames`)."""
    if not 0 <= k < seq.num_frames:
        raise ValueError(f"frame index {k} out of range [0, {seq.num_frames})")
    with _single_thread_torch():
        return _FrameRenderer(seq).render(k)


# ============================================================================ bag output

def write_sequence_bag(seq: SynthSequence, path, storage: str = "mcap", progress=None) -> Path:
    """Write ``seq`` as a rosbag2 (driver default topics, see :mod:`hp_ros.io.bag`).

    Topics: colour image (rgb8) + camera_info, aligned depth (16UC1 mm) + camera_info, all with
    frame ``camera_color_optical_frame``; ``/joint_states`` (names ``seq.joint_names``); one
    ``/tf_static`` message camera_color_optical_frame -> hand base with the **published**
    calibration (with error); ground truth object pose (PoseStamped) and object/hand masks
    (mono8 0/255) with the image stamps. Frames are rendered on the fly when ``seq.rgb`` is None.
    Beside the bag's files a JSON sidecar ``hp_ros_synth.json`` (:meth:`SynthSequence.metadata`)
    records the object spec, seed, config and ground-truth facts.

    ``progress``: optional callable ``progress(done_frames, total_frames)``.
    """
    from hp_ros.io import bag as B
    from hp_ros.io import msgs as M

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists already; choose a new output path")
    if storage not in B.STORAGES:
        raise ValueError(f"unknown storage {storage!r}; choose one of {B.STORAGES}")
    cam = seq.camera_frame
    with B.BagWriter(path, storage=storage) as bag:
        Image = bag.msg_class("sensor_msgs/msg/Image")
        CameraInfo = bag.msg_class("sensor_msgs/msg/CameraInfo")
        JointState = bag.msg_class("sensor_msgs/msg/JointState")
        TF = bag.msg_class("tf2_msgs/msg/TFMessage")
        TS = bag.msg_class("geometry_msgs/msg/TransformStamped")
        PoseStamped = bag.msg_class("geometry_msgs/msg/PoseStamped")
        t0 = int(min(seq.joint_stamps_ns[0], seq.frame_stamps_ns[0]))
        tf_msg = M.make_tf_message([M.make_transform_stamped(seq.T_cam_hand_published, t0, cam, seq.hand_frame, TS)], TF)
        bag.write(B.TOPIC_TF_STATIC, "tf2_msgs/msg/TFMessage", tf_msg, t0)
        frames = (None for _ in range(seq.num_frames)) if seq.rgb is not None else iter_rendered_frames(seq)
        j = 0
        Nj = len(seq.joint_stamps_ns)
        for k, fr in enumerate(frames):
            t = int(seq.frame_stamps_ns[k])
            while j < Nj and seq.joint_stamps_ns[j] <= t:   # joint states up to this image, in time order
                tj = int(seq.joint_stamps_ns[j])
                bag.write(B.TOPIC_JOINT_STATES, "sensor_msgs/msg/JointState",
                          M.make_joint_state(seq.joint_names, seq.joint_positions[j], tj, JointState), tj)
                j += 1
            if fr is None:
                fr = dict(rgb=seq.rgb[k], depth_mm=seq.depth_mm[k], object_mask=seq.object_mask[k],
                          hand_mask=seq.hand_mask[k])
            info = M.make_camera_info(seq.K, seq.width, seq.height, CameraInfo, frame_id=cam, stamp_ns=t)
            bag.write(B.TOPIC_COLOR_IMAGE, "sensor_msgs/msg/Image", M.numpy_to_image(fr["rgb"], "rgb8", t, cam, Image), t)
            bag.write(B.TOPIC_COLOR_INFO, "sensor_msgs/msg/CameraInfo", info, t)
            bag.write(B.TOPIC_DEPTH_IMAGE, "sensor_msgs/msg/Image", M.numpy_to_image(fr["depth_mm"], "16UC1", t, cam, Image), t)
            bag.write(B.TOPIC_DEPTH_INFO, "sensor_msgs/msg/CameraInfo", info, t)
            bag.write(B.TOPIC_GT_OBJECT_POSE, "geometry_msgs/msg/PoseStamped",
                      M.make_pose_stamped(seq.T_cam_obj[k], t, cam, PoseStamped), t)
            for topic, mask in ((B.TOPIC_GT_OBJECT_MASK, fr["object_mask"]), (B.TOPIC_GT_HAND_MASK, fr["hand_mask"])):
                bag.write(topic, "sensor_msgs/msg/Image",
                          M.numpy_to_image(mask.astype(np.uint8) * 255, "mono8", t, cam, Image), t)
            if progress is not None:
                progress(k + 1, seq.num_frames)
        while j < Nj:
            tj = int(seq.joint_stamps_ns[j])
            bag.write(B.TOPIC_JOINT_STATES, "sensor_msgs/msg/JointState",
                      M.make_joint_state(seq.joint_names, seq.joint_positions[j], tj, JointState), tj)
            j += 1
    (path / SIDECAR_NAME).write_text(json.dumps(seq.metadata(), indent=1))
    return path


def read_sidecar(bag_path) -> dict:
    """The ``hp_ros_synth.json`` metadata written next to a synthetic bag."""
    p = Path(bag_path)
    p = p if p.is_dir() else p.parent
    f = p / SIDECAR_NAME
    if not f.is_file():
        raise FileNotFoundError(f"no {SIDECAR_NAME} in {p}: not a bag written by hp-ros synth")
    return json.loads(f.read_text())
