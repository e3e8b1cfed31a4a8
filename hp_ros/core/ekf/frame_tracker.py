"""One path from observations to poses: the per-frame logic around :class:`EKFTracker`.

A :class:`FrameTracker` is what the tracking node, ``benchmarks/bench_ekf.py`` and offline
evaluation drive; it owns everything between typed inputs and one pose per frame:

* **Frames and pairing.** Observations of one image share its stamp (:meth:`add_observation`);
  a camera frame can be announced without any (:meth:`add_frame`: it gets a pose predicted from
  the joint states). :meth:`process` takes the pending frames in stamp order: a frame is ready once
  a joint state at or after its stamp is there and it has every observation kind seen in the last
  second; ``pairing_timeout`` after it was first heard of, it goes with what it has (without a
  joint state after it only when none arrived for ``max(0.5 s, max_joint_gap)``). Until the
  camera->hand calibration is known frames wait (those older than 2 s are dropped).
* **One frame.** Predict from the last processed stamp through every joint state in between to
  the frame's stamp (joints interpolated there), then the updates in this order: the depth-fit
  pose, the object centre (only when no depth fit was accepted: same depth pixels), the
  fingertips; then the projection of the published pose out of penetration.
* **Late observations.** An observation of an already processed frame (within
  ``reprocess_window``) waits for the next :meth:`process`, which returns the filter to the oldest
  such frame, adds them, and re-predicts and re-updates the frames after it in one pass (the
  prediction steps recorded for them are made again: :meth:`EKFTracker.rerun`;
  :mod:`hp_ros.core.ekf.late_observations`). Published poses stay as they were. An observation
  older than the window, or of a kind its frame already has, is counted ``late``. Joint states or
  observations jumping back by more than 1 s against the newest of their kind (a looping bag, a
  restarted driver) reset the tracker.
* **LOST and re-initialisation.** The filter declares LOST (:mod:`hp_ros.core.ekf.track_policy`);
  a frame's result says so, and :meth:`refinement_start_pose` gives the pose to refine from. A pose
  from outside (:meth:`set_initial_pose`, :meth:`reinitialize` for a refinement result, possibly
  of an earlier frame) initialises at the next frame: at its own stamp when the joint states there
  are still held, predicted forward from there.

Clock: ``now`` arguments are monotonic seconds (only pairing uses them); offline, :meth:`flush`
processes everything pending at once. Joint states come in batches (:meth:`add_joint_states`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import numpy as np

from hp_ros.core.ekf.confidence import TrackConfidence
from hp_ros.core.ekf.config import EKFConfig
from hp_ros.core.ekf.geometry import apply_delta_np, pose_error
from hp_ros.core.ekf.joint_history import JointHistory
from hp_ros.core.ekf.late_observations import LateObservations
from hp_ros.core.ekf.track_policy import TrackState
from hp_ros.core.ekf.tracker import EKFTracker
from hp_ros.core.observation import FingertipObservation, ObjectObservation

__all__ = ["FrameTracker", "FrameTrackerConfig", "FrameResult", "KINDS"]

KINDS = ("object", "fingertips")  # observation kinds of a frame
_JUMP_BACK_NS = 1_000_000_000


@dataclass
class FrameTrackerConfig:
    """Per-frame settings (the tracking node's parameters of the same names)."""

    use_fingertips: bool = True         # update with fingertip observations
    use_object_center: bool = True      # update with the object centre (centroid + median depth)
    use_object_pose: bool = True        # update with a depth-fit pose
    project_penetration: bool = True    # publish the estimate moved out of penetration
    project_on_moving_base: bool = True   # ... also while the hand base moves (/tf): see _apply_observations
    calibrate_on_moving_base: bool = False  # estimate_calibration also on a moving base: see _ensure_filter
    # a moving base without correction states takes /tf corrected by the segmentation's hand alignment
    # to depth (add_hand_alignment), low-passed in the hand frame with this time constant [s] (0: /tf as is)
    hand_alignment_time_constant: float = 2.0
    hand_alignment_max: tuple = (0.02, 0.1)  # [m, rad] larger corrections are refused (not the mount)
    min_confidence: float = 0.3         # observations (centre, each fingertip) below are ignored
    pairing_timeout: float = 0.001      # [s] latency budget of a frame (see the module doc)
    reprocess_window: float = 1.0       # [s] late observations up to this old are applied (0: dropped)
    late_wait: float = 0.02             # [s] longest wait of a late observation for the other kinds of its frame
    max_joint_gap: float = 0.1          # [s] farthest joint state from a frame's stamp
    publish_on_joint_states: bool = False  # also a predicted pose at the newest joint state
    joint_capacity: int = 400           # joint vectors held (re-initialisation at an old stamp needs them)

    @classmethod
    def from_dict(cls, values: dict) -> "FrameTrackerConfig":
        """The fields of ``values`` this class knows (others ignored)."""
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


@dataclass
class FrameResult:
    """What to publish for one frame. ``T_cam_obj`` ``(4, 4)`` / ``covariance`` ``(6, 6)``: the published
    estimate (moved out of penetration when configured); None before initialisation."""

    stamp: int
    state: int
    predicted: bool = False
    T_cam_obj: Optional[np.ndarray] = None
    covariance: Optional[np.ndarray] = None
    nis: float = float("nan")
    nis_gate: float = float("nan")
    rejections: int = 0
    contact_count: int = 0
    covariance_trace: float = float("nan")
    message: str = "waiting for an initial pose"
    updates: dict = field(default_factory=dict)   # kind -> UpdateResult of this frame's updates
    projection: object = None                     # ProjectionResult of the penetration projection
    stages: Optional[dict] = None                 # the caller's per-frame timing record (add_frame)
    score: float = 0.0                            # confidence in [0, 1] (hp_ros.core.ekf.confidence)
    q: Optional[np.ndarray] = None                # (J,) joint vector at the stamp (contact map, markers)
    T_cam_hand: Optional[np.ndarray] = None       # (4, 4) the filter's camera->hand estimate at the stamp
    observations: dict = field(default_factory=dict)  # kind -> the frame's own observation (markers)

    @property
    def initialized(self) -> bool:
        return self.T_cam_obj is not None


def _sigmas(cov: np.ndarray) -> tuple:
    """Mean position and rotation std. dev. of a ``(6, 6)`` pose covariance."""
    d = np.sqrt(np.clip(np.diag(cov), 0, None))
    return float(d[:3].mean()), float(d[3:].mean())


class FrameTracker(LateObservations):
    """Frames, pairing, late observations, update order and LOST handling around an :class:`EKFTracker`
    (built at the first frame once the calibration is known). ``warn(key, text)``: an input problem
    (one key per kind of problem); ``info(text)``: state changes and resets."""

    def __init__(self, hand, obj, ekf_config: Optional[EKFConfig] = None, config: Optional[FrameTrackerConfig] = None,
                 sdf=None, K=None, T_cam_hand=None, initial_pose=None,
                 warn: Optional[Callable[[str, str], None]] = None, info: Optional[Callable[[str], None]] = None):
        self.hand, self.obj, self.sdf = hand, obj, sdf
        self.ekf_config = ekf_config or EKFConfig()
        self.cfg = config or FrameTrackerConfig()
        self.K, self.T_cam_hand = K, T_cam_hand
        self.base = None             # HandBaseTrack: camera->hand per stamp on a moving base (/tf)
        self.hand_correction = None  # (stamp, (6,) hand-frame correction of /tf, its (4, 4)): add_hand_alignment
        self.initial_pose = initial_pose  # (4, 4) re-armed by every reset, or None
        self.warn = warn or (lambda key, text: None)
        self.info = info or (lambda text: None)
        self.joints = JointHistory(capacity=self.cfg.joint_capacity)
        self.ekf: Optional[EKFTracker] = None
        self.pending_init = None if initial_pose is None else (initial_pose, None, None)  # (T, cov, stamp)
        self.frames: dict = {}       # stamp -> {"t_first": now, kind: observation, "stages": dict}
        self.kinds_seen: dict = {}   # kind -> time last seen
        self.newest_obs: dict = {}   # kind -> newest observation stamp
        self.last_stamp: Optional[int] = None
        self.last_q = None
        self.last_center = None      # (stamp, u, v, depth) of the latest usable object observation
        self.last_joint_time = -math.inf
        self.history: list = []      # processed frames of the last reprocess_window
        self.late_obs: dict = {}     # stamp -> {kind: observation} of processed frames, not applied yet
        self.late_since: Optional[float] = None  # arrival of the oldest of them
        self.counts = {"frames": 0, "predicted": 0, "late": 0, "reprocessed": 0, "resets": 0,
                       "updates_accepted": 0, "updates_rejected": 0, "hand_alignments": 0}
        self.confidence = TrackConfidence.for_object(obj)  # the published score (issue 24)

    # ------------------------------------------------------------------ inputs
    @property
    def state(self) -> int:
        return self.ekf.state if self.ekf is not None else TrackState.INITIALIZING

    @property
    def pending(self) -> bool:
        """Frames or late observations wait for :meth:`process`."""
        return bool(self.frames or self.late_obs)

    def set_camera(self, K) -> None:
        """Intrinsics ``(3, 3)`` for the observations from now on (ValueError when invalid)."""
        K = EKFTracker._check_K(K)
        self.K = K
        if self.ekf is not None:
            self.ekf.set_camera(K)

    def set_calibration(self, T_cam_hand) -> None:
        """The published camera->hand transform ``(4, 4)`` (None: not known yet)."""
        self.T_cam_hand = T_cam_hand

    def set_hand_base(self, track) -> None:
        """A :class:`hp_ros.core.ekf.hand_base.HandBaseTrack`: camera->hand at each stamp (``/tf``), a
        control input like the joints; takes precedence over :meth:`set_calibration` once connected."""
        self.base = track

    def _cam_hand(self, stamp: int):
        """The published camera->hand ``(4, 4)`` at ``stamp`` (None: not known yet); on a moving base
        times the hand alignment's correction (:meth:`add_hand_alignment`)."""
        T = self.base.at(stamp) if self.base is not None else None
        if T is not None and self.hand_correction is not None:
            return T @ self.hand_correction[2]
        return T if T is not None else self.T_cam_hand

    @property
    def uses_hand_alignment(self) -> bool:
        """Whether :meth:`add_hand_alignment` can take a hand alignment now (a moving base whose
        filter estimates no camera->hand correction, ``hand_alignment_time_constant`` > 0)."""
        return self.cfg.hand_alignment_time_constant > 0 and self._moving() and not self._estimates_calibration()

    def add_hand_alignment(self, stamp: int, T_cam_hand_aligned) -> bool:
        """The camera->hand ``(4, 4)`` of the frame at ``stamp`` aligned to its depth image (the
        segmentation's hand ICP). On a moving base whose filter estimates no camera->hand correction
        (the default: see :meth:`_ensure_filter`), ``/tf`` is then used corrected by the difference,
        taken in the hand frame (where a mount error is constant) and low-passed over
        ``hand_alignment_time_constant``. True when it was taken; a correction beyond
        ``hand_alignment_max`` is refused (warned once)."""
        if not self.uses_hand_alignment:
            return False
        tau = self.cfg.hand_alignment_time_constant
        T_tf = self.base.at(stamp)
        T_al = np.asarray(T_cam_hand_aligned, dtype=np.float64)
        if T_tf is None or T_al.shape != (4, 4) or not np.isfinite(T_al).all():
            return False
        xi = pose_error(np.linalg.inv(T_tf) @ T_al, np.eye(4))
        max_t, max_r = self.cfg.hand_alignment_max
        if np.linalg.norm(xi[:3]) > max_t or np.linalg.norm(xi[3:]) > max_r:
            self.warn("hand_alignment", f"hand alignment {1e3 * np.linalg.norm(xi[:3]):.1f} mm / "
                                        f"{np.degrees(np.linalg.norm(xi[3:])):.1f} deg from /tf refused")
            return False
        if self.hand_correction is not None:
            last_stamp, last, _ = self.hand_correction
            a = 1.0 - math.exp(-max(stamp - last_stamp, 0) * 1e-9 / tau)
            xi = last + a * (xi - last)
            stamp = max(stamp, last_stamp)
        self.hand_correction = (stamp, xi, apply_delta_np(np.eye(4), xi))
        self.counts["hand_alignments"] += 1
        return True

    def _move_base(self, stamp: int) -> np.ndarray:
        """Move the filter's hand base to its /tf value at ``stamp``; the ``(4, 4)`` used (a re-run step)."""
        T = self._cam_hand(stamp)
        self.ekf.set_hand_base(T)
        return T

    def _moving(self) -> bool:
        return self.base is not None and self.base.moving

    def _estimates_calibration(self) -> bool:
        """Whether a filter built now has camera->hand correction states: not on a moving base
        unless ``calibrate_on_moving_base`` (see :meth:`_ensure_filter`)."""
        return self.ekf_config.estimate_calibration and (self.cfg.calibrate_on_moving_base or not self._moving())

    @property
    def uses_fingertips(self) -> bool:
        """Whether fingertip observations can change the estimate: they observe the camera->hand
        correction, so not without its states (a moving base by default). A node can stop
        receiving them then, and their producer stop making them."""
        if not self.cfg.use_fingertips:
            return False
        if self.ekf is not None:
            return self.ekf.layout.calibration
        return self._estimates_calibration()

    def add_joint_states(self, stamps_ns, q, now: float = 0.0) -> int:
        """Store a batch of joint states, ``stamps_ns`` ``(N,)`` int ns and ``q`` ``(N, J)``; the number
        stored. Time jumping back by more than 1 s resets the tracker."""
        stored, jumped = self.joints.add(stamps_ns, q)
        if jumped:
            self.reset("time went backwards in /joint_states")
        if stored:
            self.last_joint_time = now
        return stored

    def add_frame(self, stamp: int, now: float = 0.0, stages: Optional[dict] = None) -> None:
        """A camera frame that gets a pose whether or not observations come for it."""
        if self.last_stamp is None or stamp > self.last_stamp:
            frame = self.frames.setdefault(stamp, {"t_first": now})
            if stages is not None:
                frame["stages"] = stages

    def add_observation(self, stamp: int, kind: str, obs, now: float = 0.0) -> None:
        """An :class:`ObjectObservation` (``kind="object"``) or :class:`FingertipObservation`
        (``"fingertips"``) of the frame at ``stamp``."""
        if kind not in KINDS:
            raise ValueError(f"observation kind must be one of {KINDS}, got {kind!r}")
        # time went backwards: against the newest observation of the same kind (a segmentation
        # lagging more than a second behind the camera frames is late, not going backwards)
        newest = self.newest_obs.get(kind)
        if newest is not None and stamp < newest - _JUMP_BACK_NS:
            self.reset("time went backwards in the observations")
        self.newest_obs[kind] = max(stamp, self.newest_obs.get(kind, stamp))
        if self.last_stamp is not None and stamp <= self.last_stamp:
            # applied by the next process(): the observations of a frame then cost one reprocess
            # pass instead of one each, and a backlog one pass instead of one per frame
            self.late_obs.setdefault(stamp, {})[kind] = obs
            self.kinds_seen[kind] = now
            self.late_since = now if self.late_since is None else self.late_since
            return
        self.kinds_seen[kind] = now
        self.frames.setdefault(stamp, {"t_first": now})[kind] = obs

    def set_initial_pose(self, T_cam_obj, covariance=None, stamp: Optional[int] = None) -> None:
        """Initialise from ``T_cam_obj`` ``(4, 4)`` at the next frame (at ``stamp`` when given and older)."""
        self.pending_init = (np.asarray(T_cam_obj, dtype=np.float64), covariance, stamp)

    def reinitialize(self, T_cam_obj, covariance, stamp: int, only_if_lost: bool = False) -> bool:
        """A refinement result: re-initialise (at its frame's ``stamp``) a track that is not TRACKING
        (``only_if_lost``: only a LOST one); False when the track keeps its estimate."""
        state = self.state
        if state == TrackState.TRACKING or (only_if_lost and state != TrackState.LOST):
            return False
        self.set_initial_pose(T_cam_obj, covariance, stamp)
        return True

    def reset(self, why: str) -> None:
        """Forget the estimate and every pending frame; the initial pose is re-armed."""
        self.counts["resets"] += 1
        self.info(f"reset: {why}")
        if self.ekf is not None:
            before = self.ekf.state
            self.ekf.reset()
            self._transition(before, self.last_stamp or 0, f"reset: {why}")
        self.frames.clear()
        self.history.clear()
        self.late_obs.clear()
        self.late_since = None
        self.newest_obs.clear()
        self.hand_correction = None
        self.last_stamp = None
        self.last_q = None
        self.confidence.reset()
        if self.initial_pose is not None:
            self.pending_init = (self.initial_pose, None, None)

    # ------------------------------------------------------------------ processing
    def process(self, now: float) -> list:
        """Apply late observations, then process the frames that are ready, in stamp order; their
        :class:`FrameResult` s (a frame skipped for want of calibration or joint states has none)."""
        if self.late_obs and self._late_ready(now):
            self._reprocess_late()
        if self.T_cam_hand is None and (self.base is None or self.base.at(0) is None):
            # the calibration (/tf_static) can come a second after the first frames: keep them
            old = [s for s, f in self.frames.items() if now - f["t_first"] > 2.0]
            for s in old:
                del self.frames[s]
            if old:
                self.warn("no_calibration", "no camera->hand transform yet (parameter camera_to_hand or "
                                            "/tf_static): frames older than 2 s dropped")
            return []
        expected = {k for k, t in self.kinds_seen.items() if now - t < 1.0}
        newest = self.joints.latest()
        # joint states count as stopped only after 0.5 s without any (DDS delivers in bursts)
        joints_stalled = now - self.last_joint_time >= max(0.5, self.cfg.max_joint_gap)
        out = []
        for s in sorted(self.frames):
            frame = self.frames[s]
            joints_ready = newest is not None and newest[0] >= s and (not self._moving() or self.base.covers(s))
            complete = bool(expected) and expected <= frame.keys()
            timed_out = now - frame["t_first"] >= self.cfg.pairing_timeout and (joints_ready or joints_stalled)
            if not ((joints_ready and complete) or timed_out):
                break  # keep the frames in order
            if self.late_obs:  # a new frame includes every observation that came before it
                self._reprocess_late()
            out += self._frame(s, self.frames.pop(s))
        if self.cfg.publish_on_joint_states and newest is not None and self.ekf is not None \
                and self.ekf.initialized and self.last_stamp is not None and newest[0] > self.last_stamp:
            out += self._frame(newest[0], {})
        return out

    def flush(self) -> list:
        """Process every pending frame now, ready or not (offline use)."""
        return self.process(math.inf)

    def _frame(self, stamp: int, frame: dict) -> list:
        stages = frame.get("stages")
        if stages is not None:
            stages["start"] = time.time_ns()
        r = self._process_frame(stamp, frame)
        if r is None:
            return []
        r.stages = stages
        return [r]

    def _ensure_filter(self, stamp: int) -> bool:
        T_ch = self._cam_hand(stamp)
        if T_ch is None:
            self.warn("no_calibration", "no camera->hand transform yet (parameter camera_to_hand or /tf_static)")
            return False
        if self.ekf is None:
            cfg = self.ekf_config
            if cfg.estimate_calibration and not self._estimates_calibration():
                # on an arm the correction was not observable enough: fingertips and depth fits walked
                # it 2 -> 24 mm with a sigma of ~2 mm, and the modelled hand went with it (offline, lab
                # motion, 6 seeds: the true hand's deepest point in the published pose 13.1 -> 5.9 mm
                # without it, ADD-S 0.206 -> 0.197 cm). The /tf is then taken as it is.
                cfg = replace(cfg, estimate_calibration=False)
                self.info("moving hand base (/tf): camera->hand taken from /tf, no correction estimated "
                          "(calibrate_on_moving_base to estimate one)")
            self.ekf = EKFTracker(self.hand, self.obj, self.K, T_ch, cfg, object_sdf=self.sdf)
        elif self._moving():
            self.ekf.set_hand_base(T_ch)
        elif not np.allclose(T_ch, self.ekf.T_cam_hand_pub):
            self.ekf.set_calibration(T_ch)
        return True

    def _gap_ns(self) -> int:
        return int(self.cfg.max_joint_gap * 1e9)

    def _initialize(self, stamp: int, q) -> None:
        """Initialise from ``pending_init``: a pose of an earlier frame (a refinement result) starts
        there when its joint states are still held, and is predicted forward by the caller."""
        T, cov, when = self.pending_init
        self.pending_init = None
        state_before = self.ekf.state
        t_init = when if when is not None and when < stamp else stamp
        q_init = self.joints.at(t_init, self._gap_ns()) if t_init != stamp else q
        if q_init is None:
            self.warn("init_joints", "the initial pose's stamp is older than the buffered joint states: "
                                     "initialised at the current frame instead")
            t_init, q_init = stamp, q
        if self._moving() and t_init != stamp:
            self.ekf.set_hand_base(self._cam_hand(t_init))
        if cov is not None and np.all(np.isfinite(cov)) and np.all(np.diag(cov) > 0):
            ps, rs = _sigmas(cov)
            self.ekf.initialize(T, q=q_init, pos_sigma=ps, rot_sigma=rs)
        else:
            self.ekf.initialize(T, q=q_init)
        self.last_stamp, self.last_q = t_init, q_init
        self.confidence.mark(t_init)
        self.history.clear()  # nothing before an initialisation is reprocessed
        self._transition(state_before, stamp, f"initialised at stamp {t_init}")

    def _process_frame(self, stamp: int, frame: dict) -> Optional[FrameResult]:
        if not self._ensure_filter(stamp):
            return None
        ekf = self.ekf
        q = self.joints.at(stamp, self._gap_ns())
        if q is None:
            self.warn("no_joints", "no joint states around the observation stamp: frame skipped")
            return None
        if self.pending_init is not None:
            self._initialize(stamp, q)
        elif not ekf.initialized:
            return FrameResult(stamp, TrackState.INITIALIZING)
        state_before = ekf.state
        steps = self._predict_to(stamp, q)
        rec = {"stamp": stamp, "q": q, "snap": ekf.snapshot(), "obs": {k: frame[k] for k in KINDS if k in frame},
               "steps": steps}
        updates, projection = self._apply_observations(stamp, rec["obs"], count=True)
        applied = any(r.accepted for r in updates.values())
        if self.cfg.reprocess_window > 0:
            self.history.append(rec)
            horizon = stamp - int(self.cfg.reprocess_window * 1e9)
            while self.history and self.history[0]["stamp"] < horizon:
                self.history.pop(0)
        self.counts["frames"] += 1
        self.counts["predicted"] += 0 if applied else 1
        self._transition(state_before, stamp, ekf.message)
        T_pub, cov = ekf.T_cam_obj_published, ekf.covariance_published
        return FrameResult(stamp, ekf.state, not applied, T_pub, cov,
                           float(ekf.last_nis), float(ekf.last_gate), int(ekf.rejections), int(ekf.contact_count),
                           float(ekf.covariance_trace), ekf.message, updates, projection,
                           score=self.confidence.score(stamp, ekf.state, T_pub, cov), q=q, T_cam_hand=ekf.T_ch.copy(),
                           observations=dict(rec["obs"]))

    def _predict_to(self, stamp: int, q) -> list:
        """Predict from ``last_stamp`` through every held joint state before ``stamp`` to ``stamp``;
        the steps made (:class:`~hp_ros.core.ekf.motion.PredictStep`, for a re-run)."""
        if self.last_stamp is None or self.last_stamp >= stamp:
            return []
        steps = []
        moving = self._moving()  # the hand base is a control input too: moved before each joint step
        for s, qj in zip(*self.joints.between(self.last_stamp, stamp)):
            if moving:
                steps.append(self._move_base(s))
            self.ekf.predict(qj, (s - self.last_stamp) * 1e-9)
            steps.append(self.ekf.last_step)
            self.last_stamp = s
        if moving:
            steps.append(self._move_base(stamp))
        self.ekf.predict(q, max((stamp - self.last_stamp) * 1e-9, 0.0))
        steps.append(self.ekf.last_step)
        self.last_stamp, self.last_q = stamp, q
        return steps

    def _apply_observations(self, stamp: int, obs: dict, count: bool, project: bool = True) -> tuple[dict, object]:
        """The frame's updates in their order: depth-fit pose, centre (without an accepted fit: the
        same depth pixels), fingertips; then the penetration projection (``project``: an output
        step, only for a pose that is published). Returns ``({kind: UpdateResult}, ProjectionResult
        or None)``; a depth fit refused for low confidence is no observation and is left out."""
        ekf, cfg = self.ekf, self.cfg
        updates = {}
        o: Optional[ObjectObservation] = obs.get("object")
        fitted = False
        if o is not None and cfg.use_object_pose and o.pose is not None:
            r = ekf.update_depth_pose(o.pose, o.pose_covariance, o.pose_confidence)
            if r.accepted or r.reason == "gated":
                updates["depth_pose"] = r
            fitted = r.accepted
        if o is not None and o.valid and o.confidence >= cfg.min_confidence:
            self.last_center = (stamp, o.centroid_u, o.centroid_v, o.median_depth)
            if cfg.use_object_center and not fitted:
                updates["center"] = ekf.update_center(o.centroid_u, o.centroid_v, o.median_depth)
        tips: Optional[FingertipObservation] = obs.get("fingertips")
        if tips is not None and cfg.use_fingertips:
            uv, unknown = tips.pixels_for(self.hand.fingertip_links, cfg.min_confidence)
            for name in unknown:
                self.warn("tip_name", f"unknown fingertip name {name!r} ignored")
            if np.any(np.all(np.isfinite(uv), axis=1)):
                updates["fingertips"] = ekf.update_fingertips_2d(uv)
        # the projection trusts the modelled hand more than the pose: on a moving base with the
        # correction estimated (calibrate_on_moving_base) the modelled fingers were mm off the true
        # ones and the projection moved the estimate away from the truth (offline, lab motion, 6 seeds:
        # ADD-S 0.21 -> 0.29 cm, the true hand's deepest point 13.1 -> 17.1 mm); with /tf as it is,
        # it helps (5.9 mm with it, 8.9 without; ADD-S 0.197 both)
        project = project and cfg.project_penetration and (cfg.project_on_moving_base or not self._moving())
        projection = ekf.project_out_of_penetration() if project else None
        if count:
            self.confidence.observe(stamp, updates)
            for r in updates.values():
                self.counts["updates_accepted" if r.accepted else "updates_rejected"] += 1
        return updates, projection

    def _transition(self, before: int, stamp: int, reason: str) -> None:
        after = self.state
        if after != before:
            self.info(f"state {TrackState.NAMES[before]} -> {TrackState.NAMES[after]} at stamp {stamp}: {reason}")

    # ------------------------------------------------------------------ outputs
    def refinement_start_pose(self, stamp: int) -> np.ndarray:
        """Where a refinement of the frame at ``stamp`` should start ``(4, 4)``: a lost estimate can be
        beyond its reach, so re-centred on that frame's object observation (rotation kept)."""
        T0 = self.ekf.T_cam_obj
        if self.last_center is not None and self.last_center[0] == stamp:
            try:
                T0 = self.ekf.recentred_pose(*self.last_center[1:])
            except ValueError:
                pass  # no depth in the observation: the estimate as it is
        return T0
