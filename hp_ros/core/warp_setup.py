"""The one place that imports and initialises NVIDIA Warp.

* Kernel cache: ``$HP_ROS_WARP_CACHE`` if set, else ``$XDG_CACHE_HOME/hp_ros/warp`` or
  ``~/.cache/hp_ros/warp``; when that is not writable (read-only HOME) a per-user folder in
  the system temp dir is used. Compiled kernels are reused across processes, so the first-call
  compile cost (2-4 s per module on this machine class) is paid once per machine.
* Warp's start-up banner and its "no CUDA driver" warning are printed by native code straight
  to the process's stdout/stderr; they are swallowed at the file-descriptor level during
  ``wp.init()`` so user-facing output (CLI tables, JSON benchmark lines) stays clean.
"""
from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

_lock = threading.Lock()
_wp = None


def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_probe"
        probe.write_text("ok")
        probe.unlink()
        return True
    except OSError:
        return False


def kernel_cache_dir() -> Path:
    """Directory for Warp's compiled kernels (created; always writable)."""
    candidates = []
    if os.environ.get("HP_ROS_WARP_CACHE"):
        candidates.append(Path(os.environ["HP_ROS_WARP_CACHE"]))
    xdg = os.environ.get("XDG_CACHE_HOME")
    candidates.append(Path(xdg) / "hp_ros" / "warp" if xdg else Path.home() / ".cache" / "hp_ros" / "warp")
    candidates.append(Path(tempfile.gettempdir()) / f"hp_ros-warp-{os.getuid()}")
    for c in candidates:
        if _writable_dir(c):
            return c
    raise RuntimeError(f"no writable directory for the Warp kernel cache (tried {candidates})")


class _silenced_fds:
    """Redirect fds 1 and 2 to /dev/null for the duration of a block (native prints too)."""

    def __enter__(self):
        import sys
        for s in (sys.stdout, sys.stderr):
            try:
                s.flush()
            except Exception:
                pass
        self._saved = [os.dup(1), os.dup(2)]
        self._null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(self._null, 1)
        os.dup2(self._null, 2)
        return self

    def __exit__(self, *exc):
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in (*self._saved, self._null):
            os.close(fd)
        return False


def get_warp():
    """Return the initialised ``warp`` module (CPU device, quiet, project kernel cache)."""
    global _wp
    if _wp is not None:
        return _wp
    with _lock:
        if _wp is None:
            import warp as wp

            wp.config.quiet = True
            # Per-module "load on device 'cpu' took X ms" lines are INFO-level timers.
            wp.config.log_level = getattr(wp, "LOG_WARNING", 30)
            wp.config.kernel_cache_dir = str(kernel_cache_dir())
            with _silenced_fds():
                wp.init()
            _wp = wp
    return _wp
