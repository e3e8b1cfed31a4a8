"""Clean-up of a raw object mask: keep the most plausible connected component (largest, nearest
a prior, of the object's 3D size, :func:`extent_3d`), close, fill holes, and rate it
(:func:`clean_mask`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import cv2
import numpy as np

from hp_ros.core.segmentation.image import _disk


@dataclass
class CleanResult:
    """Cleaned mask ``(H, W)`` bool and its confidence in [0, 1]."""

    mask: np.ndarray
    confidence: float


def _fill_holes(mask_u8: np.ndarray) -> np.ndarray:
    """Fill enclosed background regions of a uint8 0/1 mask (outer contours drawn filled)."""
    cnts, _ = cv2.findContours(mask_u8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = mask_u8.copy()
    if cnts:
        cv2.drawContours(out, cnts, -1, 1, thickness=cv2.FILLED)
    return out


def extent_3d(points: np.ndarray, lo: float = 5.0, hi: float = 95.0, max_points: int = 4000) -> float:
    """Robust 3D size (m) of a point set ``(N, 3)``: the diagonal of its box along the principal
    axes (PCA) spanning the ``lo``-``hi`` percentiles per axis (flying pixels at depth edges
    do not count). Comparable with a mesh's diameter (the box diagonal of a box-like object) for
    any orientation, unlike a camera-axis-aligned box. NaN for fewer than 10 points."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if len(p) < 10:
        return float("nan")
    if len(p) > max_points:  # evenly spaced subset: the percentiles need no more
        p = p[np.linspace(0, len(p) - 1, max_points).astype(np.int64)]
    p = p - p.mean(0)
    _, _, Vt = np.linalg.svd(p, full_matrices=False)
    q = p @ Vt.T
    return float(np.linalg.norm(np.percentile(q, hi, axis=0) - np.percentile(q, lo, axis=0)))


def clean_mask(mask: np.ndarray, min_area: int = 50, open_px: int = 1, close_px: int = 2,
               fill_holes: bool = True, keep: str = "largest",
               prior_uv: Optional[Sequence[float]] = None, expected_area: Optional[float] = None,
               points: Optional[np.ndarray] = None, expected_size: Optional[float] = None,
               size_tolerance: float = 2.0) -> CleanResult:
    """Keep the most plausible connected component of ``mask`` and tidy it.

    Steps: morphological opening (``open_px``, removes speckle) -> connected components
    (``cv2.connectedComponentsWithStats``, 8-connected) -> keep one component: the largest
    (``keep="largest"``) or the largest area / (1 + distance to ``prior_uv`` / sqrt(area))
    (``keep="near_prior"``, e.g. the hand's palm) -> closing (``close_px``) -> hole filling.

    Object-size plausibility (``points`` ``(H, W, 3)`` camera-frame back-projection of the
    mask's pixels, z = 0 where invalid, and ``expected_size`` = the object model's diameter, m):
    each component's 3D extent (:func:`extent_3d` of its valid points) gives
    ``size_score = min(e, s) / max(e, s)``; components with ``size_score < 1 / size_tolerance``
    (more than ``size_tolerance`` times too large or too small: a table top, a speck) are
    rejected, the others' score above is multiplied by it, and so is the confidence.
    Components with fewer than 10 valid depth pixels are not checked (score 1).

    Confidence = (share of the foreground held by the kept component) x (area plausibility:
    ``min(a, e) / max(a, e)`` against ``expected_area`` when given, else 1) x size score; 0
    when nothing of ``min_area`` pixels or more remains.
    """
    if keep not in ("largest", "near_prior"):
        raise ValueError(f"keep must be 'largest' or 'near_prior', got {keep!r}")
    full = np.zeros(mask.shape, bool)
    # work in the mask's bounding rectangle, padded for the closing
    bx, by, bw, bh = cv2.boundingRect(mask.view(np.uint8) if mask.dtype == bool else (mask > 0).astype(np.uint8))
    if bw == 0 or bh == 0:
        return CleanResult(full, 0.0)
    pad = max(int(close_px), 0) + 1
    X0, Y0 = max(bx - pad, 0), max(by - pad, 0)
    X1, Y1 = min(bx + bw + pad, mask.shape[1]), min(by + bh + pad, mask.shape[0])
    m = (mask[Y0:Y1, X0:X1] > 0).astype(np.uint8)
    if prior_uv is not None:
        prior_uv = np.asarray(prior_uv, dtype=np.float64) - (X0, Y0)
    if open_px > 0:
        m = cv2.morphologyEx(m, cv2.MORPH_OPEN, _disk(open_px))
    n, labels, stats, cents = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= 1:
        return CleanResult(full, 0.0)
    areas = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)
    if keep == "near_prior" and prior_uv is not None and np.all(np.isfinite(prior_uv)):
        dist = np.linalg.norm(cents[1:] - np.asarray(prior_uv, dtype=np.float64)[None], axis=1)
        score = areas / (1.0 + dist / np.sqrt(areas))
    else:
        score = areas
    size_score = np.ones_like(areas)
    if points is not None and expected_size:
        if points.shape != mask.shape + (3,):
            raise ValueError(f"points must be {mask.shape + (3,)}, got {points.shape}")
        if not expected_size > 0 or not size_tolerance >= 1:
            raise ValueError(f"expected_size must be > 0 m and size_tolerance >= 1, got {expected_size}, "
                             f"{size_tolerance}")
        pc = points[Y0:Y1, X0:X1]
        for j in np.nonzero(areas >= min_area)[0]:
            e = extent_3d(pc[(labels == 1 + j) & (pc[..., 2] > 0)])
            if np.isfinite(e):
                size_score[j] = min(e, expected_size) / max(e, expected_size, 1e-9)
        score = score * size_score
    eligible = (areas >= min_area) & (size_score >= 1.0 / size_tolerance)
    if not eligible.any():
        return CleanResult(full, 0.0)
    best = int(np.argmax(np.where(eligible, score, -1.0)))
    out = (labels == 1 + best).astype(np.uint8)
    if close_px > 0:
        out = cv2.morphologyEx(out, cv2.MORPH_CLOSE, _disk(close_px))
    if fill_holes:
        out = _fill_holes(out)
    conf = areas[best] / areas.sum() * size_score[best]
    if expected_area:
        conf *= min(areas[best], expected_area) / max(areas[best], expected_area)
    full[Y0:Y1, X0:X1] = out > 0
    return CleanResult(full, float(conf))
