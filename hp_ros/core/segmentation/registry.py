"""The object backends by name: the one place a backend is registered, and the parser of the
``object_backend`` setting that accepts exactly these names.

Adding a backend: a module with an :class:`~hp_ros.core.segmentation.backend.ObjectBackend`
subclass, plus its line below.
"""
from __future__ import annotations

from hp_ros.core.segmentation.backend import ObjectBackend
from hp_ros.core.segmentation.color import ColorBackend
from hp_ros.core.segmentation.depth import DepthBackend
from hp_ros.core.segmentation.detectron2 import Detectron2Backend
from hp_ros.core.segmentation.external import ExternalBackend
from hp_ros.core.segmentation.model import ModelBackend

# name -> backend class; the Segmenter builds one with ``cls.create(BackendSetup)``
OBJECT_BACKENDS: dict[str, type[ObjectBackend]] = {
    "color": ColorBackend,
    "depth": DepthBackend,
    "external": ExternalBackend,
    "detectron2": Detectron2Backend,
    "model": ModelBackend,
}


def parse_combination(spec: str) -> tuple[list, str]:
    """``"color"``, ``"depth"``, ``"color+depth"`` (intersection), ``"color|depth|model"`` (union),
    ``"external"``, ``"detectron2"`` ... -> (backend names, operator ``"+"``, ``"|"`` or ``""``).
    Names are those of :data:`OBJECT_BACKENDS`."""
    s = spec.replace(" ", "")
    op = "+" if "+" in s else "|" if "|" in s else ""
    if "+" in s and "|" in s:
        raise ValueError(f"object backend {spec!r}: mix of '+' and '|' is not supported")
    names = s.split(op) if op else [s]
    bad = [n for n in names if n not in OBJECT_BACKENDS]
    if bad or not names or len(set(names)) != len(names):
        raise ValueError(f"object backend {spec!r}: use one of {list(OBJECT_BACKENDS)} "
                         "or several joined by '+' (intersection) or '|' (union)")
    return names, op
