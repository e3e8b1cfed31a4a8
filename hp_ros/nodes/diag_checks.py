"""diagnostic_updater's conventions for hp_ros's /diagnostics, without the C++ library (not on PyPI).

A node reports one ``DiagnosticStatus`` per task, named ``"<node name>: <task>"`` with a
``hardware_id``, so ``rqt_robot_monitor`` groups them. Two standard checks, as
``diagnostic_updater``'s ``FrequencyStatus`` and ``TimeStampStatus`` define them:

* :class:`FrequencyCheck`: events (published frames) per second over a sliding window of the last
  ``window`` diagnostics periods against the expected rate +- ``tolerance``: OK inside, WARN
  "frequency too low / too high", ERROR "no events recorded" (keys ``Events in window``, ``Events
  since startup``, ``Duration of window (s)``, ``Actual frequency (Hz)``, ``Target frequency (Hz)``,
  ``Minimum / Maximum acceptable frequency (Hz)``);
* :class:`TimestampCheck`: per published frame ``delay = node clock now - header stamp``, against
  ``[min_delay, max_delay]`` over the period: WARN "timestamps too far in the past" (late frames:
  a stalled input, a clock offset between hosts) / "too far in the future" (early: the camera's
  clock ahead of this host's), ``Earliest / Latest timestamp delay``, and the counts.

Pure Python: levels are diagnostic_msgs' ``OK`` 0, ``WARN`` 1, ``ERROR`` 2.
"""
from __future__ import annotations

import collections
import math
import time
from typing import Optional

__all__ = ["OK", "WARN", "ERROR", "FrequencyCheck", "TimestampCheck"]

OK, WARN, ERROR = 0, 1, 2


class FrequencyCheck:
    """Events per second against ``expected`` [Hz] +- ``tolerance`` (fraction) over ``window`` periods."""

    def __init__(self, expected: float, tolerance: float = 0.1, window: int = 5, clock=time.monotonic):
        self.expected, self.tolerance, self.clock = float(expected), float(tolerance), clock
        self.count = 0
        self.history = collections.deque([(clock(), 0)], maxlen=max(int(window), 1) + 1)

    def tick(self) -> None:
        self.count += 1

    def status(self) -> tuple[int, str, dict]:
        """``(level, message, values)`` over the window, then the window moves on."""
        now = self.clock()
        self.history.append((now, self.count))
        (t0, c0), (t1, c1) = self.history[0], self.history[-1]
        events, dt = c1 - c0, max(t1 - t0, 1e-9)
        freq = events / dt
        lo, hi = self.expected * (1 - self.tolerance), self.expected * (1 + self.tolerance)
        if events == 0:
            level, msg = ERROR, "no events recorded"
        elif freq < lo:
            level, msg = WARN, "frequency too low"
        elif freq > hi:
            level, msg = WARN, "frequency too high"
        else:
            level, msg = OK, "desired frequency met"
        return level, msg, {"Events in window": events, "Events since startup": self.count,
                            "Duration of window (s)": round(dt, 3), "Actual frequency (Hz)": round(freq, 2),
                            "Target frequency (Hz)": self.expected, "Minimum acceptable frequency (Hz)": round(lo, 2),
                            "Maximum acceptable frequency (Hz)": round(hi, 2)}


class TimestampCheck:
    """Delays ``now - stamp`` [s] of the events of one period against ``[min_delay, max_delay]``."""

    def __init__(self, min_delay: float = -0.1, max_delay: float = 0.5):
        self.min_delay, self.max_delay = float(min_delay), float(max_delay)
        self.late_total = self.early_total = 0
        self._reset()

    def _reset(self) -> None:
        self.earliest: Optional[float] = None
        self.latest: Optional[float] = None
        self.late = self.early = self.seen = 0

    def tick(self, delay: float) -> None:
        """One event's delay [s] (the node's clock minus its header stamp)."""
        if not math.isfinite(delay):
            return
        self.seen += 1
        self.earliest = delay if self.earliest is None else min(self.earliest, delay)
        self.latest = delay if self.latest is None else max(self.latest, delay)
        if delay > self.max_delay:
            self.late += 1
        elif delay < self.min_delay:
            self.early += 1

    def status(self) -> tuple[int, str, dict]:
        """``(level, message, values)`` of the period, then a new period starts."""
        self.late_total += self.late
        self.early_total += self.early
        if self.seen == 0:
            level, msg = WARN, "no data since last update"
        elif self.late:
            level, msg = WARN, "timestamps too far in the past seen"
        elif self.early:
            level, msg = WARN, "timestamps too far in the future seen"
        else:
            level, msg = OK, "timestamps are reasonable"
        r = lambda x: None if x is None else round(x, 4)  # noqa: E731
        values = {"Earliest timestamp delay": r(self.earliest), "Latest timestamp delay": r(self.latest),
                  "Earliest acceptable timestamp delay": self.min_delay,
                  "Latest acceptable timestamp delay": self.max_delay,
                  "Late diagnostic update count": self.late_total, "Early diagnostic update count": self.early_total,
                  "Events in period": self.seen}
        self._reset()
        return level, msg, values
