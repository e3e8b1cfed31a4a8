"""The refiner's inputs (:class:`hp_ros.core.refine.Refiner`, mixed in): observed images and masks as
tensors, the hand's joints and base poses, the RoI of each frame and the crops of the images into it.
ROS-free."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from hp_ros.core import se3
from hp_ros.core.camera import Camera, RoI
from hp_ros.core.refine_depth import depth_tensor as _depth_tensor
from hp_ros.core.refine_types import FrameObservation


def _image_tensor(x, name: str, H: int, W: int) -> torch.Tensor:
    """Camera image/mask -> float tensor ``(C, H, W)`` in [0, 1]."""
    t = torch.as_tensor(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else torch.as_tensor(x)
    if t.dim() == 2:
        t = t[None]
    elif t.dim() == 3 and t.shape[-1] in (1, 3) and t.shape[:2] == (H, W):
        t = t.permute(2, 0, 1)
    if t.dim() != 3 or t.shape[-2:] != (H, W):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected ({H}, {W}[, C]) to match the camera")
    if t.dtype == torch.bool:
        return t.float()
    if not t.is_floating_point():
        scale = 255.0 if t.dtype == torch.uint8 or int(t.max()) > 1 else 1.0
        return t.float() / scale
    t = t.float()
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf")
    return t / 255.0 if float(t.max()) > 1.5 else t


class RefinerInputs:
    """Mixin of :class:`hp_ros.core.refine.Refiner` (uses its ``device``, ``hand``, ``verts``,
    ``config``): the observations of a window as tensors, and their crops into the RoI."""

    def _prepare(self, frames: Sequence[FrameObservation], camera: Camera, T_init: torch.Tensor):
        B = len(frames)
        H, W = camera.height, camera.width
        obs = {"object": None, "hand": None, "rgb": None}
        for key, attr in (("object", "object_mask"), ("hand", "hand_mask"), ("rgb", "rgb")):
            present = [getattr(f, attr) is not None for f in frames]
            if all(present):
                obs[key] = torch.stack([_image_tensor(getattr(f, attr), f"frame {i} {attr}", H, W)
                                        for i, f in enumerate(frames)]).to(self.device)
            elif any(present):
                raise ValueError(f"{attr} is given for some frames of the window but not all")
        obs["depth"] = _depth_tensor(frames, H, W, self.device)
        if obs["rgb"] is not None and obs["rgb"].shape[1] != 3:
            raise ValueError("rgb must have 3 channels")
        for key in ("object", "hand"):
            if obs[key] is not None:
                obs[key] = obs[key][:, :1]
        has_hand = self.hand is not None and all(f.q is not None and f.T_cam_hand is not None for f in frames)
        q = T_hand = None
        if has_hand:
            q = torch.stack([torch.as_tensor(np.asarray(f.q), dtype=torch.float32).reshape(-1)
                             for f in frames]).to(self.device)
            if q.shape[1] != self.hand.num_joints:
                raise ValueError(f"q must have {self.hand.num_joints} joints, got {q.shape[1]}")
            T_hand = torch.stack([torch.as_tensor(np.asarray(f.T_cam_hand), dtype=torch.float32).reshape(4, 4)
                                  for f in frames]).to(self.device)
            if not (torch.isfinite(q).all() and torch.isfinite(T_hand).all()):
                raise ValueError("joint angles or camera->hand poses contain NaN or inf")
        # RoI per frame: union of the projected object at the initial pose and the observed mask
        with torch.no_grad():
            uv, z = camera.project(se3.transform_points(T_init, self.verts).double())
            if not bool((z > 1e-3).all()):
                raise ValueError("the initial object pose puts part of the object behind the camera")
            lo, hi = uv.amin(1) - 0.5, uv.amax(1) + 0.5  # (B, 2)
            if obs["object"] is not None:
                for b in range(B):
                    ys, xs = torch.nonzero(obs["object"][b, 0] > 0.5, as_tuple=True)
                    if len(xs):
                        lo[b] = torch.minimum(lo[b], torch.stack([xs.min(), ys.min()]).double() - 0.5)
                        hi[b] = torch.maximum(hi[b], torch.stack([xs.max(), ys.max()]).double() + 0.5)
            side = (hi - lo).amax(-1) * (1 + 2 * self.config.roi_margin)
            side = side.clamp(min=16.0)
            left = 0.5 * (lo + hi) - 0.5 * side[:, None]
        return obs, has_hand, q, T_hand, left, side

    def _crop(self, obs, left, side, size, camera):
        roi = RoI(camera, left, side, size)
        out = {"K": roi.K.float(), "valid": roi.valid_mask()[:, 0].float()}
        out["object"] = None if obs["object"] is None else roi.crop(obs["object"], mode="area")[:, 0].clamp(0, 1)
        out["hand"] = None if obs["hand"] is None else roi.crop(obs["hand"], mode="area")[:, 0].clamp(0, 1)
        out["rgb"] = None if obs["rgb"] is None else roi.crop(obs["rgb"], mode="bilinear")
        out["depth"] = None if obs.get("depth") is None else roi.crop(obs["depth"], mode="nearest")[:, 0]
        return out
