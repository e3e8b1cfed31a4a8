"""Stamps that make sense: each input stream is checked against its own recent stamps.

A node hears several stamped streams (joint states, camera_info, images, observations). A message
whose stamp is far (``max_jump``) from its own stream's newest accepted stamp is either a stray
(a bad driver message, a colleague's test publisher) or the first sign of a real jump of the
whole timeline (a looping bag, a restarted driver). :class:`StampJumpDetector` tells them apart
without the wall clock (bags carry their recording time and ``use_sim_time`` must work):

* a stray is refused (``REJECT``) and changes nothing the node keeps;
* a jump is believed only when it is **sustained**: ``confirm`` consecutive messages of a stream,
  each newer than the one before and within ``max_jump`` of it (a new timeline that advances),
  on at least ``min_topics`` streams whose new timelines agree (``RESET``: the caller resets);
* a stream moving forward, up to where the other streams are, is catching up (a node that
  dropped a backlog, a stream that paused): accepted at once;
* a stream that paused or started late re-joins without a reset once it has ``confirm``
  consecutive messages that agree with another stream's timeline, and a stream not anchored
  since the last reset once it has ``confirm`` advancing messages (``ACCEPT``).

ROS-free; stamps are int nanoseconds.
"""
from __future__ import annotations

from dataclasses import dataclass

ACCEPT, REJECT, RESET = "accept", "reject", "reset"


@dataclass
class _Candidates:
    """Consecutive far-off stamps of one stream (a possible new timeline)."""

    count: int
    newest: int


@dataclass
class StampVerdict:
    """``verdict`` (ACCEPT / REJECT / RESET), a fixed ``kind`` key for refusals and a text."""

    verdict: str
    kind: str = ""
    text: str = ""
    jump_ns: int = 0  # RESET: how far the timeline jumped (negative: back)

    @property
    def accepted(self) -> bool:
        return self.verdict != REJECT


class StampJumpDetector:
    """Per-stream stamp continuity with sustained-jump detection (see the module docstring).

    Args:
        max_jump_ns: a stamp this far [ns] from its stream's newest accepted one is far off.
        confirm: consecutive far-off, advancing messages that make a stream's jump sustained.
        min_topics: streams that must agree on a jump before it resets (fewer when fewer streams
            were ever seen).
    """

    def __init__(self, max_jump_ns: int = 500_000_000, confirm: int = 5, min_topics: int = 2):
        if max_jump_ns <= 0 or confirm < 1 or min_topics < 1:
            raise ValueError("max_jump_ns > 0, confirm >= 1 and min_topics >= 1 required")
        self.max_jump_ns, self.confirm, self.min_topics = int(max_jump_ns), int(confirm), int(min_topics)
        self.newest: dict = {}       # stream -> newest accepted stamp
        self._pending: dict = {}     # stream -> _Candidates
        self.resets = 0
        self.rejoined = 0

    def clear(self) -> None:
        """Forget every stream (the owner reset for another reason)."""
        self.newest.clear()
        self._pending.clear()

    def skip_gap(self, stream: str, stamps) -> None:
        """A stream read in batches (a DDS reader's history taken now and then, seconds apart): the
        time between two takes is no jump. The batch's largest cluster of ``stamps`` (sorted, no gap
        above ``max_jump``) is its timeline: when it starts ahead of the stream's newest by more than
        ``max_jump``, the stream continues from its start; strays of the batch are then refused as
        usual by :meth:`check`."""
        good = sorted(int(s) for s in stamps if int(s) > 0)
        own = self.newest.get(stream)
        if not good or own is None:
            return
        best, start = (0, 0), 0
        for i in range(1, len(good) + 1):
            if i == len(good) or good[i] - good[i - 1] > self.max_jump_ns:
                if i - start > best[1] - best[0]:
                    best = (start, i)
                start = i
        first = good[best[0]]
        if first > own + self.max_jump_ns:
            self.newest[stream] = first
            self._pending.pop(stream, None)

    def _near_any(self, stamp: int, exclude=None) -> bool:
        return any(abs(stamp - s) <= self.max_jump_ns for k, s in self.newest.items() if k != exclude)

    def check(self, stream: str, stamp: int) -> StampVerdict:
        """Verdict for one message of ``stream`` stamped ``stamp`` [ns]; updates the bookkeeping."""
        stamp = int(stamp)
        if stamp <= 0:
            return StampVerdict(REJECT, "stamp_zero" if stamp == 0 else "stamp_negative",
                                f"{stream}: stamp {stamp} ns (header not set?)")
        own = self.newest.get(stream)
        if own is None:
            near = not self.newest or self._near_any(stamp)
        else:  # close to its own stream, or a lagging stream catching up with the others (not past them)
            others = [v for k, v in self.newest.items() if k != stream]
            near = abs(stamp - own) <= self.max_jump_ns or (
                stamp > own and bool(others) and stamp <= max(others) + self.max_jump_ns)
        if near:
            self.newest[stream] = stamp if own is None else max(own, stamp)
            self._pending.pop(stream, None)
            return StampVerdict(ACCEPT)
        c = self._pending.get(stream)
        if c is not None and c.newest < stamp <= c.newest + self.max_jump_ns:
            c.count, c.newest = c.count + 1, stamp
        else:
            c = self._pending[stream] = _Candidates(1, stamp)
        ref = own if own is not None else max(self.newest.values())
        far = StampVerdict(REJECT, "stamp_jump", f"{stream}: stamp {(stamp - ref) * 1e-9:+.3f} s from the stream's "
                           f"newest; refused unless {self.confirm} messages in a row on {self.min_topics} streams "
                           "confirm a jump")
        if c.count < self.confirm:
            return far
        if own is None or self._near_any(stamp, exclude=stream):  # (re-)joins: a new stream, or the others' timeline
            self.newest[stream] = stamp
            del self._pending[stream]
            self.rejoined += 1
            return StampVerdict(ACCEPT)
        voters = [k for k, p in self._pending.items()
                  if p.count >= self.confirm and abs(p.newest - stamp) <= self.max_jump_ns]
        if len(voters) < min(self.min_topics, max(1, len(self.newest))):
            return far
        self.newest = {k: self._pending[k].newest for k in voters}  # the other streams re-join later
        self._pending.clear()
        self.resets += 1
        return StampVerdict(RESET, "stamp_reset", f"time jumped {(stamp - ref) * 1e-9:+.3f} s on {sorted(voters)}",
                            stamp - ref)
