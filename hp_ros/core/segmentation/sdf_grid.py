"""Signed-distance grids of object models for the ``model`` backend's fit (:func:`_sdf_grid`,
built once per model and settings and cached: seconds each) and their warm-up (:func:`warm_sdf_grid`)."""
from __future__ import annotations

import numpy as np

# signed-distance grids per object model (building one takes ~1-3 s), keyed by grid parameters
_SDF_GRIDS: "weakref.WeakKeyDictionary" = None


def _sdf_grid(obj, pad: float, grid_size: int, device: str = "cpu"):
    """``(lo (3,), voxel, sdf (nx, ny, nz) float32, vertices (V, 3), faces (F, 3) long tensor)``
    of an object model's signed distance (:class:`hp_ros.core.sdf.MeshSDF`, negative inside)
    sampled on a grid over its bounding box grown by ``pad`` (Warp on ``device``); cached per model."""
    global _SDF_GRIDS
    import warnings
    import weakref

    import torch

    from hp_ros.core.sdf import MeshSDF

    if _SDF_GRIDS is None:
        _SDF_GRIDS = weakref.WeakKeyDictionary()
    per_obj = _SDF_GRIDS.setdefault(obj, {})
    key = (round(float(pad), 6), int(grid_size), int(obj.faces.shape[0]), str(device))
    if key not in per_obj:
        with warnings.catch_warnings():  # open meshes fall back to the winding-number sign: fine here
            warnings.simplefilter("ignore", UserWarning)
            sdf = MeshSDF(obj.vertices, obj.faces, max_dist=pad * 1.5, device=device)
        verts = sdf.vertices.numpy().astype(np.float64)
        lo, hi = verts.min(0) - pad, verts.max(0) + pad
        voxel = float((hi - lo).max() / (int(grid_size) - 1))
        n = np.ceil((hi - lo) / voxel).astype(int) + 1
        g = np.stack(np.meshgrid(*[lo[i] + voxel * np.arange(n[i]) for i in range(3)], indexing="ij"), -1)
        with torch.no_grad():
            d = sdf.query(torch.from_numpy(g.reshape(-1, 3)).float().to(sdf.device))[0].cpu().numpy().reshape(tuple(n))
        per_obj[key] = (lo, voxel, np.ascontiguousarray(d, dtype=np.float32), verts, sdf.faces)
    return per_obj[key]


def warm_sdf_grid(obj, device: str = "cpu", grid_size: int = 56, max_margin: float = 0.04) -> None:
    """Build (and cache) the signed-distance grid that
    :class:`~hp_ros.core.segmentation.model.ModelObjectMasker` uses with these settings (its
    defaults): the first fit of a model then does not pay the seconds it takes."""
    _sdf_grid(obj, 1.2 * float(max_margin), int(grid_size), str(device))
