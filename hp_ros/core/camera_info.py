"""The one rule that turns a CameraInfo into the intrinsics of the published image (numpy only).

Every node and tool reads intrinsics through :func:`image_intrinsics` (via
:func:`hp_ros.io.msgs.camera_info_to_intrinsics` or :meth:`hp_ros.core.camera.Camera.from_camera_info`),
so they cannot disagree:

* **P before K.** When ``P`` is present and non-zero its left 3x3 is used - the intrinsics of the
  *rectified* image (``image_rect``); for a monocular camera with zero distortion (RealSense
  colour) it equals ``K``. ``P``'s fourth column (stereo baseline) is ignored. Otherwise (or with
  ``use_projection_matrix=False``) ``K``, the raw image's.
* **Binning and ROI.** As the CameraInfo definition and ``image_geometry`` specify, ``K``/``P``
  refer to the full-resolution sensor; the published image is the ROI (offsets in full-resolution
  pixels) subsampled by the binning factors (0 means 1): ``fx' = fx / bx``,
  ``cx' = (cx - x_offset) / bx`` and likewise for y; the image is ``roi.width / bx`` x
  ``roi.height / by`` when the ROI is set, else ``width / bx`` x ``height / by``.
* **Distortion.** hp_ros projects with a pinhole model. With ``P`` the image is taken as rectified;
  with ``K`` and non-zero distortion coefficients ``D`` the result says ``distorted`` (the caller
  warns: pixels far from the centre will be off).

Accepts messages of either flavour, message-like objects (ROS 1 names ``K``/``P``/``D`` too) and dicts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

__all__ = ["ImageIntrinsics", "image_intrinsics"]


def _field(obj: Any, *names: str, default: Any = None) -> Any:
    """First present field among ``names`` of a dict or message-like object."""
    for name in names:
        if isinstance(obj, Mapping):
            if name in obj:
                return obj[name]
        elif hasattr(obj, name):
            return getattr(obj, name)
    return default


@dataclass
class ImageIntrinsics:
    """``K`` ``(3, 3)`` of the published image, its ``width`` x ``height``; ``rectified``: from ``P``;
    ``distorted``: from ``K`` with non-zero distortion coefficients."""

    K: np.ndarray
    width: int
    height: int
    rectified: bool
    distorted: bool


def _full_resolution_K(info: Any, use_projection_matrix: bool) -> tuple[np.ndarray, bool]:
    p = _field(info, "p", "P")
    if use_projection_matrix and p is not None:
        P = np.asarray(p, dtype=np.float64).reshape(-1)
        if P.size != 12:
            raise ValueError(f"CameraInfo P must have 12 entries, got {P.size}")
        if np.any(P != 0.0):
            return P.reshape(3, 4)[:, :3].copy(), True
    k = _field(info, "k", "K")
    if k is None:
        raise ValueError("CameraInfo has neither a non-zero P nor K")
    K = np.asarray(k, dtype=np.float64).reshape(-1)
    if K.size != 9:
        raise ValueError(f"CameraInfo K must have 9 entries, got {K.size}")
    return K.reshape(3, 3).copy(), False


def image_intrinsics(info: Any, use_projection_matrix: bool = True) -> ImageIntrinsics:
    """The published image's intrinsics from a CameraInfo (see the module doc); ValueError for
    one without a usable calibration."""
    width, height = _field(info, "width"), _field(info, "height")
    if width is None or height is None:
        raise ValueError("CameraInfo needs width and height")
    K, rectified = _full_resolution_K(info, use_projection_matrix)
    if K[2, 2] == 0 or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"CameraInfo has an invalid K (the camera is uncalibrated?): {K.ravel().tolist()}")
    bx = int(_field(info, "binning_x", default=0) or 0) or 1
    by = int(_field(info, "binning_y", default=0) or 0) or 1
    roi = _field(info, "roi")
    x_off = y_off = 0
    w_full, h_full = int(width), int(height)
    if roi is not None:
        x_off = int(_field(roi, "x_offset", default=0) or 0)
        y_off = int(_field(roi, "y_offset", default=0) or 0)
        rw = int(_field(roi, "width", default=0) or 0)
        rh = int(_field(roi, "height", default=0) or 0)
        if rw > 0 and rh > 0:
            w_full, h_full = rw, rh
    K[0, 2] -= x_off
    K[1, 2] -= y_off
    K[0, :] /= bx
    K[1, :] /= by
    d = _field(info, "d", "D")
    distorted = not rectified and d is not None and bool(np.any(np.asarray(d, dtype=np.float64) != 0.0))
    return ImageIntrinsics(K, w_full // bx, h_full // by, rectified, distorted)
