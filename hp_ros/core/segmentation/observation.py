"""What the object mask says about the object: centroid, bounding box, area, median depth and
back-projected centre (:func:`object_observation`)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from hp_ros.core.observation import ObjectObservation
from hp_ros.core.segmentation.image import _check_K

__all__ = ["ObjectObservation", "object_observation"]


def object_observation(mask: np.ndarray, K, depth_m: Optional[np.ndarray] = None, confidence: float = 1.0,
                       backend: str = "", offset: tuple = (0, 0)) -> ObjectObservation:
    """Centroid (pixel centres), bounding box, area, median valid depth inside ``mask`` and the
    centroid back-projected at that depth. ``mask`` (and ``depth_m``) may be a crop whose
    top-left pixel is ``offset = (x0, y0)`` of the image."""
    K = _check_K(K)
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return ObjectObservation(valid=False, backend=backend)
    d = None if depth_m is None else depth_m[ys, xs]
    xs, ys = xs + int(offset[0]), ys + int(offset[1])
    cu, cv = float(xs.mean()), float(ys.mean())
    x0, y0 = int(xs.min()), int(ys.min())
    bbox = (x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1)
    med, c3 = float("nan"), None
    if d is not None:
        d = d[d > 0]
        if d.size:
            med = float(np.median(d))
            y = (cv - K[1, 2]) / K[1, 1]
            x = (cu - K[0, 2] - K[0, 1] * y) / K[0, 0]
            c3 = np.array([x * med, y * med, med])
    return ObjectObservation(True, float(confidence), cu, cv, bbox, int(xs.size), med, c3, backend)
