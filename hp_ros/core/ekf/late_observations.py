"""Late observations of :class:`hp_ros.core.ekf.frame_tracker.FrameTracker` (mixed in): observations
of frames already posed wait in ``late_obs`` until every kind of their frame is there (or
``late_wait``), then one pass returns the filter to the oldest such frame and re-predicts and
re-updates the frames after it (:meth:`hp_ros.core.ekf.tracker.EKFTracker.rerun`).
"""
from __future__ import annotations

__all__ = ["LateObservations"]


class LateObservations:
    """Mixin of :class:`~hp_ros.core.ekf.frame_tracker.FrameTracker` (uses its ``ekf``, ``cfg``,
    ``history``, ``late_obs``, ``late_since``, ``kinds_seen``, ``last_stamp`` / ``last_q``,
    ``counts``, ``_apply_observations`` and ``_transition``)."""

    def _late_ready(self, now: float) -> bool:
        """Late observations go in once every frame they belong to has each kind seen in the last
        second (the segmentation publishes a frame's fingertips and object observation one after
        the other: one reprocess pass for both, not one each), or after ``late_wait``."""
        expected = {k for k, t in self.kinds_seen.items() if now - t < 1.0}
        return now - self.late_since >= self.cfg.late_wait or all(expected <= o.keys() for o in self.late_obs.values())

    def _reprocess_late(self) -> None:
        """Apply ``late_obs``: return to the oldest frame they belong to and re-run from there."""
        late, self.late_obs, self.late_since = self.late_obs, {}, None
        idx = None
        for stamp, obs in sorted(late.items()):
            i = next((i for i, r in enumerate(self.history) if r["stamp"] == stamp), None)
            for kind, o in obs.items():
                if i is None or self.ekf is None or kind in self.history[i]["obs"]:
                    self.counts["late"] += 1
                    continue
                self.history[i]["obs"][kind] = o
                idx = i if idx is None else min(idx, i)
        if idx is None:
            return
        state_before = self.ekf.state
        last_stamp, last_q = self.last_stamp, self.last_q
        for k, rec in enumerate(self.history[idx:]):
            if k > 0:  # the frame's prediction steps made again on the updated estimate
                self.ekf.rerun(rec["steps"])
                self.last_stamp, self.last_q = rec["stamp"], rec["q"]
                rec["snap"] = self.ekf.snapshot()
            else:
                self.ekf.restore(rec["snap"])
                self.last_stamp, self.last_q = rec["stamp"], rec["q"]
            # no projection: the frames re-run here were published already (the next one projects)
            self._apply_observations(rec["stamp"], rec["obs"], count=rec["stamp"] in late, project=False)
        self.last_stamp, self.last_q = last_stamp, last_q
        self.counts["reprocessed"] += 1
        self._transition(state_before, self.history[idx]["stamp"], self.ekf.message)
