"""HandyPriors rendering losses: L2 mask loss (hand and object) and L2 RGB loss (object, inside
the observed object mask). The refinement's terms built on them are entries of
:data:`hp_ros.core.priors.PRIORS`.

All terms are means over pixels (so they do not depend on the RoI size) averaged over the
batch. Observed masks are float in [0, 1] (bool accepted), on the same grid as the rendering
(use :meth:`hp_ros.core.camera.RoI.crop`).
"""
from __future__ import annotations

from typing import Optional

import torch

from .render import RenderOutput

__all__ = ["mask_l2", "rgb_l2", "rendering_loss"]


def _as_mask(x: torch.Tensor, like: torch.Tensor, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dim() == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() == 2:
        x = x[None]
    if x.shape[-2:] != like.shape[-2:]:
        raise ValueError(f"{name} has size {tuple(x.shape[-2:])}, rendering has "
                         f"{tuple(like.shape[-2:])}: crop observations with RoI.crop")
    return x.to(like.dtype)


def mask_l2(soft: torch.Tensor, observed: torch.Tensor,
            valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean squared difference of a rendered soft mask ``(B, H, W)`` and an observed mask
    ``(B, H, W)`` (or ``(B, 1, H, W)``), over ``valid`` pixels if given. Returns ``(B,)``."""
    obs = _as_mask(observed, soft, "observed mask")
    err = (soft - obs) ** 2
    if valid is None:
        return err.flatten(1).mean(1)
    v = _as_mask(valid, soft, "valid mask")
    return (err * v).flatten(1).sum(1) / v.flatten(1).sum(1).clamp_min(1.0)


def rgb_l2(rendered: torch.Tensor, observed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Squared RGB difference summed over channels, averaged over the pixels of ``mask``.

    Args:
        rendered, observed: ``(B, 3, H, W)`` in the same range (e.g. [0, 1]).
        mask: ``(B, H, W)`` observed object mask (weights in [0, 1]).
    Returns:
        ``(B,)``; 0 for frames whose mask is empty.
    """
    if rendered.shape != torch.Size(observed.shape):
        raise ValueError(f"rendered {tuple(rendered.shape)} and observed "
                         f"{tuple(observed.shape)} RGB shapes differ")
    m = _as_mask(mask, rendered, "object mask")
    err = ((rendered - observed.to(rendered.dtype)) ** 2).sum(1) * m
    return err.flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)


def rendering_loss(out: RenderOutput, hand_mask: Optional[torch.Tensor],
                   object_mask: Optional[torch.Tensor], rgb: Optional[torch.Tensor],
                   weights=None, hand_index: int = 0,
                   object_index: int = 1, valid: Optional[torch.Tensor] = None):
    """The paper's rendering prior.

    Args:
        out: :class:`RenderOutput` of ``render`` with the hand mesh at ``hand_index`` and the
            object (rendered with colours) at ``object_index``.
        hand_mask, object_mask: observed masks ``(B, H, W)``; None skips the term.
        rgb: observed image ``(B, 3, H, W)`` in [0, 1]; None skips the RGB term.
        weights: :class:`hp_ros.core.priors.Weights` (``mask_hand``, ``mask_object``, ``rgb`` are
            read; the registry's defaults if None).
        valid: optional ``(B, H, W)`` mask of pixels inside the camera image (RoI crops
            that stick out of the image), used by the mask terms.
    Returns:
        ``(total, terms)``: scalar total and a dict of unweighted scalar terms
        ``mask_hand``, ``mask_object``, ``rgb`` (batch means).
    """
    from hp_ros.core.priors import Weights

    weights = Weights() if weights is None else weights
    terms = {}
    total = out.soft_masks.new_zeros(())
    if hand_mask is not None and weights.mask_hand > 0:
        terms["mask_hand"] = mask_l2(out.soft_masks[:, hand_index], hand_mask, valid).mean()
        total = total + weights.mask_hand * terms["mask_hand"]
    if object_mask is not None and weights.mask_object > 0:
        terms["mask_object"] = mask_l2(out.soft_masks[:, object_index], object_mask,
                                       valid).mean()
        total = total + weights.mask_object * terms["mask_object"]
    if rgb is not None and weights.rgb > 0:
        if out.rgb is None:
            raise ValueError("RGB loss needs a rendering with object colours (colors=...)")
        if object_mask is None:
            raise ValueError("RGB loss needs the observed object mask")
        terms["rgb"] = rgb_l2(out.rgb, rgb, object_mask).mean()
        total = total + weights.rgb * terms["rgb"]
    return total, terms
