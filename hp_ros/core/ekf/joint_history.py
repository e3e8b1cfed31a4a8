"""The joint states a tracker predicts with: time-ordered joint vectors, interpolated to any stamp.

Joint states arrive at 100 Hz and in batches (the tracking node takes all that arrived when it
processes a frame): :meth:`JointHistory.add` stores ``(N,)`` stamps with their ``(N, J)`` vectors.
A stamp older than the newest by more than ``reorder_ns`` is late and dropped; one slightly out of
order is inserted in place; a jump back in time by more than ``reset_ns`` (a looping bag, a
restarted driver) clears the history first and is reported, so the owner can reset its estimate.
"""
from __future__ import annotations

import bisect
from typing import Optional

import numpy as np

__all__ = ["JointHistory"]


class JointHistory:
    """At most ``capacity`` joint vectors ``(J,)`` in stamp order (int ns)."""

    def __init__(self, capacity: int = 400, reorder_ns: int = 50_000_000, reset_ns: int = 1_000_000_000):
        self.capacity = int(capacity)
        self.reorder_ns = int(reorder_ns)
        self.reset_ns = int(reset_ns)
        self.stamps: list = []
        self.values: list = []

    def clear(self) -> None:
        self.stamps.clear()
        self.values.clear()

    def classify(self, stamp_ns: int) -> str:
        """``"jump"`` (back in time by more than ``reset_ns``), ``"late"`` (older than the newest by
        more than ``reorder_ns``) or ``"ok"``."""
        if not self.stamps:
            return "ok"
        if stamp_ns < self.stamps[-1] - self.reset_ns:
            return "jump"
        return "late" if stamp_ns < self.stamps[-1] - self.reorder_ns else "ok"

    def insert(self, stamp_ns: int, q: np.ndarray) -> None:
        """Store ``q`` ``(J,)`` at ``stamp_ns`` (replacing a vector of the same stamp)."""
        i = bisect.bisect_right(self.stamps, stamp_ns)
        if i > 0 and self.stamps[i - 1] == stamp_ns:
            self.values[i - 1] = q
            return
        self.stamps.insert(i, stamp_ns)
        self.values.insert(i, q)
        if len(self.stamps) > self.capacity:
            del self.stamps[0], self.values[0]

    def add(self, stamps_ns, q) -> tuple[int, bool]:
        """Store a batch: ``stamps_ns`` ``(N,)`` int ns, ``q`` ``(N, J)``. Returns ``(stored, jumped)``:
        how many were stored (late ones are not) and whether time jumped back (the history was
        cleared before the first vector after the jump)."""
        q = np.asarray(q, dtype=np.float64)
        stored, jumped = 0, False
        for s, qs in zip(np.asarray(stamps_ns, dtype=np.int64).tolist(), q):
            kind = self.classify(s)
            if kind == "late":
                continue
            if kind == "jump":
                self.clear()
                jumped = True
            self.insert(s, qs.copy())
            stored += 1
        return stored, jumped

    def latest(self):
        """``(stamp_ns, q (J,))`` of the newest vector, or None."""
        return (self.stamps[-1], self.values[-1]) if self.stamps else None

    def between(self, t0: int, t1: int) -> tuple[list, list]:
        """Stamps and vectors strictly after ``t0`` and strictly before ``t1``."""
        i = bisect.bisect_right(self.stamps, t0)
        j = bisect.bisect_left(self.stamps, t1)
        return self.stamps[i:j], self.values[i:j]

    def at(self, stamp_ns: int, max_gap_ns: int = 100_000_000) -> Optional[np.ndarray]:
        """Joint vector ``(J,)`` linearly interpolated at ``stamp_ns``; None when the stamp is outside
        the history by more than ``max_gap_ns`` (then the caller waits or skips)."""
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
