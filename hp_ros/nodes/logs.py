"""Error reporting for nodes: one clear line per kind of problem, not one per message; counts for
/diagnostics under a bounded set of keys (:class:`ProblemLog`); the nodes' logger (:class:`FastLogger`)."""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.impl.rcutils_logger import RcutilsLogger
from rclpy.node import Node

# keys a ProblemLog keeps apart; further kinds are counted together under OTHER
MAX_KEYS = 64
OTHER = "other"


class ProblemLog:
    """Log each kind of problem once, then at most every ``repeat_period`` s; count every one.

    ``counts``: key -> occurrences; ``last_values``: key -> the last offending value given.
    Same ``warn(key, text)`` / ``counts`` / ``total()`` as the ``OnceLogger`` it replaces."""

    def __init__(self, node: Node, repeat_period: float = 60.0):
        self._logger = node.get_logger()
        self.repeat_period = repeat_period
        self.counts: dict = {}
        self.last_values: dict = {}
        self._logged: dict = {}   # key -> (monotonic time of the last line, count then)
        self._lock = threading.Lock()

    def warn(self, key: str, text: str, value: Any = None) -> None:
        with self._lock:
            if key not in self.counts and len(self.counts) >= MAX_KEYS:
                key, value = OTHER, key
            n = self.counts.get(key, 0) + 1
            self.counts[key] = n
            if value is not None:
                self.last_values[key] = str(value)[:80]
            now = time.monotonic()
            last = self._logged.get(key)
            if last is not None and now - last[0] < self.repeat_period:
                return
            self._logged[key] = (now, n)
        if last is None:
            self._logger.warning(f"{text} (further occurrences counted in diagnostics, logged at most every "
                                 f"{self.repeat_period:.0f} s)")
        else:
            self._logger.warning(f"{text} ({n - last[1]} more of this kind in the last {now - last[0]:.0f} s)")

    def reject(self, error: Exception, default_key: str, prefix: str = "") -> None:
        """Count a refused message: the key is the error's ``kind`` (an ``InvalidMessage``) or
        ``default_key``; its ``value`` is kept as the last one seen."""
        self.warn(getattr(error, "kind", None) or default_key, f"{prefix}{error}", getattr(error, "value", None))

    def total(self) -> int:
        return sum(self.counts.values())

    def diagnostics(self, prefix: str = "input_errors.") -> dict:
        """``{prefix + key: count}`` and ``{prefix + key + '.last': value}`` for /diagnostics."""
        with self._lock:
            out = {f"{prefix}{k}": v for k, v in self.counts.items()}
            out.update({f"{prefix}{k}.last": v for k, v in self.last_values.items()})
        return out


OnceLogger = ProblemLog  # the name nodes used before (same warn / counts / total)


_RCUTILS_LOGGER_FILE = sys.modules[RcutilsLogger.__module__].__file__
# rclpy's own caller lookup (the filtered calls below) skips the files in this list: this one too
sys.modules[RcutilsLogger.__module__]._internal_callers.append(os.path.realpath(__file__))


class FastLogger(RcutilsLogger):
    """rclpy's node logger without its caller lookup for plain calls: rclpy names the calling
    function, file and line through ``inspect.getframeinfo``, which reads the caller's source and
    maps every loaded module to its file (``inspect.getmodule``) - after torch's imports the
    refinement node's first log line of a request cost ~50 ms of CPU (py-spy, cold start). Here
    the caller comes from the frame itself; calls with filters (``throttle_duration_sec``,
    ``once``, ``skip_first``) go through rclpy's own path."""

    def log(self, message, severity, **kwargs):
        if kwargs:
            return super().log(message, severity, **kwargs)
        if not self.is_enabled_for(severity):
            return False
        f = sys._getframe(1)
        while f.f_back is not None and f.f_code.co_filename == _RCUTILS_LOGGER_FILE:  # info() -> log()
            f = f.f_back
        _rclpy.rclpy_logging_rcutils_log(severity, self.name, str(message), f.f_code.co_name, f.f_code.co_filename,
                                         f.f_lineno)
        return True
