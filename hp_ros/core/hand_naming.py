"""Joint and link naming schemes of the Allegro hand (Wonik ROS 2 driver, SimLab / dex-urdf) and
JointState handling: :class:`JointNaming` translates names finger by finger, :class:`JointStateMapper`
turns JointState messages into the hand model's joint vector (:mod:`hp_ros.core.hand`)."""
from __future__ import annotations

import re
from typing import Iterable, Optional, Sequence

import numpy as np

__all__ = ["FINGERS", "JointNaming", "JointStateMapper"]

FINGERS = ("thumb", "index", "middle", "ring")
_SIMLAB_BLOCK = {0: 3, 1: 0, 2: 1, 3: 2}          # finger -> SimLab block of 4 joints
_SIMLAB_FINGER = {b: f for f, b in _SIMLAB_BLOCK.items()}


class JointNaming:
    """A joint/link naming scheme of the Allegro hand.

    * ``"wonik"`` (Wonik ROS 2 driver): joints ``{prefix}joint{f}{k}`` with finger ``f`` (0 thumb,
      1 index, 2 middle, 3 ring) and joint ``k`` 0-3; links ``{prefix}link_{f}{k}`` (k = 4 is the
      fingertip), palm ``{prefix}palm_link``. Default prefix ``ah_``.
    * ``"simlab"`` (ROS 1 SimLab driver, dex-urdf, most simulators): joints ``joint_{n}.0`` with
      n = 0-3 index, 4-7 middle, 8-11 ring, 12-15 thumb; links ``link_{n}.0``, tips
      ``link_{3,7,11,15}.0_tip``, palm ``base_link``.

    Fingers are always numbered 0 thumb, 1 index, 2 middle, 3 ring here.
    """

    SCHEMES = ("wonik", "simlab")

    def __init__(self, scheme: str = "wonik", prefix: str = "ah_"):
        if scheme not in self.SCHEMES:
            raise ValueError(f"unknown joint naming {scheme!r}; choose one of {self.SCHEMES}")
        self.scheme = scheme
        self.prefix = prefix if scheme == "wonik" else ""

    def __repr__(self) -> str:
        return f"JointNaming({self.scheme!r}, prefix={self.prefix!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, JointNaming) and (self.scheme, self.prefix) == (other.scheme, other.prefix)

    # names -------------------------------------------------------------------------------
    def joint_name(self, finger: int, k: int) -> str:
        if self.scheme == "wonik":
            return f"{self.prefix}joint{finger}{k}"
        return f"joint_{4 * _SIMLAB_BLOCK[finger] + k}.0"

    def link_name(self, finger: int, k: int) -> str:
        """Link ``k`` (0-3, 4 = fingertip) of ``finger``."""
        if self.scheme == "wonik":
            return f"{self.prefix}link_{finger}{k}"
        if k == 4:
            return f"link_{4 * _SIMLAB_BLOCK[finger] + 3}.0_tip"
        return f"link_{4 * _SIMLAB_BLOCK[finger] + k}.0"

    @property
    def palm_link(self) -> str:
        return f"{self.prefix}palm_link" if self.scheme == "wonik" else "base_link"

    @property
    def joint_names(self) -> list:
        """The 16 joint names, finger-major in this scheme's own numeric order."""
        if self.scheme == "wonik":
            return [self.joint_name(f, k) for f in range(4) for k in range(4)]
        return [f"joint_{n}.0" for n in range(16)]

    @property
    def fingertip_links(self) -> list:
        """Fingertip link names, ordered thumb, index, middle, ring."""
        return [self.link_name(f, 4) for f in range(4)]

    # parsing -----------------------------------------------------------------------------
    def parse_joint(self, name: str):
        """``name`` -> (finger, k), or None when it is not a joint name of this scheme."""
        if self.scheme == "wonik":
            m = re.fullmatch(re.escape(self.prefix) + r"joint([0-3])([0-3])", name)
            return (int(m.group(1)), int(m.group(2))) if m else None
        m = re.fullmatch(r"joint_(\d+)\.0", name)
        if not m or int(m.group(1)) > 15:
            return None
        n = int(m.group(1))
        return _SIMLAB_FINGER[n // 4], n % 4

    def parse_link(self, name: str):
        """``name`` -> (finger, k) with k = 4 for the tip, ``"palm"``, or None."""
        if name == self.palm_link:
            return "palm"
        if self.scheme == "wonik":
            m = re.fullmatch(re.escape(self.prefix) + r"link_([0-3])([0-4])", name)
            return (int(m.group(1)), int(m.group(2))) if m else None
        m = re.fullmatch(r"link_(\d+)\.0(_tip)?", name)
        if not m or int(m.group(1)) > 15:
            return None
        n = int(m.group(1))
        if m.group(2):
            return (_SIMLAB_FINGER[n // 4], 4) if n % 4 == 3 else None
        return _SIMLAB_FINGER[n // 4], n % 4

    def translate_joint(self, name: str, target: "JointNaming") -> Optional[str]:
        fk = self.parse_joint(name)
        return None if fk is None else target.joint_name(*fk)

    def translate_link(self, name: str, target: "JointNaming") -> Optional[str]:
        p = self.parse_link(name)
        if p is None:
            return None
        return target.palm_link if p == "palm" else target.link_name(*p)

    @classmethod
    def detect(cls, joint_names: Sequence[str]) -> Optional["JointNaming"]:
        """The scheme (with Wonik prefix) whose 16 joint names equal ``joint_names`` as a set."""
        names = set(joint_names)
        for n in names:
            m = re.fullmatch(r"(.*)joint[0-3][0-3]", n)
            if m:
                cand = cls("wonik", m.group(1))
                if set(cand.joint_names) == names:
                    return cand
                break
        simlab = cls("simlab")
        if set(simlab.joint_names) == names:
            return simlab
        return None


def _as_naming(naming) -> Optional[JointNaming]:
    if naming is None or isinstance(naming, JointNaming):
        return naming
    return JointNaming(str(naming))


class JointStateMapper:
    """Turn JointState (names, positions) into the model's joint vector, keeping last values.

    ``joint_names``: the model's joint names in canonical order. ``model_naming``: their scheme
    (or None). Incoming names may be the model's own names or joint names of any scheme in
    ``accept`` (default: Wonik with any prefix and SimLab), translated finger by finger.
    Names that match nothing raise one ValueError listing all of them; joints never received
    raise a ValueError from :meth:`positions` (and :meth:`update`) listing them.
    """

    def __init__(self, joint_names: Sequence[str], model_naming=None,
                 accept: Iterable[str] = JointNaming.SCHEMES, initial: Optional[Sequence[float]] = None):
        self.joint_names = list(joint_names)
        self._index = {n: i for i, n in enumerate(self.joint_names)}
        self.model_naming = _as_naming(model_naming)
        self.accept = [s for s in accept]
        for s in self.accept:
            if s not in JointNaming.SCHEMES:
                raise ValueError(f"unknown joint naming {s!r}; choose from {JointNaming.SCHEMES}")
        self._q = np.zeros(len(self.joint_names))
        self._seen = np.zeros(len(self.joint_names), dtype=bool)
        if initial is not None:
            init = np.asarray(initial, dtype=float)
            if init.shape != self._q.shape:
                raise ValueError(f"initial must have {len(self._q)} values, got shape {init.shape}")
            self._q[:] = init
            self._seen[:] = True
        self._cache: dict = {}
        self._checked_names = None   # (names tuple, index array) of the last message: drivers repeat them

    def index_of(self, name: str) -> Optional[int]:
        """Canonical index of an incoming joint name, or None when it maps to no model joint."""
        if name in self._cache:
            return self._cache[name]
        idx = self._index.get(name)
        if idx is None and self.model_naming is not None:
            for scheme in self.accept:
                if scheme == "wonik":
                    m = re.fullmatch(r"(.*)joint[0-3][0-3]", name)
                    src = JointNaming("wonik", m.group(1)) if m else None
                else:
                    src = JointNaming(scheme)
                if src is None:
                    continue
                target = src.translate_joint(name, self.model_naming)
                if target is not None and target in self._index:
                    idx = self._index[target]
                    break
        self._cache[name] = idx
        return idx

    def update(self, names: Sequence[str], positions: Sequence[float], require_complete: bool = True,
               dry_run: bool = False) -> Optional[np.ndarray]:
        """Store ``positions`` for ``names`` (any order, any subset); return the full ``(J,)`` vector.
        ``dry_run``: only validate (ValueError as a real update would raise), store nothing, None."""
        names = list(names)
        positions = np.asarray(positions, dtype=float).reshape(-1)
        if len(names) != len(positions):
            raise ValueError(f"JointState has {len(names)} names but {len(positions)} positions")
        key = tuple(names)
        if self._checked_names is not None and self._checked_names[0] == key:
            idx = self._checked_names[1]   # the names of the last message again: already checked
        else:
            idx = [self.index_of(n) for n in names]
            unknown = [n for n, i in zip(names, idx) if i is None]
            if unknown:
                for n in unknown:  # unknown names are not cached: endless bad names must not grow memory
                    self._cache.pop(n, None)
                raise ValueError(f"unknown joint names {unknown[:8]}; the hand model has {self.joint_names}"
                                 f" (also accepted: {self.accept} names of the same joints)")
            if len(set(names)) != len(names):
                dup = {n for n in names if names.count(n) > 1}
                raise ValueError(f"duplicate joint names in JointState: {sorted(dup)}")
            idx = np.asarray(idx, dtype=np.int64)
            self._checked_names = (key, idx)
        if not np.all(np.isfinite(positions)):
            raise ValueError(f"non-finite joint positions for {[n for n, p in zip(names, positions) if not np.isfinite(p)]}")
        if dry_run:
            return None
        self._q[idx] = positions
        self._seen[idx] = True
        return self.positions() if require_complete else self._q.copy()

    @property
    def is_complete(self) -> bool:
        return bool(self._seen.all())

    def positions(self) -> np.ndarray:
        """The full joint vector ``(J,)`` (canonical order); ValueError if a joint was never received."""
        if not self._seen.all():
            missing = [n for n, s in zip(self.joint_names, self._seen) if not s]
            raise ValueError(f"no position received yet for joints {missing}")
        return self._q.copy()
