"""Images in and out of the segmentation: colour/depth encodings -> arrays (:func:`to_rgb`,
:func:`depth_to_metres`), the RViz overlay (:func:`overlay`), and the pixel-grid helpers the
backends share (intrinsics check, per-pixel rays, discs for morphology, ROI-limited dilation).

Masks are ``(H, W)`` bool; colour images ``(H, W, 3)`` uint8 **RGB**; depth ``(H, W)`` float32
metres with 0 = invalid.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import cv2
import numpy as np

if TYPE_CHECKING:  # annotation only
    from hp_ros.core.segmentation.markers import FingertipResult


COLOR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
DEPTH_ENCODINGS = ("16UC1", "32FC1")


def to_rgb(image: np.ndarray, encoding: str) -> np.ndarray:
    """Colour image of a supported encoding -> ``(H, W, 3)`` uint8 RGB (a view when possible)."""
    if encoding not in COLOR_ENCODINGS:
        raise ValueError(f"unsupported colour encoding {encoding!r}; supported: {list(COLOR_ENCODINGS)}")
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"colour image must be uint8, got {img.dtype}")
    if encoding == "mono8":
        if img.ndim != 2:
            raise ValueError(f"mono8 image must be (H, W), got {img.shape}")
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    channels = 4 if encoding in ("rgba8", "bgra8") else 3
    if img.ndim != 3 or img.shape[2] != channels:
        raise ValueError(f"{encoding} image must be (H, W, {channels}), got {img.shape}")
    if encoding == "rgb8":
        return img
    code = {"bgr8": cv2.COLOR_BGR2RGB, "rgba8": cv2.COLOR_RGBA2RGB, "bgra8": cv2.COLOR_BGRA2RGB}[encoding]
    return cv2.cvtColor(img, code)


def depth_to_metres(depth: np.ndarray, encoding: str, depth_scale: float = 0.001) -> np.ndarray:
    """Depth image -> ``(H, W)`` float32 metres, 0 where invalid (0, NaN, inf, negative).

    ``16UC1`` values are multiplied by ``depth_scale`` (RealSense: millimetres, 0.001);
    ``32FC1`` is already in metres.
    """
    d = np.asarray(depth)
    if d.ndim != 2:
        raise ValueError(f"depth must be (H, W), got {d.shape}")
    if encoding == "16UC1":
        if d.dtype != np.uint16:
            raise ValueError(f"16UC1 depth must be uint16, got {d.dtype}")
        return d.astype(np.float32) * np.float32(depth_scale)
    if encoding == "32FC1":
        out = d.astype(np.float32, copy=True)
        out[~(np.isfinite(out) & (out > 0))] = 0.0
        return out
    raise ValueError(f"unsupported depth encoding {encoding!r}; supported: {list(DEPTH_ENCODINGS)}")


# ----------------------------------------------------------------------------- pixel-grid helpers

def _disk(radius: int) -> np.ndarray:
    r = int(radius)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _ray_grid(K: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised ray coordinates ``x/z``, ``y/z`` per pixel centre, each ``(H, W)`` float32."""
    fx, s, cx, fy, cy = K[0, 0], K[0, 1], K[0, 2], K[1, 1], K[1, 2]
    u = np.arange(width, dtype=np.float64)[None, :]
    v = np.arange(height, dtype=np.float64)[:, None]
    y = np.broadcast_to((v - cy) / fy, (height, width))
    x = (u - cx - s * y) / fx
    return x.astype(np.float32), np.ascontiguousarray(y, dtype=np.float32)


def _grow_mask(mask: np.ndarray, roi: Optional[tuple], px: int) -> np.ndarray:
    """``mask`` ``(H, W)`` bool dilated by a disc of ``px`` pixels; only ``roi = (x0, y0, x1, y1)``
    (grown by ``px``) is processed when given (the mask is empty outside it)."""
    if px <= 0 or not mask.any():
        return mask
    H, W = mask.shape
    x0, y0, x1, y1 = roi if roi is not None else (0, 0, W, H)
    x0, y0, x1, y1 = max(x0 - px, 0), max(y0 - px, 0), min(x1 + px, W), min(y1 + px, H)
    out = np.zeros_like(mask)
    out[y0:y1, x0:x1] = cv2.dilate(np.ascontiguousarray(mask[y0:y1, x0:x1]).view(np.uint8), _disk(px)).astype(bool)
    return out


def _check_K(K) -> np.ndarray:
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not (K[0, 0] > 0 and K[1, 1] > 0):
        raise ValueError(f"K must be a (3, 3) intrinsic matrix with positive focal lengths, got {K.tolist()}")
    return K


# ----------------------------------------------------------------------------- overlay

def overlay(rgb: np.ndarray, hand_mask: np.ndarray, object_mask: np.ndarray,
            fingertips: Optional[FingertipResult] = None, alpha: float = 0.45) -> np.ndarray:
    """RGB overlay for RViz: hand tinted blue, object green, contours, markers (circles) and FK
    fingertips (crosses)."""
    out = rgb.copy()
    for m, col in ((hand_mask, (40, 110, 255)), (object_mask, (40, 220, 60))):
        if m.any():
            out[m] = (out[m] * (1 - alpha) + np.asarray(col) * alpha).astype(np.uint8)
            cnts, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, cnts, -1, col, 1)
    if fingertips is not None:
        for (u, v), (fu, fv), c in zip(fingertips.uv, fingertips.fk_uv, fingertips.confidence):
            if np.isfinite(fu) and np.isfinite(fv):
                cv2.drawMarker(out, (int(round(fu)), int(round(fv))), (255, 255, 0), cv2.MARKER_CROSS, 10, 1)
            if np.isfinite(u) and np.isfinite(v):
                cv2.circle(out, (int(round(u)), int(round(v))), 5, (255, 0, 255), 1)
    return out
