"""Joint states from JointState messages, time-ordered and interpolated to any stamp."""
from __future__ import annotations

import bisect
from typing import Optional

import numpy as np

from hp_ros.io import msgs


class JointStateBuffer:
    """Time-ordered joint vectors from JointState messages, interpolated to any stamp.

    ``add`` validates a message completely before it changes anything: names, finite positions
    (:mod:`hp_ros.io.validate`) and, with a ``stamps`` detector (:class:`hp_ros.io.stamps.
    StampJumpDetector`, shared with the node's other streams), its stamp against the stream's own
    recent stamps. Refused messages raise :class:`~hp_ros.io.validate.InvalidMessage` (a
    ValueError with a ``kind``): a stray stamp, a message older than the newest by more than
    ``reorder_ns`` (late); messages slightly out of order are inserted in place. A sustained jump
    of the timeline (the detector's RESET: a looping bag, a restarted driver) clears the buffer and
    sets :attr:`reset_pending`, so the owner can reset its estimate. Without a detector a jump back
    by more than ``reset_ns`` does that (one message suffices then).
    """

    def __init__(self, mapper, capacity: int = 400, reorder_ns: int = 50_000_000, reset_ns: int = 1_000_000_000,
                 stamps=None, stream: str = "joint_states"):
        self.mapper = mapper
        self.capacity = capacity
        self.reorder_ns = reorder_ns
        self.reset_ns = reset_ns
        self.stamps_check, self.stream = stamps, stream
        self.stamps: list = []
        self.values: list = []
        self.reset_pending = False

    def clear(self) -> None:
        self.stamps.clear()
        self.values.clear()

    def add(self, msg) -> bool:
        """Store one sensor_msgs/JointState; ValueError (nothing changed) for a refused message.
        False when it is stored but the joint vector is not complete yet."""
        from hp_ros.io.validate import InvalidMessage

        names, positions, stamp_ns = msgs.joint_state_to_numpy(msg)
        self.mapper.update(names, positions, require_complete=False, dry_run=True)  # names known
        if self.stamps_check is not None:
            v = self.stamps_check.check(self.stream, stamp_ns)
            if not v.accepted:
                raise InvalidMessage(f"joint_states_{v.kind}", f"joint state refused: {v.text}")
            jumped = v.verdict == "reset"
        else:
            if stamp_ns <= 0:
                raise InvalidMessage("joint_states_stamp_zero", "joint state with a zero stamp refused")
            jumped = bool(self.stamps) and stamp_ns < self.stamps[-1] - self.reset_ns
        if not jumped and self.stamps and stamp_ns < self.stamps[-1] - self.reorder_ns:
            raise InvalidMessage("joint_states_late", f"joint state {(self.stamps[-1] - stamp_ns) * 1e-9:.3f} s "
                                 f"older than the newest (more than {self.reorder_ns * 1e-9:.3f} s late): dropped")
        if jumped:
            self.clear()
            self.reset_pending = True
        q = self.mapper.update(names, positions, require_complete=False)
        if not self.mapper.is_complete:
            return False
        i = bisect.bisect_right(self.stamps, stamp_ns)
        if i > 0 and self.stamps[i - 1] == stamp_ns:
            self.values[i - 1] = q
            return True
        self.stamps.insert(i, stamp_ns)
        self.values.insert(i, q)
        if len(self.stamps) > self.capacity:
            del self.stamps[0], self.values[0]
        return True

    def latest(self):
        """``(stamp_ns, q (J,))`` of the newest message, or None."""
        return (self.stamps[-1], self.values[-1]) if self.stamps else None

    def at(self, stamp_ns: int, max_gap_ns: int = 100_000_000) -> Optional[np.ndarray]:
        """Joint vector linearly interpolated at ``stamp_ns``; None when the stamp is outside
        the buffer by more than ``max_gap_ns`` (then the caller waits or skips)."""
        if not self.stamps:
            return None
        i = bisect.bisect_left(self.stamps, stamp_ns)
        if i < len(self.stamps) and self.stamps[i] == stamp_ns:
            return self.values[i].copy()
        if i == 0:
            return self.values[0].copy() if self.stamps[0] - stamp_ns <= max_gap_ns else None
        if i == len(self.stamps):
            return self.values[-1].copy() if stamp_ns - self.stamps[-1] <= max_gap_ns else None
        t0, t1 = self.stamps[i - 1], self.stamps[i]
        w = (stamp_ns - t0) / (t1 - t0)
        return (1 - w) * self.values[i - 1] + w * self.values[i]
