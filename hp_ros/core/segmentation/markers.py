"""Coloured fingertip markers detected near the FK-projected fingertips
(:class:`FingertipMarkerDetector`)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np


@dataclass
class FingertipResult:
    """Marker detections: ``uv`` ``(4, 2)`` (NaN when not seen), ``confidence`` ``(4,)``,
    FK projections ``fk_uv`` ``(4, 2)``; order thumb, index, middle, ring."""

    uv: np.ndarray
    confidence: np.ndarray
    fk_uv: np.ndarray


def _rgb_to_hsv_pixel(rgb: Sequence[float]) -> np.ndarray:
    c = np.asarray(rgb, dtype=np.float64).reshape(1, 1, 3)
    if c.max() <= 1.0:
        c = c * 255.0
    return cv2.cvtColor(np.clip(np.round(c), 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV)[0, 0].astype(np.int32)


def _disc_centre(hull: list, cu: float, cv: float, r: float, iterations: int = 30, tol: float = 0.01) -> tuple:
    """Move ``(cu, cv)`` towards the points of ``hull`` (``[[u, v], ...]``) until every one lies
    within ``r`` (+ ``tol`` px) of it: each step moves onto the circle of radius ``r`` around the
    farthest point (at most ``iterations`` steps). Plain Python floats: a hull has tens of points,
    for which numpy's per-call cost dominated; steps below ``tol`` (the zig-zag between two
    nearly equidistant points, ~25 steps of a marker) are not taken."""
    for _ in range(iterations):
        far, du, dv = -1.0, 0.0, 0.0
        for hu, hv in hull:
            d = math.hypot(hu - cu, hv - cv)
            if d > far:
                far, du, dv = d, hu - cu, hv - cv
        if far <= r + tol:
            break
        cu, cv = cu + (far - r) * du / far, cv + (far - r) * dv / far
    return cu, cv


class FingertipMarkerDetector:
    """Coloured fingertip markers near the FK-projected fingertips.

    Args:
        colors: 4 RGB colours (0-255, or 0-1), thumb, index, middle, ring.
        hue_tolerance: accepted hue distance (OpenCV units, 0-90, circular).
        min_saturation, min_value: lower bounds that reject grey/dark pixels.
        window_px: half side of the search window around the FK projection (rejects clutter;
            must exceed the calibration error in pixels).
        marker_radius: physical marker radius (m), gives the expected blob area for the
            confidence ``min(1, area / (pi (f r / z)^2))``.
        min_area: blobs smaller than this (pixels) are ignored.
    """

    def __init__(self, colors: Sequence[Sequence[float]], hue_tolerance: int = 10, min_saturation: int = 100,
                 min_value: int = 60, window_px: int = 40, marker_radius: float = 0.006, min_area: int = 4):
        cols = np.asarray(colors, dtype=np.float64).reshape(-1, 3)
        if cols.shape[0] != 4:
            raise ValueError(f"need 4 marker colours (thumb, index, middle, ring), got {cols.shape[0]}")
        self.hues = np.array([_rgb_to_hsv_pixel(c)[0] for c in cols])
        self.hue_tolerance, self.min_saturation, self.min_value = int(hue_tolerance), int(min_saturation), int(min_value)
        self.window_px, self.marker_radius, self.min_area = int(window_px), float(marker_radius), int(min_area)

    def detect(self, rgb: np.ndarray, fk_uv: np.ndarray, fk_z: np.ndarray, focal: float) -> FingertipResult:
        """``rgb`` ``(H, W, 3)`` uint8, FK fingertip pixels ``(4, 2)`` and depths ``(4,)``."""
        H, W = rgb.shape[:2]
        uv = np.full((4, 2), np.nan)
        conf = np.zeros(4)
        for i in range(4):
            cu, cv = fk_uv[i]
            if not (np.isfinite(cu) and np.isfinite(cv)):
                continue
            x0, x1 = int(max(np.floor(cu) - self.window_px, 0)), int(min(np.ceil(cu) + self.window_px + 1, W))
            y0, y1 = int(max(np.floor(cv) - self.window_px, 0)), int(min(np.ceil(cv) + self.window_px + 1, H))
            if x0 >= x1 or y0 >= y1:
                continue
            win = cv2.cvtColor(np.ascontiguousarray(rgb[y0:y1, x0:x1]), cv2.COLOR_RGB2HSV)
            dh = np.abs(win[..., 0].astype(np.int16) - self.hues[i])
            dh = np.minimum(dh, 180 - dh)
            m = ((dh <= self.hue_tolerance) & (win[..., 1] >= self.min_saturation)
                 & (win[..., 2] >= self.min_value)).astype(np.uint8)
            n, labels, stats, cents = cv2.connectedComponentsWithStats(m, connectivity=8)
            if n <= 1:
                continue
            areas = stats[1:, cv2.CC_STAT_AREA]
            j = int(np.argmax(areas))
            if areas[j] < self.min_area:
                continue
            z = fk_z[i] if np.isfinite(fk_z[i]) and fk_z[i] > self.marker_radius else np.nan
            r_px = focal * self.marker_radius / np.sqrt(z * z - self.marker_radius ** 2) if np.isfinite(z) else np.nan
            c = cents[1 + j] + (x0, y0)
            if np.isfinite(r_px):
                # the blob is part of the marker's projected disc (radius r_px) around the tip:
                # move the FK prediction into the set of centres consistent with every blob
                # pixel (a partly hidden marker biases a plain centroid)
                bx, by, bw, bh = (int(x) for x in stats[1 + j, :4])   # the blob's box: no full-window scan
                pts = np.argwhere(labels[by:by + bh, bx:bx + bw] == 1 + j)[:, ::-1] + (bx, by)
                hull = cv2.convexHull(pts.astype(np.int32)).reshape(-1, 2) + (x0, y0)
                c = np.array(_disc_centre(hull.tolist(), float(cu), float(cv), float(r_px)))
            uv[i] = c
            expected = np.pi * r_px ** 2 if np.isfinite(r_px) else areas[j]
            conf[i] = float(min(1.0, areas[j] / max(expected, 1.0)))
        return FingertipResult(uv, conf, np.asarray(fk_uv, dtype=np.float64))
