"""When a track is lost: the tracking states and the LOST rules, apart from the filter maths.

A track is LOST after ``lost_after_rejections`` consecutive *object* observations rejected by the
NIS gate, or when the trace of the pose covariance exceeds ``max_covariance_trace``. Fingertip
observations do not count either way: they see the hand, not the object, so their acceptance says
nothing about whether the object is where the filter thinks. A full-pose observation of the object
(``SLIP_KINDS``) rejected after ``slip_after_rejections`` others of its kinds in a row (counted
apart: an accepted centre update in between, which a slipped object still passes, does not reset
them) is tried once more against the covariance with a slip of the object in the hand added
(:func:`slip_prior`): accepted there, the slip is taken as having happened. Recovery from LOST is re-initialisation
(:meth:`EKFTracker.initialize`, e.g. from :meth:`EKFTracker.recentred_pose` or a refinement
result; the tracking node decides when).
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

__all__ = ["TrackState", "OBJECT_KINDS", "SLIP_KINDS", "rejections_after", "lost_reason", "slip_prior"]


class TrackState:
    """Tracking states (same values as ``hp_ros_msgs/TrackingStatus``)."""

    INITIALIZING = 0
    TRACKING = 1
    LOST = 2
    NAMES = {0: "INITIALIZING", 1: "TRACKING", 2: "LOST"}


# observations of the object itself: only their rejections count towards LOST
OBJECT_KINDS = ("center", "center_3d", "pose", "depth_pose")
# observations precise enough to tell a slip (full pose): only these may re-open a rejected track
SLIP_KINDS = ("pose", "depth_pose")


def rejections_after(kind: str, accepted: bool, rejections: int, kinds: tuple = OBJECT_KINDS) -> int:
    """Consecutive rejections of observations of ``kinds`` after a gated update of ``kind`` (other
    kinds leave the count as it is): ``OBJECT_KINDS`` for the LOST rule, ``SLIP_KINDS`` for the
    count :func:`slip_prior` looks at. The two are counted apart because when the depth fit is gated
    the frame's centre goes in instead, and a centroid that moved by millimetres still passes:
    reset by it, a single count never reached two while a slipped object's fits were refused frame
    after frame (offline, `lab` motion: the estimate 3-6 mm / 3-6 deg off for ~0.5 s at a time, NIS
    of exact fits 35-95 against a gate of 22.5)."""
    if kind not in kinds:
        return rejections
    return 0 if accepted else rejections + 1


def lost_reason(cfg, rejections: int, covariance_trace: Callable[[], float]) -> Optional[str]:
    """Why a TRACKING track is now LOST (None: it is not). ``covariance_trace``: called only when
    needed (it maps the covariance to the camera frame)."""
    if rejections >= cfg.lost_after_rejections:
        return f"{rejections} consecutive object observations rejected"
    trace = covariance_trace()
    if trace > cfg.max_covariance_trace:
        return f"covariance trace {trace:.3g} too large"
    return None


def slip_prior(cfg, kind: str, pose_rejections: int, P: np.ndarray) -> Optional[np.ndarray]:
    """``P`` ``(n, n)`` with a slip of the object in the hand added, or None when no slip is considered.

    The contact model says the object moves with the fingers; a slip (or a regrasp the contacts
    misread) breaks that at once, by millimetres or degrees, and every later observation of the
    object is then rejected against a covariance that never heard of it - the filter locks out
    and goes LOST. A slip is a jump of the object's hand-frame pose with sigma ``slip_pos_sigma`` [m] /
    ``slip_rot_sigma`` [rad] per axis (isotropic, so the same in any frame): a full-pose observation
    (``SLIP_KINDS``) gated out after ``slip_after_rejections`` consecutive full-pose rejections
    before it (``pose_rejections``: :func:`rejections_after` over ``SLIP_KINDS``) is
    tested once more against ``P`` with that jump added; the caller keeps the inflated ``P`` only
    when the observation passes the same gate there (the two hypotheses, no slip and slip, each
    tested at the gate; a lone outlier after one rejection is not enough)."""
    if kind not in SLIP_KINDS or pose_rejections < cfg.slip_after_rejections or not (
            cfg.slip_pos_sigma > 0 or cfg.slip_rot_sigma > 0):
        return None
    Ps = P.copy()
    Ps[:6, :6] += np.diag([cfg.slip_pos_sigma ** 2] * 3 + [cfg.slip_rot_sigma ** 2] * 3)
    return Ps
