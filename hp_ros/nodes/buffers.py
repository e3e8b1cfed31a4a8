"""Joint states from JointState messages: a time-ordered buffer interpolated to any stamp
(:class:`JointStateBuffer`, over the core's :class:`JointHistory`), and the conversion of a batch of
messages to arrays (:func:`joint_state_arrays`)."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from hp_ros.core.ekf.joint_history import JointHistory
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
        self.history = JointHistory(capacity, reorder_ns, reset_ns)
        self.reset_pending = False

    @property
    def stamps(self) -> list:
        return self.history.stamps

    @property
    def values(self) -> list:
        return self.history.values

    def clear(self) -> None:
        self.history.clear()

    def add(self, msg) -> bool:
        """Store one sensor_msgs/JointState; ValueError for unknown names / NaNs (nothing stored)."""
        names, positions, stamp_ns = msgs.joint_state_to_numpy(msg)
        kind = self.history.classify(stamp_ns)
        if kind == "late":
            return False
        # validated before anything is cleared: a malformed message must not cost the buffer
        q = self.mapper.update(names, positions, require_complete=False)
        if kind == "jump":
            self.clear()
            self.reset_pending = True
        if not self.mapper.is_complete:
            return False
        self.history.insert(stamp_ns, q)
        return True

    def latest(self):
        """``(stamp_ns, q (J,))`` of the newest message, or None."""
        return self.history.latest()

    def at(self, stamp_ns: int, max_gap_ns: int = 100_000_000) -> Optional[np.ndarray]:
        """Joint vector linearly interpolated at ``stamp_ns``; None when the stamp is outside
        the buffer by more than ``max_gap_ns`` (then the caller waits or skips)."""
        return self.history.at(stamp_ns, max_gap_ns)


def joint_state_arrays(messages, mapper, on_error: Callable[[str], None]) -> tuple[np.ndarray, np.ndarray]:
    """JointState messages -> ``(stamps (N,) int64 ns, q (N, J))`` in the hand's joint order
    (``mapper``: a :class:`hp_ros.core.hand.JointStateMapper`; partial messages fill in the
    joints they name). A malformed message is left out and reported through ``on_error(text)``;
    messages before the mapper knows every joint are left out."""
    stamps, qs = [], []
    for msg in messages:
        try:
            names, positions, stamp_ns = msgs.joint_state_to_numpy(msg)
            q = mapper.update(names, positions, require_complete=False)
        except ValueError as e:
            on_error(f"joint state ignored: {e}")
            continue
        if mapper.is_complete:
            stamps.append(stamp_ns)
            qs.append(q)
    if not stamps:
        return np.zeros(0, dtype=np.int64), np.zeros((0, len(mapper.joint_names)))
    return np.asarray(stamps, dtype=np.int64), np.stack(qs)
