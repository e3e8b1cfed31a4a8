"""What the object mask says about the object: centroid, bounding box, area, median depth and
back-projected centre (:func:`object_observation`)."""
from __future__ import annotations

from typing import Optional

import cv2
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
    # image moments and the bounding rectangle in OpenCV: no pixel index arrays (~0.6 -> 0.2 ms
    # for a 20,000-pixel mask)
    m8 = mask.view(np.uint8) if mask.dtype == bool else (np.asarray(mask) != 0).astype(np.uint8)
    mo = cv2.moments(m8, binaryImage=True)
    area = int(round(mo["m00"]))
    if area == 0:
        return ObjectObservation(valid=False, backend=backend)
    cu, cv = mo["m10"] / mo["m00"] + int(offset[0]), mo["m01"] / mo["m00"] + int(offset[1])
    bx, by, bw, bh = cv2.boundingRect(m8)
    bbox = (bx + int(offset[0]), by + int(offset[1]), bw, bh)
    med, c3 = float("nan"), None
    if depth_m is not None:
        d = depth_m[m8.view(bool)]
        d = d[d > 0]
        if d.size:
            med = float(np.median(d))
            y = (cv - K[1, 2]) / K[1, 1]
            x = (cu - K[0, 2] - K[0, 1] * y) / K[0, 0]
            c3 = np.array([x * med, y * med, med])
    return ObjectObservation(True, float(confidence), float(cu), float(cv), bbox, area, med, c3, backend)
