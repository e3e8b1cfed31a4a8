"""A small transform buffer with tf2's lookup semantics (ROS-free; used where ``tf2_ros`` is not
importable, and by the offline paths that have no ROS at all).

* Each child frame has one parent: a **static** edge (``/tf_static``: valid at every time) or a
  **dynamic** one (``/tf``: samples at stamps, kept for ``cache_time_s``).
* :meth:`TransformBuffer.lookup_transform` ``(target, source, stamp_ns)`` gives ``T_target_source``
  ``(4, 4)`` (maps points in ``source`` into ``target``) at ``stamp_ns``: dynamic edges are
  interpolated between the two samples around it (translation linear, rotation slerp); ``stamp_ns
  = 0`` means the latest time every dynamic edge of the chain has (tf2's ``Time(0)``).
* Errors as tf2 raises them: :class:`LookupError` (unknown frame or frames not connected) and
  :class:`ExtrapolationError` (the stamp is older than the oldest or newer than the newest sample
  of an edge of the chain; a single sample is valid only at its own stamp).
"""
from __future__ import annotations

import math
from bisect import bisect_left
from typing import Optional

import numpy as np

__all__ = ["TransformBuffer", "ExtrapolationError", "interpolate_pose"]


class ExtrapolationError(Exception):
    """The requested time is outside the buffered samples of an edge (tf2's ExtrapolationException)."""


def _quat(R: np.ndarray) -> np.ndarray:
    # transforms3d: ~3x faster than scipy's Rotation here, and a lookup interpolates on every frame
    from transforms3d.quaternions import mat2quat

    return mat2quat(R)                                # (w, x, y, z)


def _matrix(q: np.ndarray) -> np.ndarray:
    from transforms3d.quaternions import quat2mat

    return quat2mat(q)


def interpolate_pose(T0: np.ndarray, T1: np.ndarray, a: float) -> np.ndarray:
    """``(4, 4)`` pose a fraction ``a`` in [0, 1] of the way from ``T0`` to ``T1`` (translation linear,
    rotation along the shorter great arc)."""
    if a <= 0.0:
        return T0.copy()
    if a >= 1.0:
        return T1.copy()
    return _interpolate(T0, _quat(T0[:3, :3]), T1, _quat(T1[:3, :3]), a)


def _interpolate(T0: np.ndarray, q0: np.ndarray, T1: np.ndarray, q1: np.ndarray, a: float) -> np.ndarray:
    """:func:`interpolate_pose` for 0 < ``a`` < 1 with the rotations' quaternions ``q0``, ``q1`` given."""
    d = float(q0 @ q1)
    if d < 0:
        q1, d = -q1, -d
    if d > 0.9995:
        q = q0 + a * (q1 - q0)
    else:
        th = math.acos(min(d, 1.0))
        q = (math.sin((1 - a) * th) * q0 + math.sin(a * th) * q1) / math.sin(th)
    T = np.eye(4)
    T[:3, :3] = _matrix(q / math.sqrt(float(q @ q)))
    T[:3, 3] = (1 - a) * T0[:3, 3] + a * T1[:3, 3]
    return T


def _rigid_inverse(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid ``(4, 4)`` pose (transposed rotation; a general inverse costs ~3x)."""
    out = np.eye(4)
    R = T[:3, :3]
    out[:3, :3] = R.T
    out[:3, 3] = -(R.T @ T[:3, 3])
    return out


class _Edge:
    def __init__(self, parent: str, static: bool):
        self.parent, self.static = parent, static
        self.stamps: list = []       # int ns, ascending
        self.poses: list = []        # (4, 4) T_parent_child
        self.quats: list = []        # their rotations' quaternions (w, x, y, z): converted once, not per lookup

    def add(self, stamp: int, T: np.ndarray, cache_ns: int) -> None:
        if self.static:
            self.stamps, self.poses = [0], [T]
            return
        q = _quat(T[:3, :3])
        # bisect on the lists (np.searchsorted converted the whole list on every call: ~0.1 ms at 100 Hz)
        i = bisect_left(self.stamps, stamp)
        if i < len(self.stamps) and self.stamps[i] == stamp:
            self.poses[i], self.quats[i] = T, q
        else:
            self.stamps.insert(i, stamp)
            self.poses.insert(i, T)
            self.quats.insert(i, q)
        cut = bisect_left(self.stamps, self.stamps[-1] - cache_ns)
        if cut > 0:
            del self.stamps[:cut], self.poses[:cut], self.quats[:cut]

    def at(self, stamp: int, child: str) -> np.ndarray:
        if self.static:
            return self.poses[0]
        s = self.stamps
        if stamp < s[0] or stamp > s[-1]:
            when = "past" if stamp < s[0] else "future"
            raise ExtrapolationError(
                f"lookup of {self.parent} -> {child} at {stamp} ns would require extrapolation into the {when}: "
                f"samples span [{s[0]}, {s[-1]}] ns")
        i = bisect_left(s, stamp)
        if s[i] == stamp:
            return self.poses[i]
        return _interpolate(self.poses[i - 1], self.quats[i - 1], self.poses[i], self.quats[i],
                            (stamp - s[i - 1]) / (s[i] - s[i - 1]))


class TransformBuffer:
    """Static and dynamic transforms between named frames (see the module doc)."""

    def __init__(self, cache_time_s: float = 10.0, max_frames: int = 256):
        self.cache_ns = int(cache_time_s * 1e9)
        self.max_frames = max_frames
        self._edges: dict = {}       # child -> _Edge
        self.topology = 0            # counts changes of the frame tree (an edge added or replaced)

    def set_transform(self, T_parent_child: np.ndarray, parent: str, child: str, stamp_ns: int,
                      static: bool = False) -> None:
        """Store one transform (``(4, 4)``, maps points in ``child`` into ``parent``). A frame's parent
        and kind (static / dynamic) are those of its newest transform (a change starts it afresh)."""
        if not parent or not child or parent == child:
            raise ValueError(f"a transform needs two different frame names, got {parent!r} -> {child!r}")
        T = np.asarray(T_parent_child, dtype=np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise ValueError(f"transform {parent} -> {child} is not a finite (4, 4) pose")
        e = self._edges.get(child)
        if e is None or e.parent != parent or e.static != static:
            if e is None and len(self._edges) >= self.max_frames:
                raise ValueError(f"more than {self.max_frames} frames")
            e = self._edges[child] = _Edge(parent, static)
            self.topology += 1
        e.add(int(stamp_ns), T, self.cache_ns)

    def _chain(self, frame: str) -> list:
        chain = [frame]
        while chain[-1] in self._edges and len(chain) < 64:
            chain.append(self._edges[chain[-1]].parent)
        return chain

    def _latest_common(self, frames: list) -> int:
        ends = [self._edges[f].stamps[-1] for f in frames if f in self._edges and not self._edges[f].static]
        return min(ends) if ends else 0

    def lookup_transform(self, target: str, source: str, stamp_ns: int = 0) -> np.ndarray:
        """``T_target_source`` ``(4, 4)`` at ``stamp_ns`` (0: the latest common time)."""
        if target == source:
            return np.eye(4)
        ct, cs = self._chain(target), self._chain(source)
        if ct[-1] != cs[-1]:
            known = set(self._edges) | {e.parent for e in self._edges.values()}
            missing = [f for f in (target, source) if f not in known]
            raise LookupError(f"frame {missing[0]!r} does not exist" if missing else
                              f"{target!r} and {source!r} are not connected (roots {ct[-1]!r}, {cs[-1]!r})")
        common = next(f for f in ct if f in cs)
        up_t, up_s = ct[:ct.index(common)], cs[:cs.index(common)]
        stamp = int(stamp_ns) or self._latest_common(up_t + up_s)
        T_common_s = self._to_ancestor(up_s, stamp)
        if not up_t:  # the target is the common ancestor (camera -> hand under it)
            return T_common_s.copy()
        return _rigid_inverse(self._to_ancestor(up_t, stamp)) @ T_common_s

    def _to_ancestor(self, frames: list, stamp: int) -> np.ndarray:
        """``T_ancestor_frames[0]`` through the edges of ``frames`` (child first; the edge's own array
        for one edge: the caller copies)."""
        if not frames:
            return np.eye(4)
        T = self._edges[frames[0]].at(stamp, frames[0])
        for f in frames[1:]:
            T = self._edges[f].at(stamp, f) @ T
        return T

    def can_transform(self, target: str, source: str, stamp_ns: int = 0) -> bool:
        try:
            self.lookup_transform(target, source, stamp_ns)
            return True
        except (LookupError, ExtrapolationError):
            return False

    def _path(self, target: str, source: str) -> Optional[list]:
        """The child frames of the edges between two frames (None: not connected)."""
        ct, cs = self._chain(target), self._chain(source)
        common = next((f for f in ct if f in cs), None)
        return None if common is None else ct[:ct.index(common)] + cs[:cs.index(common)]

    def is_static(self, target: str, source: str) -> bool:
        """True when the frames are connected by static edges only."""
        path = self._path(target, source)
        return path is not None and all(self._edges[f].static for f in path)

    def has_dynamic_edge(self, target: str, source: str) -> bool:
        """True when the frames are connected and a dynamic (``/tf``) edge lies between them."""
        path = self._path(target, source)
        return path is not None and not all(self._edges[f].static for f in path)

    def latest_stamp(self, target: str, source: str) -> Optional[int]:
        """The latest time every dynamic edge between the frames has (None: static only or not connected)."""
        path = self._path(target, source)
        return None if path is None else (self._latest_common(path) or None)

    def oldest_stamp(self, target: str, source: str) -> Optional[int]:
        """The earliest time every dynamic edge between the frames has (None: static only or not connected)."""
        path = self._path(target, source)
        starts = [self._edges[f].stamps[0] for f in path or [] if not self._edges[f].static]
        return max(starts) if starts else None
