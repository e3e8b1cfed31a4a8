"""Joint states from JointState messages, time-ordered and interpolated to any stamp."""
from __future__ import annotations

import bisect
from typing import Optional

import numpy as np

from hp_ros.io import msgs


class JointStateBuffer:
    """Time-ordered joint vectors from JointState messages, interpolated to any stamp.

    ``add`` returns False (and stores nothing) for a message older than the newest one by
    more than ``reorder_ns`` (late) — it is dropped; messages slightly out of order are
    inserted in place. A jump back in time by more than ``reset_ns`` (a looping bag, a
    restarted driver) clears the buffer and sets :attr:`reset_pending`, so the owner can
    reset its estimate.
    """

    def __init__(self, mapper, capacity: int = 400, reorder_ns: int = 50_000_000, reset_ns: int = 1_000_000_000):
        self.mapper = mapper
        self.capacity = capacity
        self.reorder_ns = reorder_ns
        self.reset_ns = reset_ns
        self.stamps: list = []
        self.values: list = []
        self.reset_pending = False

    def clear(self) -> None:
        self.stamps.clear()
        self.values.clear()

    def add(self, msg) -> bool:
        """Store one sensor_msgs/JointState; ValueError for unknown names / NaNs (nothing stored)."""
        names, positions, stamp_ns = msgs.joint_state_to_numpy(msg)
        jumped_back = bool(self.stamps) and stamp_ns < self.stamps[-1] - self.reset_ns
        if not jumped_back and self.stamps and stamp_ns < self.stamps[-1] - self.reorder_ns:
            return False
        # validated before anything is cleared: a malformed message must not cost the buffer
        q = self.mapper.update(names, positions, require_complete=False)
        if jumped_back:
            self.clear()
            self.reset_pending = True
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
