"""When a track is lost: the tracking states and the LOST rules, apart from the filter maths.

A track is LOST after ``lost_after_rejections`` consecutive *object* observations rejected by the
NIS gate, or when the trace of the pose covariance exceeds ``max_covariance_trace``. Fingertip
observations do not count either way: they see the hand, not the object, so their acceptance says
nothing about whether the object is where the filter thinks. Recovery is re-initialisation
(:meth:`EKFTracker.initialize`, e.g. from :meth:`EKFTracker.recentred_pose` or a refinement
result; the tracking node decides when).
"""
from __future__ import annotations

from typing import Callable, Optional

__all__ = ["TrackState", "OBJECT_KINDS", "rejections_after", "lost_reason"]


class TrackState:
    """Tracking states (same values as ``hp_ros_msgs/TrackingStatus``)."""

    INITIALIZING = 0
    TRACKING = 1
    LOST = 2
    NAMES = {0: "INITIALIZING", 1: "TRACKING", 2: "LOST"}


# observations of the object itself: only their rejections count towards LOST
OBJECT_KINDS = ("center", "center_3d", "pose", "depth_pose")


def rejections_after(kind: str, accepted: bool, rejections: int) -> int:
    """Consecutive object-observation rejections after a gated update of ``kind``."""
    if kind not in OBJECT_KINDS:
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
