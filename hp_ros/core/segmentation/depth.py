"""Depth workspace: the object is what lies inside a box in the camera or hand-base frame
(:class:`DepthBoxForeground`), and the ``depth`` backend built on it (:class:`DepthBackend`)."""
from __future__ import annotations

from typing import Optional, Sequence

import cv2
import numpy as np

from hp_ros.core.segmentation.backend import WORKSPACE, BackendMask, BackendSetup, Frame, ObjectBackend
from hp_ros.core.segmentation.image import _check_K, _ray_grid


class DepthBoxForeground:
    """Pixels whose back-projected point lies inside an axis-aligned box.

    The box ``[x_min, y_min, z_min, x_max, y_max, z_max]`` (metres) is expressed in the camera
    frame (``frame="camera"``) or in the hand-base frame (``frame="hand"``, needs ``T_cam_hand``:
    a box that moves with the hand, natural for a held object). Per pixel
    ``p_box = R^T (d * ray - t)`` is linear in the depth ``d``, so the per-pixel coefficients are
    evaluated inside the box's projected image rectangle only.
    """

    def __init__(self, K, width: int, height: int, box: Sequence[float], frame: str = "camera"):
        self.K = _check_K(K)
        self.width, self.height = int(width), int(height)
        b = np.asarray(box, dtype=np.float64).reshape(-1)
        if b.size != 6 or not (b[:3] < b[3:]).all():
            raise ValueError(f"workspace box must be [x_min y_min z_min x_max y_max z_max] with min < max, got {b.tolist()}")
        if frame not in ("camera", "hand"):
            raise ValueError(f"workspace frame must be 'camera' or 'hand', got {frame!r}")
        self.lo, self.hi, self.frame = b[:3], b[3:], frame
        self._rx, self._ry = _ray_grid(self.K, self.width, self.height)

    def mask(self, depth_m: np.ndarray, T_cam_hand: Optional[np.ndarray] = None) -> np.ndarray:
        """``depth_m`` ``(H, W)`` metres (0 = invalid) -> ``(H, W)`` bool.

        Only the image rectangle the box projects to is evaluated (per pixel
        ``p_box = R^T (d * ray - t)``, linear in the depth ``d``)."""
        if depth_m.shape != (self.height, self.width):
            raise ValueError(f"depth is {depth_m.shape}, the camera is {(self.height, self.width)}")
        if self.frame == "hand" and T_cam_hand is None:
            raise ValueError("a workspace box in the hand frame needs T_cam_hand")
        out = np.zeros((self.height, self.width), bool)
        r = self.project_box(T_cam_hand)
        if r is None:
            return out
        x0, y0, x1, y1 = r
        T = np.eye(4) if self.frame == "camera" else np.asarray(T_cam_hand, dtype=np.float64)
        Rt = T[:3, :3].T
        off = -Rt @ T[:3, 3]
        d = np.ascontiguousarray(depth_m[y0:y1, x0:x1], dtype=np.float32)
        rx, ry = self._rx[y0:y1, x0:x1], self._ry[y0:y1, x0:x1]
        m = None
        for i in range(3):  # OpenCV passes: coefficient, times depth, range test
            c = cv2.addWeighted(rx, float(Rt[i, 0]), ry, float(Rt[i, 1]), float(Rt[i, 2]))
            p = cv2.multiply(d, c)
            mi = cv2.inRange(p, float(self.lo[i] - off[i]), float(self.hi[i] - off[i]))
            m = mi if m is None else cv2.bitwise_and(m, mi)
        m = cv2.bitwise_and(m, cv2.inRange(d, 1e-6, np.inf))
        out[y0:y1, x0:x1] = m > 0
        return out

    def project_box(self, T_cam_hand: Optional[np.ndarray] = None) -> Optional[tuple[int, int, int, int]]:
        """Image bounding rectangle ``(x0, y0, x1, y1)`` (exclusive ends) of the box, clipped to the
        image; None when the box is entirely behind the camera or off-image."""
        corners = np.array([[x, y, z] for x in (self.lo[0], self.hi[0]) for y in (self.lo[1], self.hi[1])
                            for z in (self.lo[2], self.hi[2])])
        if self.frame == "hand":
            T = np.asarray(T_cam_hand, dtype=np.float64)
            corners = corners @ T[:3, :3].T + T[:3, 3]
        z = corners[:, 2]
        if (z <= 1e-3).all():
            return None
        if (z <= 1e-3).any():
            return 0, 0, self.width, self.height
        uv = (corners @ self.K.T)[:, :2] / z[:, None]
        x0, y0 = np.floor(uv.min(0)).astype(int)
        x1, y1 = np.ceil(uv.max(0)).astype(int) + 1
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, self.width), min(y1, self.height)
        return None if x0 >= x1 or y0 >= y1 else (x0, y0, x1, y1)


class DepthBackend(ObjectBackend):
    """``depth``: the pixels whose depth lies inside the workspace box (nothing without depth, or
    without ``T_cam_hand`` for a box in the hand frame)."""

    name = "depth"
    region = WORKSPACE

    def __init__(self, setup: BackendSetup):
        self.box = setup.box

    def object_mask(self, frame: Frame) -> BackendMask:
        if frame.depth_m is None or frame.empty or (self.box.frame == "hand" and frame.T_cam_hand is None):
            return BackendMask()
        return BackendMask(self.box.mask(frame.depth_m, frame.T_cam_hand)[frame.sl])
