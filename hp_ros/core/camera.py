"""Pinhole camera from ``sensor_msgs/CameraInfo`` data, projection, region-of-interest crops.

Conventions (see docs/ARCHITECTURE.md): REP-103 optical frame (x right, y down, z forward);
pixel centres at integer coordinates, pixel ``(u, v)`` covers ``[u-0.5, u+0.5] x [v-0.5, v+0.5]``.

A :class:`RoI` is a square window around the projected bounding box of some points, resampled
to a fixed ``S x S`` grid. Rendering into the RoI is ordinary rendering with the RoI's
intrinsics (``roi.K``) and size ``S``; observed images and masks are brought onto the same grid
with :meth:`RoI.crop`. Cost therefore depends on ``S`` only, not on the camera resolution.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hp_ros.core.camera_info import image_intrinsics

__all__ = ["Camera", "RoI", "project_points"]


def project_points(K: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pinhole projection of camera-frame points.

    Args:
        K: intrinsics ``(3, 3)`` or ``(B, 3, 3)``.
        points: ``(B, N, 3)`` (or ``(N, 3)``) in the optical frame, metres.
    Returns:
        ``uv`` pixels ``(B, N, 2)`` and depth ``z`` ``(B, N)``. Points with ``z <= 0`` get
        non-finite or meaningless pixels; callers cull them by depth.
    """
    if points.shape[-1] != 3:
        raise ValueError(f"points must have shape (..., N, 3), got {tuple(points.shape)}")
    K = K.to(points.dtype)
    if K.dim() == 2:
        K = K.unsqueeze(0)
    z = points[..., 2]
    xn = points[..., 0] / z
    yn = points[..., 1] / z
    u = K[..., 0, 0, None] * xn + K[..., 0, 1, None] * yn + K[..., 0, 2, None]
    v = K[..., 1, 1, None] * yn + K[..., 1, 2, None]
    return torch.stack([u, v], dim=-1), z


@dataclass
class Camera:
    """Pinhole camera: intrinsics ``K`` ``(3, 3)`` (float64) and image size in pixels.

    No distortion model: use rectified images (or images whose distortion is negligible, as
    the RealSense colour stream publishes).
    """

    K: torch.Tensor
    width: int
    height: int

    def __post_init__(self) -> None:
        self.K = torch.as_tensor(self.K, dtype=torch.float64).reshape(3, 3).clone()
        self.width, self.height = int(self.width), int(self.height)
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"camera size must be positive, got {self.width}x{self.height}")
        if not (self.K[0, 0] > 0 and self.K[1, 1] > 0):
            raise ValueError(f"focal lengths must be positive, got K=\n{self.K}")

    @classmethod
    def from_intrinsics(cls, fx: float, fy: float, cx: float, cy: float, width: int,
                        height: int) -> "Camera":
        """Camera from focal lengths and principal point (pixels)."""
        K = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)
        return cls(K, width, height)

    @classmethod
    def from_camera_info(cls, info: Any, use_projection_matrix: bool = True) -> "Camera":
        """Camera from a ``sensor_msgs/CameraInfo`` message, a rosbags message or a dict, by the
        project's one CameraInfo rule (P before K, binning, ROI: :func:`hp_ros.core.camera_info.image_intrinsics`).
        """
        ii = image_intrinsics(info, use_projection_matrix)
        return cls(torch.from_numpy(ii.K), ii.width, ii.height)

    def project(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Camera-frame points ``(B, N, 3)`` -> pixels ``(B, N, 2)`` and depth ``(B, N)``."""
        return project_points(self.K.to(points.device), points)

    def roi(self, points: torch.Tensor, size: int, margin: float = 0.1,
            clamp: bool = True, min_side: float = 8.0) -> "RoI":
        """Square RoI around the projected bounding box of ``points`` ``(B, N, 3)``.

        Args:
            size: output side ``S`` in pixels.
            margin: fraction of the larger bounding-box side added on each side.
            clamp: shift (and if needed shrink) the square to stay inside the image.
            min_side: smallest side in camera pixels (avoids degenerate zooms).
        """
        if points.dim() == 2:
            points = points.unsqueeze(0)
        with torch.no_grad():
            uv, z = self.project(points.detach().to(torch.float64))
            if not bool((z > 0).all()):
                raise ValueError("RoI points must all be in front of the camera (z > 0)")
            lo = uv.amin(dim=1) - 0.5
            hi = uv.amax(dim=1) + 0.5
            centre = 0.5 * (lo + hi)
            side = (hi - lo).amax(dim=-1) * (1.0 + 2.0 * margin)
            side = side.clamp(min=min_side)
            left = centre - 0.5 * side[:, None]
            if clamp:
                img = torch.tensor([self.width, self.height], dtype=torch.float64)
                side = torch.minimum(side, img.min())
                left = torch.minimum(left, img - 0.5 - side[:, None])
                left = torch.maximum(left, torch.full_like(left, -0.5))
        return RoI(self, left, side, size)


class RoI:
    """Square window ``[left_u, left_u + side] x [left_v, left_v + side]`` (pixel-edge
    coordinates of the camera image) resampled to ``S x S`` pixels, per batch element.

    Attributes:
        camera: the full camera.
        left: ``(B, 2)`` top-left window corner (u, v) in camera pixel coordinates (an edge,
            so the full image starts at ``-0.5``).
        side: ``(B,)`` window side in camera pixels.
        size: ``S``.
        K: ``(B, 3, 3)`` float64 intrinsics of the RoI image: pixel ``u'`` of the RoI has its
            centre at camera pixel ``left + (u' + 0.5) * side / S``.
    """

    def __init__(self, camera: Camera, left: torch.Tensor, side: torch.Tensor, size: int):
        self.camera = camera
        self.left = torch.as_tensor(left, dtype=torch.float64).reshape(-1, 2)
        self.side = torch.as_tensor(side, dtype=torch.float64).reshape(-1)
        if self.side.shape[0] != self.left.shape[0]:
            raise ValueError("RoI left (B, 2) and side (B,) batch sizes differ")
        if int(size) <= 0:
            raise ValueError(f"RoI size must be positive, got {size}")
        self.size = int(size)
        s = self.size / self.side  # (B,) RoI pixels per camera pixel
        K = camera.K.expand(len(s), 3, 3).clone()
        K[:, 0, :] *= s[:, None]
        K[:, 1, :] *= s[:, None]
        K[:, 0, 2] = s * (camera.K[0, 2] - self.left[:, 0]) - 0.5
        K[:, 1, 2] = s * (camera.K[1, 2] - self.left[:, 1]) - 0.5
        self.K = K

    @property
    def batch_size(self) -> int:
        return self.left.shape[0]

    def project(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Camera-frame points ``(B, N, 3)`` -> RoI pixels ``(B, N, 2)`` and depth ``(B, N)``."""
        return project_points(self.K.to(points.device), points)

    def to_camera_pixels(self, uv_roi: torch.Tensor) -> torch.Tensor:
        """RoI pixel coordinates ``(B, N, 2)`` -> camera pixel coordinates ``(B, N, 2)``."""
        scale = (self.side / self.size).to(uv_roi)[:, None, None]
        return self.left.to(uv_roi)[:, None, :] + (uv_roi + 0.5) * scale

    def _grid(self, dtype: torch.dtype, device) -> torch.Tensor:
        """Sampling grid ``(B, S, S, 2)`` in grid_sample's normalised coordinates."""
        S = self.size
        idx = torch.arange(S, dtype=torch.float64)
        scale = (self.side / S)[:, None]
        u = self.left[:, 0:1] + (idx[None] + 0.5) * scale  # camera pixel-edge coords + 0.5
        v = self.left[:, 1:2] + (idx[None] + 0.5) * scale
        # camera pixel centre coordinate c maps to normalised (2c + 1) / W - 1 (align_corners=False)
        un = (2.0 * u + 1.0) / self.camera.width - 1.0
        vn = (2.0 * v + 1.0) / self.camera.height - 1.0
        grid = torch.stack(torch.broadcast_tensors(un[:, None, :], vn[:, :, None]), dim=-1)
        return grid.to(dtype=dtype, device=device)

    def crop(self, image, mode: str = "bilinear") -> torch.Tensor:
        """Resample camera-sized images or masks into the RoI.

        Args:
            image: ``(B, C, H, W)`` / ``(C, H, W)`` tensor, or ``(H, W)`` / ``(H, W, C)``
                numpy array or tensor (HWC as OpenCV / ROS images), with ``H, W`` the camera
                size. A single image is shared by all batch elements. Integer and boolean
                inputs are converted to float (not rescaled).
            mode: ``"bilinear"`` (images), ``"nearest"`` (masks: point sampling at the RoI
                pixel centres, the same sampling as the renderer's hard coverage) or
                ``"area"`` (masks/images: box-average over the camera pixels under each RoI
                pixel, then bilinear; matches a soft coverage when zooming out).
        Returns:
            ``(B, C, S, S)`` float tensor; pixels outside the camera image are 0
            (see :meth:`valid_mask`).
        """
        x = torch.as_tensor(np.ascontiguousarray(image)) if isinstance(image, np.ndarray) \
            else torch.as_tensor(image)
        H, W = self.camera.height, self.camera.width
        if x.dim() == 2:
            x = x[None, None]
        elif x.dim() == 3:
            if x.shape[:2] == (H, W):
                x = x.permute(2, 0, 1)[None]
            elif x.shape[1:] == (H, W):
                x = x[None]
            else:
                raise ValueError(f"image shape {tuple(x.shape)} does not match camera {H}x{W}")
        elif x.dim() != 4:
            raise ValueError(f"image must be 2-, 3- or 4-dimensional, got {tuple(x.shape)}")
        if x.shape[-2:] != (H, W):
            raise ValueError(f"image size {tuple(x.shape[-2:])} does not match camera {H}x{W}")
        if not x.is_floating_point():
            x = x.to(torch.float32)
        B = self.batch_size
        if x.shape[0] == 1 and B > 1:
            x = x.expand(B, -1, -1, -1)
        elif x.shape[0] != B:
            raise ValueError(f"image batch {x.shape[0]} does not match RoI batch {B}")
        grid = self._grid(x.dtype, x.device)
        if mode == "bilinear":
            return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros",
                                 align_corners=False)
        if mode == "nearest":
            return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros",
                                 align_corners=False)
        if mode == "area":
            out = []
            for b in range(B):
                k = int(torch.floor(self.side[b] / self.size).item())
                xb = x[b:b + 1]
                if k >= 2:
                    # box-average by k, then express the grid in the pooled image's coordinates
                    # the pooled pixel (i) averages camera pixels i - k//2 .. i - k//2 + k - 1
                    shift = (k - 1) / 2.0 - k // 2
                    g = grid[b:b + 1].clone()
                    g[..., 0] += 2.0 * shift / W * -1.0
                    g[..., 1] += 2.0 * shift / H * -1.0
                    xb, g = _pool_window(xb, g, k)
                else:
                    g = grid[b:b + 1]
                out.append(F.grid_sample(xb, g, mode="bilinear", padding_mode="zeros",
                                         align_corners=False))
            return torch.cat(out, dim=0)
        raise ValueError(f"unknown crop mode {mode!r}; use 'bilinear', 'nearest' or 'area'")

    def valid_mask(self) -> torch.Tensor:
        """``(B, 1, S, S)`` bool: RoI pixels whose centre lies inside the camera image."""
        g = self._grid(torch.float64, "cpu")
        inside = (g.abs() <= 1.0).all(dim=-1)
        return inside[:, None]


def _pool_window(x: torch.Tensor, g: torch.Tensor, k: int):
    """The box average by ``k`` (stride 1, ``count_include_pad=False``) of image ``x`` ``(1, C, H, W)``,
    computed only over the window that grid ``g`` ``(1, S, S, 2)`` (normalised, in the pooled image's
    coordinates) samples bilinearly, and ``g`` expressed in that window: the same samples as pooling
    the whole image (each pooled pixel's camera pixels are all in the window, or outside the image;
    equal up to float rounding), at a cost that does not grow with the camera resolution."""
    H, W = x.shape[-2:]
    gd = g.double()
    cx = ((gd[..., 0] + 1.0) * W - 1.0) / 2.0   # pooled pixel coordinates (centres at integers)
    cy = ((gd[..., 1] + 1.0) * H - 1.0) / 2.0
    lo_x = min(max(int(math.floor(float(cx.min()))), 0), W - 1)
    hi_x = min(max(int(math.floor(float(cx.max()))) + 1, 0), W - 1)
    lo_y = min(max(int(math.floor(float(cy.min()))), 0), H - 1)
    hi_y = min(max(int(math.floor(float(cy.max()))) + 1, 0), H - 1)
    x0, x1 = max(0, lo_x - k // 2), min(W, hi_x - k // 2 + k)
    y0, y1 = max(0, lo_y - k // 2), min(H, hi_y - k // 2 + k)
    Ws, Hs = x1 - x0, y1 - y0
    # separable: a row box then a column box (the k x k box's count of pixels inside the image is the
    # product of the two counts), 2k instead of k^2 operations per pixel
    xs = F.avg_pool2d(x[..., y0:y1, x0:x1], (1, k), stride=1, padding=(0, k // 2), count_include_pad=False)
    xs = F.avg_pool2d(xs, (k, 1), stride=1, padding=(k // 2, 0), count_include_pad=False)[..., :Hs, :Ws]
    gx = (2.0 * (cx - x0) + 1.0) / Ws - 1.0
    gy = (2.0 * (cy - y0) + 1.0) / Hs - 1.0
    return xs, torch.stack([gx, gy], -1).to(g.dtype)
