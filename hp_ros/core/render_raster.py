"""Hard z-buffer rasterisation (no autograd) for the renderer (:mod:`hp_ros.core.render`, stage 1 of
its module docstring): back faces already culled by the caller, per face and pixel row the exact
span of pixel centres inside the face (scanline), spans expanded to pixels, the z-buffer resolved by
``scatter_reduce(amin)`` of a packed (float depth bits, face id) key. Float maths in torch on 1-D
structure-of-arrays tensors, integer bookkeeping in numpy (both the fastest here)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

__all__ = ["Fragments", "rasterize"]

_INT64_MAX = torch.iinfo(torch.int64).max


@dataclass
class Fragments:
    """Hard rasterisation result (no autograd).

    Attributes:
        face: ``(B, H, W)`` long index of the visible face (into the concatenated faces),
            -1 for background.
        zbuf: ``(B, H, W)`` depth of the visible surface, ``inf`` for background.
    """

    face: torch.Tensor
    zbuf: torch.Tensor


def _size_hw(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _gather_index(faces: torch.Tensor, B: int, V: int) -> torch.Tensor:
    """Flat index ``(k * B * N,)`` into ``(C, B * V)`` vertex data giving ``(C, k, B * N)``
    gathered data (row ``b * N + n``) for an index table ``faces`` ``(N, k)``."""
    t = faces.t()
    if B == 1:
        return t.reshape(-1)
    return (torch.arange(B).reshape(1, B, 1) * V + t[:, None, :]).reshape(-1)


def rasterize(uv: torch.Tensor, z: torch.Tensor, faces: torch.Tensor, size,
              near: float = 1e-4, face_mask: Optional[torch.Tensor] = None) -> Fragments:
    """Hard z-buffer rasterisation of projected triangles (no autograd).

    Args:
        uv: ``(B, V, 2)`` pixel coordinates of the vertices.
        z: ``(B, V)`` vertex depths.
        faces: ``(F, 3)`` long.
        size: ``S`` or ``(H, W)``.
        near: faces with any vertex at ``z <= near`` are skipped.
        face_mask: optional ``(B, F)`` bool, False = skip the face (e.g. back faces).
    Returns:
        :class:`Fragments`. A pixel is covered when its centre is inside the triangle
        (edges inclusive); the nearest covering face wins.
    """
    with torch.no_grad():
        B, V = z.shape
        uvz = torch.stack([uv[..., 0], uv[..., 1], z]).reshape(3, B * V)
        corners = uvz.index_select(1, _gather_index(faces, B, V)).reshape(3, 3, -1)
        return _rasterize_corners(corners, B, faces.shape[0], size, near,
                                  None if face_mask is None else face_mask.reshape(-1))


def _expand_ranges(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ``counts`` ``(n,)``: the owner ``i`` and the position ``0 .. counts[i] - 1`` of each
    of the ``counts.sum()`` expanded elements (numpy's repeat is much faster than torch's
    repeat_interleave)."""
    owner = np.repeat(np.arange(counts.shape[0]), counts)
    pos = np.arange(owner.shape[0]) - np.repeat(np.cumsum(counts) - counts, counts)
    return owner, pos


def _rasterize_corners(corners: torch.Tensor, B: int, Fn: int, size, near: float,
                       face_mask: Optional[torch.Tensor]) -> Fragments:
    """:func:`rasterize` on gathered face corners ``(3 [u, v, z], 3 [vertex], B * F)``
    (row ``b * F + f``); ``face_mask`` ``(B * F,)`` or None. Float math in torch on 1-D
    structure-of-arrays tensors, integer bookkeeping in numpy (both the fastest here)."""
    H, W = _size_hw(size)
    dtype = corners.dtype
    (x0, x1, x2), (y0, y1, y2), (z0, z1, z2) = corners
    xmin = torch.ceil(torch.minimum(torch.minimum(x0, x1), x2)).clamp(0, W - 1)
    xmax = torch.floor(torch.maximum(torch.maximum(x0, x1), x2)).clamp(-1, W - 1)
    ymin = torch.ceil(torch.minimum(torch.minimum(y0, y1), y2)).clamp(0, H - 1)
    ymax = torch.floor(torch.maximum(torch.maximum(y0, y1), y2)).clamp(-1, H - 1)
    area2 = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    ok = (z0 > near) & (z1 > near) & (z2 > near) & (area2.abs() > 1e-12) \
        & (xmax >= xmin) & (ymax >= ymin) & torch.isfinite(area2)
    if face_mask is not None:
        ok &= face_mask
    face_buf = torch.full((B * H * W,), _INT64_MAX, dtype=torch.int64)
    # cull first: the per-face work below runs on the faces that can cover a pixel only
    sel_np = np.flatnonzero(ok.numpy())
    if sel_np.shape[0] > 0:
        sel = torch.from_numpy(sel_np)
        _zbuffer_faces(face_buf, corners.index_select(2, sel), sel_np,
                       *(a.index_select(0, sel) for a in (xmin, xmax, ymin, ymax, area2)),
                       B, Fn, H, W, near)
    return _unpack_fragments(face_buf, B, Fn, H, W, dtype)


def _zbuffer_faces(face_buf: torch.Tensor, corners: torch.Tensor, sel_np: np.ndarray, xmin, xmax, ymin,
                   ymax, area2, B: int, Fn: int, H: int, W: int, near: float) -> None:
    """Scanline-rasterise the selected faces (corners ``(3, 3, S)``, rows ``sel_np`` ``(S,)`` into
    the ``B * F`` faces, their pixel bounds and doubled signed areas ``(S,)``) into ``face_buf``
    ``(B * H * W,)`` in place: per pixel the minimum packed (depth bits, face row) key."""
    dtype = corners.dtype
    (x0, x1, x2), (y0, y1, y2), (z0, z1, z2) = corners
    sgn = torch.sign(area2)
    # edge functions (edge i opposite vertex i) oriented so that the inside is >= 0
    a0, b0, c0 = (y1 - y2) * sgn, (x2 - x1) * sgn, (x1 * y2 - x2 * y1) * sgn
    a1, b1, c1 = (y2 - y0) * sgn, (x0 - x2) * sgn, (x2 * y0 - x0 * y2) * sgn
    a2, b2, c2 = (y0 - y1) * sgn, (x1 - x0) * sgn, (x0 * y1 - x1 * y0) * sgn
    # scanline spans: per (face, row) the exact x-range of pixel centres inside the
    # face, then one element per covered pixel (no wasted bounding-box candidates)
    rows_per_face = (ymax - ymin + 1).to(torch.int64).numpy()
    rf_np, roff = _expand_ranges(rows_per_face)
    rf = torch.from_numpy(rf_np)
    ry = ymin.index_select(0, rf) + torch.from_numpy(roff).to(dtype)  # row y (float)
    lo = xmin.index_select(0, rf)
    hi = xmax.index_select(0, rf)
    for a, b, c in ((a0, b0, c0), (a1, b1, c1), (a2, b2, c2)):
        a = a.index_select(0, rf)
        r = b.index_select(0, rf) * ry + c.index_select(0, rf)
        # a x + r >= 0: x >= -r/a (a > 0), x <= -r/a (a < 0), r >= 0 (a == 0)
        t = -r / torch.where(a == 0, torch.ones_like(a), a)
        lo = torch.where(a > 0, torch.maximum(lo, torch.ceil(t)), lo)
        hi = torch.where(a < 0, torch.minimum(hi, torch.floor(t)), hi)
        hi = torch.where((a == 0) & (r < 0), lo - 1, hi)
    span = (hi - lo + 1).clamp(min=0).to(torch.int64).numpy()
    pr_np, poff = _expand_ranges(span)
    if pr_np.shape[0] == 0:
        return
    pr = torch.from_numpy(pr_np)
    px = lo.index_select(0, pr) + torch.from_numpy(poff).to(dtype)
    py = ry.index_select(0, pr)
    sid_np = rf_np[pr_np]
    fid_np = sel_np[sid_np]
    sid = torch.from_numpy(sid_np)
    # perspective-correct depth: 1/z is affine in the pixel coordinates
    iz0, iz1, iz2 = 1.0 / z0.clamp_min(near), 1.0 / z1.clamp_min(near), \
        1.0 / z2.clamp_min(near)
    inv_a = 1.0 / (c0 + c1 + c2)
    zx = ((a0 * iz0 + a1 * iz1 + a2 * iz2) * inv_a).index_select(0, sid)
    zy = ((b0 * iz0 + b1 * iz1 + b2 * iz2) * inv_a).index_select(0, sid)
    zc = ((c0 * iz0 + c1 * iz1 + c2 * iz2) * inv_a).index_select(0, sid)
    zpix = (1.0 / (zx * px + zy * py + zc)).to(torch.float32).numpy()
    key = (zpix.view(np.int32).astype(np.int64) << 32) | fid_np
    pix = py.to(torch.int64).numpy() * W + px.to(torch.int64).numpy()
    if B > 1:
        pix += (fid_np // Fn) * (H * W)
    face_buf.scatter_reduce_(0, torch.from_numpy(pix), torch.from_numpy(key), reduce="amin")


def _unpack_fragments(face_buf: torch.Tensor, B: int, Fn: int, H: int, W: int, dtype) -> Fragments:
    """:class:`Fragments` from the packed z-buffer ``(B * H * W,)`` of :func:`_zbuffer_faces`."""
    fb = face_buf.numpy()
    hit = fb != _INT64_MAX
    fid = (fb & 0xFFFFFFFF) if B == 1 else (fb & 0xFFFFFFFF) % max(Fn, 1)
    face = np.where(hit, fid, -1)
    zbuf = torch.from_numpy((fb >> 32).astype(np.int32).view(np.float32)).to(dtype)
    zbuf = torch.where(torch.from_numpy(hit), zbuf, torch.tensor(math.inf, dtype=dtype))
    return Fragments(torch.from_numpy(face.reshape(B, H, W)), zbuf.reshape(B, H, W))
