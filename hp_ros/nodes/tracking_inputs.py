"""The tracking node's input checks (issue 28): stamps that make sense, joint states it can use.

Each stream's stamps are checked against its own (:class:`hp_ros.io.stamps.StampJumpDetector`): a
stray is refused (counted in /diagnostics); a confirmed jump of the timeline resets the tracker
(:meth:`InputChecks.after_time_jump`); a camera_info must be a new frame (newer than the last), a
joint state at most 0.05 s older than the newest (``newest``: the newest accepted stamps).

After a jump the refinement is asked, seeded with the last published estimate: the node's outputs
(:class:`hp_ros.nodes.tracking_outputs.FrameOutputs`) keep ``last_T``, ``first_stamp`` and clear
``jump_seed`` here for each TRACKING frame.
"""
from __future__ import annotations

from hp_ros.io import msgs
from hp_ros.nodes.params import stamp_detector

__all__ = ["InputChecks"]


class InputChecks:
    """``tracker``: the :class:`~hp_ros.core.ekf.FrameTracker`; ``mapper``: the hand's joint-state
    mapper; ``errors``: the node's problem log; ``log``: its logger; ``p``: its parameters."""

    def __init__(self, tracker, mapper, errors, log, p: dict):
        self.tracker, self.mapper, self.errors, self.log, self.p = tracker, mapper, errors, log, p
        self.stamps = stamp_detector(p)  # each stream's stamps against its own (see stamp_ok)
        self.newest = {"camera_info": 0, "joint_states": 0}  # newest accepted stamps
        self.first_stamp = None  # first posed frame (see after_time_jump)
        self.last_T = None       # last published estimate (a refinement seed)
        self.jump_seed = None

    def stamp_ok(self, stream: str, stamp_ns: int) -> bool:
        """The stamp fits its stream: a stray is refused (counted); a confirmed jump of the timeline
        resets the tracker (after_time_jump); a camera_info must be a new frame (newer than the last)."""
        v = self.stamps.check(stream, stamp_ns)
        if not v.accepted:
            self.errors.warn(f"{stream}_{v.kind}", f"{stream} ignored: {v.text}")
            return False
        if v.verdict == "reset":
            self.after_time_jump(v.text, stamp_ns)
        if stream in self.newest:
            if stream == "camera_info" and stamp_ns <= self.newest[stream]:
                self.errors.warn("camera_info_order", f"camera_info stamped {(stamp_ns - self.newest[stream]) * 1e-9:+.3f}"
                                 " s from the previous one ignored (not a new frame)")
                return False
            if stream == "joint_states" and stamp_ns < self.newest[stream] - 50_000_000:
                self.errors.warn("joint_states_late", f"joint state {(self.newest[stream] - stamp_ns) * 1e-9:.3f} s "
                                 "older than the newest (more than 0.05 s late): dropped")
                return False
            self.newest[stream] = max(self.newest[stream], stamp_ns)
        return True

    def joint_ok(self, msg) -> bool:
        try:  # content first (finite, as many names as positions, known names), then the stamp
            names, positions, stamp = msgs.joint_state_to_numpy(msg)
            self.mapper.update(names, positions, require_complete=False, dry_run=True)
        except ValueError as e:
            self.errors.reject(e, "joint_state", "joint state ignored: ")
            return False
        return self.stamp_ok("joint_states", stamp)

    def after_time_jump(self, why: str, new_stamp: int) -> None:
        """Reset for a confirmed jump to ``new_stamp``. The initial_pose parameter describes the object
        at the stream's start: re-armed only when the new timeline starts there again (a looping bag);
        after any other jump it is stale, and the tracker asks the refinement, seeded with its last
        estimate (or waits for /hp_ros/initial_pose)."""
        self.tracker.reset(why)
        if hasattr(self.tracker, "joints"):
            self.tracker.joints.clear()  # the old timeline's joint states are not a jump back again
        self.newest = {k: 0 for k in self.newest}
        jump = int(self.p["max_stamp_jump"] * 1e9)
        if self.first_stamp is not None and new_stamp <= self.first_stamp + jump and self.tracker.pending_init:
            self.log.info("the stream restarted at its beginning: initial pose re-armed")
            return
        self.tracker.pending_init = None
        self.jump_seed = self.last_T
        self.log.info("time jumped: waiting for a refinement (seeded with the last estimate)"
                      if self.jump_seed is not None else "time jumped: waiting for an initial pose")
