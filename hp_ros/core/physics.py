"""Physics priors (HandyPriors) and physical metrics on torch tensors.

Shapes: ``B`` frames (consecutive, oldest first), ``N`` hand query points, ``V`` object vertices,
``J`` hand joints. Signed distances ``sdf`` ``(B, N)`` are in metres, negative inside the object
(see :mod:`hp_ros.core.sdf`).

Loss terms (all return a scalar tensor, differentiable where it makes sense):

* :func:`penetration_loss` -- ``relu(-sdf)^2`` summed over points, averaged over frames (m^2).
* :func:`contact_mask` -- ``sdf < threshold`` (default 1 mm; penetrating points count as contact).
* :func:`contact_sliding_loss` -- for points in contact at both ``t-1`` and ``t``, the squared
  displacement of the point expressed in the object frame:
  ``|| T_obj_t^-1 p_t - T_obj_{t-1}^-1 p_{t-1} ||^2``, averaged over such pairs (m^2).
* :func:`object_smoothness_loss` -- mean squared displacement of object vertices between
  consecutive frames (m^2).
* :func:`hand_smoothness_loss` -- squared joint-angle change (rad^2, summed over joints) plus,
  with base poses, the squared SE(3) log of the relative base motion; averaged over frame pairs.
* :func:`object_oscillation_loss` -- mean squared second difference of object vertex positions,
  ``|| v_{t+1} - 2 v_t + v_{t-1} ||^2`` (m^2): penalises changes of object velocity (jitter /
  back-and-forth motion) while allowing constant-velocity motion.

:func:`physics_loss` combines them with :class:`hp_ros.core.priors.Weights` and returns ``(total, terms)``;
the terms, their default weights and the data they need are entries of :data:`hp_ros.core.priors.PRIORS`.

Metrics: :func:`max_penetration_depth`, :func:`contact_count`, :func:`per_vertex_contact`
(ContactOpt-style contact map), :func:`interpenetration_volume` (voxelised intersection of two
meshes) and :func:`hand_object_interpenetration_volume`.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from hp_ros.core import se3
from hp_ros.core.sdf import MeshSDF

__all__ = [
    "DEFAULT_CONTACT_THRESHOLD", "penetration_loss", "contact_mask",
    "contact_sliding_loss", "object_smoothness_loss", "hand_smoothness_loss", "object_oscillation_loss",
    "physics_loss", "max_penetration_depth", "contact_count", "per_vertex_contact",
    "interpenetration_volume", "hand_object_interpenetration_volume",
]

DEFAULT_CONTACT_THRESHOLD = 1e-3  # metres: "in contact" = within 1 mm of the surface (or inside)


def _check_sdf(sdf: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(sdf) or sdf.dim() < 1:
        raise ValueError(f"sdf must be a tensor of shape (B, N) or (N,), got {getattr(sdf, 'shape', type(sdf))}")
    return sdf if sdf.dim() >= 2 else sdf[None]


def _check_points(name: str, p: torch.Tensor):
    if not torch.is_tensor(p) or p.dim() != 3 or p.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (B, N, 3), got {tuple(getattr(p, 'shape', ()))}")


def _check_poses(name: str, T: torch.Tensor, B: int):
    if not torch.is_tensor(T) or T.dim() != 3 or T.shape[1:] != (4, 4) or T.shape[0] != B:
        raise ValueError(f"{name} must have shape ({B}, 4, 4), got {tuple(getattr(T, 'shape', ()))}")


# ----------------------------------------------------------------------------------- loss terms
def penetration_loss(sdf: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Penetration penalty from signed distances ``(B, N)`` (or ``(N,)``).

    ``reduction="sum"``: sum over points of ``relu(-sdf)^2``, mean over frames (independent of how
    many points are far from the object). ``"mean"``: mean over all points and frames.
    """
    sdf = _check_sdf(sdf)
    pen2 = torch.relu(-sdf) ** 2
    if reduction == "sum":
        return pen2.sum(dim=-1).mean()
    if reduction == "mean":
        return pen2.mean()
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


def contact_mask(sdf: torch.Tensor, threshold: float = DEFAULT_CONTACT_THRESHOLD) -> torch.Tensor:
    """Contact points ``(B, N)`` bool: ``sdf < threshold`` (metres; penetration counts as contact)."""
    if threshold < 0:
        raise ValueError(f"contact threshold must be >= 0, got {threshold}")
    return _check_sdf(sdf).detach() < threshold


def contact_sliding_loss(points_world: torch.Tensor, T_world_object: torch.Tensor,
                         contact: torch.Tensor) -> torch.Tensor:
    """Sliding of contact points relative to the object between consecutive frames.

    Args:
        points_world: ``(B, N, 3)`` hand points (same point index = same hand point over frames).
        T_world_object: ``(B, 4, 4)`` object poses.
        contact: ``(B, N)`` bool contact mask (e.g. :func:`contact_mask`); a pair (t-1, t) counts
            when the point is in contact in both frames.
    Returns:
        Mean over such pairs of ``||T_obj_t^-1 p_t - T_obj_{t-1}^-1 p_{t-1}||^2`` (m^2); 0 when
        there is no pair (B < 2 or no persistent contact). Differentiable w.r.t. points and poses.
    """
    _check_points("points_world", points_world)
    B, N = points_world.shape[:2]
    _check_poses("T_world_object", T_world_object, B)
    if contact.shape != (B, N):
        raise ValueError(f"contact must have shape ({B}, {N}), got {tuple(contact.shape)}")
    if B < 2:
        return points_world.sum() * 0.0
    p_obj = se3.transform_points(se3.invert(T_world_object), points_world)   # (B, N, 3)
    both = (contact[1:] & contact[:-1]).to(points_world.dtype)              # (B-1, N)
    d2 = ((p_obj[1:] - p_obj[:-1]) ** 2).sum(-1)                             # (B-1, N)
    n = both.sum()
    return (d2 * both).sum() / n.clamp(min=1.0)


def object_smoothness_loss(object_points_world: torch.Tensor) -> torch.Tensor:
    """Mean over frame pairs and vertices of ``||v_t - v_{t-1}||^2`` for ``(B, V, 3)`` (m^2); 0 if B < 2."""
    _check_points("object_points_world", object_points_world)
    if object_points_world.shape[0] < 2:
        return object_points_world.sum() * 0.0
    return ((object_points_world[1:] - object_points_world[:-1]) ** 2).sum(-1).mean()


def hand_smoothness_loss(hand_q: Optional[torch.Tensor] = None, hand_base: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Hand pose change between consecutive frames, averaged over frame pairs.

    ``hand_q`` ``(B, J)``: ``sum_j (q_t - q_{t-1})^2`` (rad^2). ``hand_base`` ``(B, 4, 4)``:
    ``||log(T_{t-1}^-1 T_t)||^2`` (translation m^2 + rotation rad^2). Either or both; 0 if B < 2.
    """
    if hand_q is None and hand_base is None:
        raise ValueError("hand_smoothness_loss needs hand_q and/or hand_base")
    total = None
    if hand_q is not None:
        if hand_q.dim() != 2:
            raise ValueError(f"hand_q must have shape (B, J), got {tuple(hand_q.shape)}")
        term = ((hand_q[1:] - hand_q[:-1]) ** 2).sum(-1).mean() if hand_q.shape[0] > 1 else hand_q.sum() * 0.0
        total = term
    if hand_base is not None:
        if hand_base.dim() != 3 or hand_base.shape[1:] != (4, 4):
            raise ValueError(f"hand_base must have shape (B, 4, 4), got {tuple(hand_base.shape)}")
        if hand_base.shape[0] > 1:
            rel = se3.invert(hand_base[:-1]) @ hand_base[1:]
            term = (se3.se3_log(rel) ** 2).sum(-1).mean()
        else:
            term = hand_base.sum() * 0.0
        total = term if total is None else total + term
    return total


def object_oscillation_loss(object_points_world: torch.Tensor) -> torch.Tensor:
    """Mean of ``||v_{t+1} - 2 v_t + v_{t-1}||^2`` over ``(B, V, 3)`` (m^2); 0 if B < 3."""
    _check_points("object_points_world", object_points_world)
    v = object_points_world
    if v.shape[0] < 3:
        return v.sum() * 0.0
    return ((v[2:] - 2.0 * v[1:-1] + v[:-2]) ** 2).sum(-1).mean()


def physics_loss(object_sdf: MeshSDF, hand_points_world: torch.Tensor, T_world_object: torch.Tensor,
                 weights=None, object_vertices: Optional[torch.Tensor] = None,
                 hand_q: Optional[torch.Tensor] = None, hand_base: Optional[torch.Tensor] = None,
                 contact_threshold: float = DEFAULT_CONTACT_THRESHOLD) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Weighted sum of the physics priors (the ``"physics"`` entries of :data:`hp_ros.core.priors.PRIORS`)
    over a window of ``B`` consecutive frames.

    Args:
        object_sdf: :class:`MeshSDF` of the object (object frame).
        hand_points_world: ``(B, N, 3)`` hand surface points in the world/camera frame.
        T_world_object: ``(B, 4, 4)`` object poses.
        weights: :class:`hp_ros.core.priors.Weights` (the registry's defaults if None).
        object_vertices: ``(V, 3)`` object-frame points for smoothness/oscillation (default: the
            SDF mesh's vertices; pass a subsample for speed).
        hand_q: ``(B, J)`` joint angles and/or hand_base ``(B, 4, 4)`` for hand smoothness
            (the term is skipped when both are None).
        contact_threshold: metres.
    Returns:
        ``(total, terms)``: scalar tensor and a dict of the unweighted terms (one per physics prior:
        ``penetration``, ``contact_sliding``, ``object_smoothness``, ``hand_smoothness``,
        ``oscillation``) plus ``num_contacts`` (detached). Terms with weight 0 are not computed and
        reported as 0.
    """
    from hp_ros.core.priors import Weights, physics_terms, priors_of_kind

    w = Weights() if weights is None else weights
    _check_points("hand_points_world", hand_points_world)
    B = hand_points_world.shape[0]
    _check_poses("T_world_object", T_world_object, B)
    zero = hand_points_world.new_zeros(())
    total, computed, contact = physics_terms(object_sdf, hand_points_world, T_world_object, w, object_vertices,
                                             hand_q, hand_base, contact_threshold)
    terms = {p.name: computed.get(p.name, zero) for p in priors_of_kind("physics")}
    terms["num_contacts"] = contact.sum().to(zero.dtype)
    return total, terms


# ----------------------------------------------------------------------------------- metrics
def max_penetration_depth(sdf: torch.Tensor) -> torch.Tensor:
    """Deepest penetration per frame ``(B,)`` (metres, >= 0) from ``sdf`` ``(B, N)``."""
    return torch.relu(-_check_sdf(sdf).detach()).amax(dim=-1)


def contact_count(sdf: torch.Tensor, threshold: float = DEFAULT_CONTACT_THRESHOLD) -> torch.Tensor:
    """Number of points in contact per frame ``(B,)`` int64."""
    return contact_mask(sdf, threshold).sum(dim=-1)


def per_vertex_contact(sdf: torch.Tensor, threshold: float = DEFAULT_CONTACT_THRESHOLD, soft: bool = False,
                       temperature: float = 2.5e-4) -> torch.Tensor:
    """ContactOpt-style per-vertex contact values ``(B, N)`` in [0, 1].

    Hard: 1 where ``sdf < threshold`` (within 1 mm of the surface, or inside), else 0.
    Soft: ``sigmoid((threshold - sdf) / temperature)``, differentiable w.r.t. ``sdf`` (0.5 at the
    threshold; ~0.98 on the surface for the default 1 mm / 0.25 mm), for optimising toward a
    target contact map.
    """
    sdf = _check_sdf(sdf)
    if soft:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        return torch.sigmoid((threshold - sdf) / temperature)
    return contact_mask(sdf, threshold).to(sdf.dtype)


def interpenetration_volume(sdf_a: MeshSDF, sdf_b: MeshSDF, T_a_b: Optional[torch.Tensor] = None,
                            voxel_size: float = 1e-3, max_voxels: int = 4_000_000, chunk: int = 500_000) -> float:
    """Volume (m^3) of the intersection of two closed meshes by voxel counting.

    A regular grid of voxel centres covers the overlap of the two axis-aligned bounding boxes
    (in frame ``a``; the grid is fitted to that box, so box-aligned overlaps are exact); a voxel
    counts when its centre is inside both meshes (SDF sign; use ``sign="winding"`` MeshSDFs for
    unions of parts such as a hand). If the box needs more than ``max_voxels`` voxels the voxel
    size is enlarged to fit. Accuracy is ~ surface area x voxel size / 2 at worst.

    Args:
        sdf_a, sdf_b: the two meshes (each in its own frame).
        T_a_b: ``(4, 4)`` pose of mesh b in frame a (identity if None).
    """
    if voxel_size <= 0:
        raise ValueError(f"voxel_size must be > 0, got {voxel_size}")
    dtype = torch.float64
    Tab = torch.eye(4, dtype=dtype) if T_a_b is None else T_a_b.detach().to(dtype)
    if Tab.shape != (4, 4):
        raise ValueError(f"T_a_b must have shape (4, 4), got {tuple(Tab.shape)}")
    box_a = sdf_a.bounds.to(dtype)
    corners_b = torch.cartesian_prod(*sdf_b.bounds.to(dtype).T)                 # (8, 3) in b
    corners_b = se3.transform_points(Tab, corners_b)
    lo = torch.maximum(box_a[0], corners_b.min(0).values)
    hi = torch.minimum(box_a[1], corners_b.max(0).values)
    size = hi - lo
    if (size <= 0).any():
        return 0.0
    counts = torch.clamp(torch.ceil(size / voxel_size), min=1)
    if counts.prod() > max_voxels:
        counts = torch.clamp(torch.ceil(size / (size.prod() / max_voxels) ** (1 / 3)), min=1)
    counts = counts.long()
    step = size / counts
    axes = [lo[i] + (torch.arange(int(counts[i]), dtype=dtype) + 0.5) * step[i] for i in range(3)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    T_b_a = se3.invert(Tab)
    inside = 0
    with torch.no_grad():
        for s in range(0, grid.shape[0], chunk):
            g = grid[s:s + chunk]
            in_a = sdf_a.contains(g)
            if not in_a.any():
                continue
            in_b = sdf_b.contains(se3.transform_points(T_b_a, g[in_a]))
            inside += int(in_b.sum())
    return float(inside * step.prod())


def hand_object_interpenetration_volume(hand_vertices: torch.Tensor, hand_faces: torch.Tensor, object_sdf: MeshSDF,
                                        T_world_object: torch.Tensor, voxel_size: float = 1e-3) -> torch.Tensor:
    """Hand-object intersection volume per frame ``(B,)`` (m^3, float64).

    Args:
        hand_vertices: ``(B, V, 3)`` or ``(V, 3)`` posed hand mesh in the world frame
            (``HandModel.posed_mesh``); its parts may overlap, so the winding-number sign is used.
        hand_faces: ``(F, 3)``.
        object_sdf: the object's :class:`MeshSDF` (object frame).
        T_world_object: ``(B, 4, 4)`` or ``(4, 4)``.
    """
    hv = hand_vertices.detach()
    T = T_world_object.detach()
    if hv.dim() == 2:
        hv = hv[None]
    if T.dim() == 2:
        T = T[None].expand(hv.shape[0], 4, 4)
    _check_points("hand_vertices", hv)
    _check_poses("T_world_object", T, hv.shape[0])
    out = []
    for b in range(hv.shape[0]):
        # express the hand in the object frame so the object's SDF is used as built
        hand_obj = se3.transform_points(se3.invert(T[b].double()), hv[b].double())
        hand_sdf = MeshSDF(hand_obj, hand_faces, sign="winding")
        out.append(interpenetration_volume(object_sdf, hand_sdf, None, voxel_size=voxel_size))
    return torch.tensor(out, dtype=torch.float64)
