"""Differentiable soft-silhouette, depth and RGB renderer of several meshes, in pure torch (CPU).

Design ("hard raster, soft edges"): everything discrete is decided without autograd and only the
few quantities that depend continuously on the vertices are recomputed with autograd. All heavy
steps are vectorised over structure-of-arrays 1-D tensors (contiguous elementwise ops and 1-D
``index_select`` are the fast paths of CPU torch).

1. :func:`rasterize` (no grad): back faces of closed meshes are culled; for every remaining
   face and pixel row of its bounding box the exact span of pixel centres inside the face is
   solved from the three edge functions (scanline), spans are expanded to pixels and a z-buffer
   is resolved by ``scatter_reduce(amin)`` of a packed (float depth bits, face id) key.
   Result: visible face and mesh per pixel (pixel centres at integer coordinates).
2. Interior (grad): for the visible faces, screen-space affine planes of ``1/z`` and
   ``attribute/z`` (perspective-correct interpolation) -> depth and per-vertex colours / UVs at
   the covered pixels. Gradients reach the face's projected vertices.
3. Silhouette band (grad): 4-neighbour pixel pairs with different labels (mesh or background)
   are boundary crossings. Each crossing is explained by one *contour edge* (a mesh edge whose
   two faces project to the same side of it, or a border edge) of the front mesh, found by a
   segment-intersection test bucketed by screen tiles; the part of that edge around the
   crossing becomes an *active piece* labelled with the two labels it separates. For pixels
   within ``band`` pixels of a crossing, the mask of each label is
   ``0.5 + 0.5 * sign * p(d / band)`` with ``d`` the distance to the nearest active piece
   separating that label from the pixel's own label, ``sign`` +1 inside, -1 outside, and
   ``p(t) = 1.5 t - 0.5 t^3`` (C1, exactly 1 at ``t = 1``: the soft mask equals the hard mask
   outside the band and is continuous everywhere). Gradients reach the edge's projected
   vertices; the two labels on either side of an edge sum to 1. ``band`` plays the role of
   SoftRas' sigma.

Occlusion: labels come from the z-buffer, so a finger in front of the object hides it and the
boundary between them is the finger's contour edge (moving the finger moves the object's
visible mask too).

Colour: ``rgb = sum_m soft_m * colour_m``; outside a mesh (in its soft band) its colour is the
colour of the nearest point of its own silhouette edge. Known limitation: where the nearest
piece belongs to an occluder (object pixels next to a finger) the occluded colour is unknown
and taken as 0, so the RGB image is not continuous across occlusion boundaries (the masks are).

Conventions: camera-frame (REP-103) vertices, intrinsics ``K`` of the target image (e.g.
``RoI.K``), pixel ``(u, v)`` covers ``[u-0.5, u+0.5]``. Faces with a vertex closer than
``near`` are dropped. Background depth is 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .camera import project_points

__all__ = [
    "Texture", "MeshTopology", "Fragments", "RenderOutput", "rasterize", "render",
    "SoftRenderer",
]

_INT64_MAX = torch.iinfo(torch.int64).max


@dataclass
class Texture:
    """Texture map: per-vertex UVs ``(V, 2)`` in [0, 1] (v up, as OBJ/trimesh) and an image
    ``(3, Ht, Wt)`` float in [0, 1]."""

    uv: torch.Tensor
    image: torch.Tensor


Colors = Union[None, torch.Tensor, Texture]


class MeshTopology:
    """Unique edges of a triangle mesh and the third vertices of their adjacent faces.

    Attributes:
        edges: ``(E, 2)`` long vertex indices.
        opposite: ``(E, 2)`` long third vertex of the first two adjacent faces, ``-1`` if the
            edge has a single face (open border).
        always_contour: ``(E,)`` bool, border or non-manifold edges (always silhouette
            candidates).
        closed: the mesh is closed (every edge has two faces) and consistently wound, so its
            back faces are hidden and the rasteriser may skip them.
        face_component: ``(F,)`` long connected component of each face (the outward
            orientation is decided per component, e.g. per hand link body).
        n_components: number of components.
    """

    def __init__(self, faces: torch.Tensor):
        f = faces.detach().cpu().numpy().astype(np.int64)
        if f.ndim != 2 or f.shape[1] != 3:
            raise ValueError(f"faces must have shape (F, 3), got {f.shape}")
        # the three edges of each face with the opposite vertex
        e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]], axis=0)
        opp = np.concatenate([f[:, 2], f[:, 0], f[:, 1]], axis=0)
        e.sort(axis=1)
        uniq, inv, counts = np.unique(e, axis=0, return_inverse=True, return_counts=True)
        inv = inv.reshape(-1)
        order = np.argsort(inv, kind="stable")
        first = np.searchsorted(inv[order], np.arange(len(uniq)))
        o1 = opp[order[first]]
        second = np.minimum(first + 1, len(order) - 1)
        o2 = np.where(counts >= 2, opp[order[second]], -1)
        # closed and consistently wound: every edge has two faces traversing it in opposite
        # directions; then back faces are always hidden and can be culled
        fwd = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]], axis=0)
        directed = np.unique(fwd, axis=0).shape[0] == fwd.shape[0]
        self.closed = bool(len(f)) and bool(np.all(counts == 2)) and directed
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        nv = int(f.max()) + 1 if len(f) else 0
        graph = coo_matrix((np.ones(len(uniq)), (uniq[:, 0], uniq[:, 1])), shape=(nv, nv))
        self.n_components, vcomp = connected_components(graph, directed=False)
        self.face_component = torch.from_numpy(vcomp[f[:, 0]].astype(np.int64))
        self.faces_ref = torch.from_numpy(f.copy())
        self.edges = torch.from_numpy(uniq)
        self.opposite = torch.from_numpy(np.stack([o1, o2], axis=1))
        self.always_contour = torch.from_numpy(counts != 2)


_TOPOLOGY_CACHE: dict = {}
_TOPOLOGY_BY_PTR: dict = {}


def _topology(faces: torch.Tensor) -> MeshTopology:
    """Cached :class:`MeshTopology` keyed by the face array's contents (with a fast path for
    the very same, unmodified tensor)."""
    ptr_key = (faces.data_ptr(), tuple(faces.shape), faces.stride(), faces._version)
    topo = _TOPOLOGY_BY_PTR.get(ptr_key)
    # contents check: a freed pointer may have been reused by another face array
    if topo is not None and faces.device.type == "cpu" and torch.equal(topo.faces_ref, faces):
        return topo
    f = faces.detach().cpu().contiguous()
    key = (tuple(f.shape), hash(f.numpy().tobytes()))
    topo = _TOPOLOGY_CACHE.get(key)
    if topo is None:
        if len(_TOPOLOGY_CACHE) > 64:
            _TOPOLOGY_CACHE.clear()
        topo = MeshTopology(f)
        _TOPOLOGY_CACHE[key] = topo
    if len(_TOPOLOGY_BY_PTR) > 64:
        _TOPOLOGY_BY_PTR.clear()
    _TOPOLOGY_BY_PTR[ptr_key] = topo
    return topo


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


@dataclass
class RenderOutput:
    """Renderer output.

    Attributes:
        soft_masks: ``(B, M, H, W)`` in [0, 1], differentiable, one per mesh, with occlusion.
        hard_masks: ``(B, M, H, W)`` bool visible pixels per mesh (z-buffer).
        depth: ``(B, H, W)`` depth of the visible surface (differentiable), 0 on background.
        rgb: ``(B, 3, H, W)`` composited colour of the meshes given colours (others and the
            background contribute black), soft at the silhouette edges; None if no colours.
        instance: ``(B, H, W)`` long visible mesh index, -1 background.
        face: ``(B, H, W)`` long visible face index in the concatenated faces, -1 background.
    """

    soft_masks: torch.Tensor
    hard_masks: torch.Tensor
    depth: torch.Tensor
    rgb: Optional[torch.Tensor]
    instance: torch.Tensor
    face: torch.Tensor


def _size_hw(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


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
    H, W = _size_hw(size)
    with torch.no_grad():
        B, Fn = uv.shape[0], faces.shape[0]
        # structure-of-arrays (B, F) tensors: contiguous elementwise ops are much faster on
        # the CPU than broadcasting over small inner dimensions
        us, vs = uv[..., 0].contiguous(), uv[..., 1].contiguous()
        f0, f1, f2 = faces[:, 0], faces[:, 1], faces[:, 2]
        x0, x1, x2 = us.index_select(1, f0), us.index_select(1, f1), us.index_select(1, f2)
        y0, y1, y2 = vs.index_select(1, f0), vs.index_select(1, f1), vs.index_select(1, f2)
        z0, z1, z2 = z.index_select(1, f0), z.index_select(1, f1), z.index_select(1, f2)
        area2 = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        xmin = torch.ceil(torch.minimum(torch.minimum(x0, x1), x2)).clamp(0, W - 1)
        xmax = torch.floor(torch.maximum(torch.maximum(x0, x1), x2)).clamp(-1, W - 1)
        ymin = torch.ceil(torch.minimum(torch.minimum(y0, y1), y2)).clamp(0, H - 1)
        ymax = torch.floor(torch.maximum(torch.maximum(y0, y1), y2)).clamp(-1, H - 1)
        ok = (z0 > near) & (z1 > near) & (z2 > near) & (area2.abs() > 1e-12) \
            & (xmax >= xmin) & (ymax >= ymin) & torch.isfinite(area2)
        if face_mask is not None:
            ok = ok & face_mask
        face_buf = torch.full((B * H * W,), _INT64_MAX, dtype=torch.int64)
        # scanline spans: per (face, row) the exact x-range of pixel centres inside the face,
        # then one element per covered pixel (no wasted bounding-box candidates)
        rows_per_face = torch.where(ok, (ymax - ymin + 1).long(), 0).reshape(-1)
        nrows = int(rows_per_face.sum())
        if nrows > 0:
            sgn = torch.sign(area2)
            # edge functions (edge i opposite vertex i) oriented so that the inside is >= 0
            a0, b0, c0 = (y1 - y2) * sgn, (x2 - x1) * sgn, (x1 * y2 - x2 * y1) * sgn
            a1, b1, c1 = (y2 - y0) * sgn, (x0 - x2) * sgn, (x2 * y0 - x0 * y2) * sgn
            a2, b2, c2 = (y0 - y1) * sgn, (x1 - x0) * sgn, (x0 * y1 - x1 * y0) * sgn
            rf = torch.repeat_interleave(torch.arange(B * Fn), rows_per_face)
            roff = torch.arange(nrows) - (torch.cumsum(rows_per_face, 0)
                                          - rows_per_face).index_select(0, rf)
            ry = ymin.reshape(-1).index_select(0, rf) + roff.to(uv.dtype)  # row y (float)
            lo = xmin.reshape(-1).index_select(0, rf)
            hi = xmax.reshape(-1).index_select(0, rf)
            for a, b, c in ((a0, b0, c0), (a1, b1, c1), (a2, b2, c2)):
                a = a.reshape(-1).index_select(0, rf)
                r = b.reshape(-1).index_select(0, rf) * ry + c.reshape(-1).index_select(0, rf)
                # a x + r >= 0: x >= -r/a (a > 0), x <= -r/a (a < 0), r >= 0 (a == 0)
                t = -r / torch.where(a == 0, torch.ones_like(a), a)
                lo = torch.where(a > 0, torch.maximum(lo, torch.ceil(t)), lo)
                hi = torch.where(a < 0, torch.minimum(hi, torch.floor(t)), hi)
                hi = torch.where((a == 0) & (r < 0), lo - 1, hi)
            span = (hi - lo + 1).clamp(min=0).long()
            n = int(span.sum())
            if n > 0:
                pr = torch.repeat_interleave(torch.arange(nrows), span)
                px = lo.index_select(0, pr) + (torch.arange(n) - (torch.cumsum(span, 0) - span)
                                               .index_select(0, pr)).to(uv.dtype)
                py = ry.index_select(0, pr)
                fid = rf.index_select(0, pr)
                # perspective-correct depth: 1/z is affine in the pixel coordinates
                iz0, iz1, iz2 = 1.0 / z0.clamp_min(near), 1.0 / z1.clamp_min(near), \
                    1.0 / z2.clamp_min(near)
                inv_a = 1.0 / (c0 + c1 + c2)
                zx = ((a0 * iz0 + a1 * iz1 + a2 * iz2) * inv_a).reshape(-1).index_select(0, fid)
                zy = ((b0 * iz0 + b1 * iz1 + b2 * iz2) * inv_a).reshape(-1).index_select(0, fid)
                zc = ((c0 * iz0 + c1 * iz1 + c2 * iz2) * inv_a).reshape(-1).index_select(0, fid)
                zpix = 1.0 / (zx * px + zy * py + zc)
                key = (zpix.to(torch.float32).view(torch.int32).to(torch.int64) << 32) | fid
                pix = (fid // Fn) * (H * W) + py.long() * W + px.long()
                face_buf.scatter_reduce_(0, pix, key, reduce="amin")
        hit = face_buf != _INT64_MAX
        face = torch.where(hit, (face_buf & 0xFFFFFFFF) % max(Fn, 1), -1)
        zbits = (face_buf >> 32).to(torch.int32)
        zbuf = torch.where(hit, zbits.view(torch.float32).to(uv.dtype),
                           torch.tensor(math.inf, dtype=uv.dtype))
        return Fragments(face.reshape(B, H, W), zbuf.reshape(B, H, W))


def _tile_pairs(lo_x, lo_y, hi_x, hi_y, item_b, qx, qy, qb, H: int, W: int, tile: int):
    """Candidate (query, item) index pairs: items whose box ``[lo, hi]`` (pixels, ``(n,)``
    each) touches the screen tile of the integer query pixel ``(qx, qy)`` ``(q,)`` of the same
    batch element. Vectorised bucket join: expand items over their tiles, sort, searchsorted."""
    ntx, nty = (W + tile - 1) // tile, (H + tile - 1) // tile
    tx0, tx1 = torch.floor(lo_x / tile).long(), torch.floor(hi_x / tile).long()
    ty0, ty1 = torch.floor(lo_y / tile).long(), torch.floor(hi_y / tile).long()
    offscreen = (tx1 < 0) | (tx0 >= ntx) | (ty1 < 0) | (ty0 >= nty)
    tx0, tx1 = tx0.clamp(0, ntx - 1), tx1.clamp(0, ntx - 1)
    ty0, ty1 = ty0.clamp(0, nty - 1), ty1.clamp(0, nty - 1)
    tw = tx1 - tx0 + 1
    cnt = torch.where(offscreen, 0, tw * (ty1 - ty0 + 1))
    item = torch.repeat_interleave(torch.arange(cnt.numel()), cnt)
    off = torch.arange(item.numel()) - (torch.cumsum(cnt, 0) - cnt)[item]
    twi = tw[item]
    ty = off // twi
    tx = tx0[item] + (off - ty * twi)
    ty = ty + ty0[item]
    key, order = torch.sort((item_b[item] * nty + ty) * ntx + tx)
    item = item[order]
    qkey = (qb * nty + qy // tile) * ntx + qx // tile
    start = torch.searchsorted(key, qkey, right=False)
    qcnt = torch.searchsorted(key, qkey, right=True) - start
    qi = torch.repeat_interleave(torch.arange(qkey.numel()), qcnt)
    off = torch.arange(qi.numel()) - (torch.cumsum(qcnt, 0) - qcnt)[qi]
    return qi, item[start[qi] + off]


def _poly(t: torch.Tensor) -> torch.Tensor:
    """C1 ramp on [0, 1]: p(0) = 0, p(1) = 1, p'(1) = 0; 1 beyond."""
    t = t.clamp(max=1.0)
    return 1.5 * t - 0.5 * t * t * t


def _segment_distance(px, py, ax, ay, bx, by):
    """Distance ``(n,)`` of points ``p`` to segments ``a b`` (coordinates ``(n,)`` each) and the
    segment parameter ``t`` of the closest point."""
    dx, dy = bx - ax, by - ay
    t = (((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy).clamp_min(1e-20)).clamp(0, 1)
    ex, ey = ax + t * dx - px, ay + t * dy - py
    return torch.sqrt(ex * ex + ey * ey + 1e-20), t


@dataclass
class _Band:
    """Soft-band records (no autograd): for each record, the pixel, the mesh whose mask it sets,
    the sign (+1 inside) and the active contour-edge piece it measures its distance to."""

    b: torch.Tensor  # (R,) batch
    y: torch.Tensor  # (R,)
    x: torch.Tensor  # (R,)
    label: torch.Tensor  # (R,) mesh index
    sign: torch.Tensor  # (R,) +1 / -1
    edge: torch.Tensor  # (R,) global edge index
    t0: torch.Tensor  # (R,) piece start on the edge (edge parameter), no grad
    t1: torch.Tensor  # (R,) piece end
    seg0: torch.Tensor  # (R, 4) pixel pair (fx, fy, kx, ky) of the crossing that ends the
    seg1: torch.Tensor  # (R, 4) piece at t0 / t1 (to recompute t0 / t1 with autograd)


def _find_band(us, vs, z, label, zbuf, edges, opposite, always, edge_inst, M: int,
               band: float, near: float, tile: int, piece: float) -> _Band:
    """Locate silhouette crossings, explain each by a contour edge and collect the band pixels
    with their nearest active edge piece per label. No autograd; ``us, vs, z`` are ``(B, V)``.
    See the module docstring."""
    B, H, W = label.shape
    dtype = us.dtype
    # --- crossings: 4-neighbour pixel pairs with different labels ----------------------------
    pb, px, py, qx, qy = [], [], [], [], []
    for dy, dx in ((0, 1), (1, 0)):
        idx = (label[:, : H - dy, : W - dx] != label[:, dy:, dx:]).nonzero()
        pb.append(idx[:, 0])
        py.append(idx[:, 1])
        px.append(idx[:, 2])
        qy.append(idx[:, 1] + dy)
        qx.append(idx[:, 2] + dx)
    p_b, p_x, p_y, q_x, q_y = (torch.cat(a) for a in (pb, px, py, qx, qy))
    flat_p = (p_b * H + p_y) * W + p_x
    flat_q = (p_b * H + q_y) * W + q_x
    zflat, lflat = zbuf.reshape(-1), label.reshape(-1)
    p_front = zflat[flat_p] <= zflat[flat_q]
    f_x, f_y = torch.where(p_front, p_x, q_x), torch.where(p_front, p_y, q_y)
    k_x, k_y = torch.where(p_front, q_x, p_x), torch.where(p_front, q_y, p_y)
    lab_p, lab_q = lflat[flat_p], lflat[flat_q]
    lab_f = torch.where(p_front, lab_p, lab_q)
    lab_k = torch.where(p_front, lab_q, lab_p)

    # --- contour edges: border/non-manifold, or both adjacent faces on one side in the image --
    Eall = edges.shape[0]
    i0, i1 = edges[:, 0], edges[:, 1]
    ax, ay = us.index_select(1, i0), vs.index_select(1, i0)  # (B, E)
    bx, by = us.index_select(1, i1), vs.index_select(1, i1)
    dxe, dye = bx - ax, by - ay

    def side(o):
        o = o.clamp(min=0)
        return dxe * (vs.index_select(1, o) - ay) - dye * (us.index_select(1, o) - ax)

    in_front = (z.index_select(1, i0) > near) & (z.index_select(1, i1) > near)
    contour = (always[None] | (side(opposite[:, 0]) * side(opposite[:, 1]) >= 0)) & in_front
    cb, ce = contour.nonzero(as_tuple=True)
    cax, cay, cbx, cby = ax[cb, ce], ay[cb, ce], bx[cb, ce], by[cb, ce]
    qi, ci = _tile_pairs(torch.minimum(cax, cbx) - 1, torch.minimum(cay, cby) - 1,
                         torch.maximum(cax, cbx) + 1, torch.maximum(cay, cby) + 1, cb,
                         f_x, f_y, p_b, H, W, tile)
    inst_c = edge_inst[ce[ci]]
    prio = torch.where(inst_c == lab_f[qi], 0, torch.where(inst_c == lab_k[qi], 1, 2))
    # segment (front pixel centre -> other pixel centre) against edge (a -> b)
    P0x, P0y = f_x[qi].to(dtype), f_y[qi].to(dtype)
    rx, ry = (k_x[qi] - f_x[qi]).to(dtype), (k_y[qi] - f_y[qi]).to(dtype)
    Ax, Ay = cax[ci], cay[ci]
    sx, sy = cbx[ci] - Ax, cby[ci] - Ay
    den = rx * sy - ry * sx
    good = den.abs() > 1e-12
    den = torch.where(good, den, torch.ones_like(den))
    APx, APy = Ax - P0x, Ay - P0y
    t = (APx * sy - APy * sx) / den
    u = (APx * ry - APy * rx) / den
    hit = ((prio < 2) & good & (t >= 0) & (t <= 1) & (u >= 0) & (u <= 1)).nonzero()[:, 0]
    qi, ci, prio, t, u = qi[hit], ci[hit], prio[hit], t[hit], u[hit]
    # the front mesh's last crossing (largest t); else the other mesh's first crossing
    score = torch.where(prio == 0, 1.0 - t, t).clamp(0, 1).to(torch.float32)
    key = (prio << 31) | score.view(torch.int32).to(torch.int64)
    npairs = p_b.shape[0]
    best = torch.full((npairs,), _INT64_MAX, dtype=torch.int64)
    best.scatter_reduce_(0, qi, key, reduce="amin")
    win = (key == best[qi]).nonzero()[:, 0]
    pick = torch.full((npairs,), -1, dtype=torch.long)
    pick.scatter_reduce_(0, qi[win], win, reduce="amax")
    has = (pick >= 0).nonzero()[:, 0]
    # active pieces, one per explained crossing: the part of the edge within `piece` pixels of
    # the crossing, labelled with the two labels it separates there (a long edge can border
    # different labels along its length); pieces of one edge with the same labels are merged
    sel = pick[has]
    csel = ci[sel]
    half = piece / torch.sqrt((cbx[csel] - cax[csel]) ** 2 + (cby[csel] - cay[csel]) ** 2
                              ).clamp_min(1e-9)
    L = M + 1
    pkey = ((cb[csel] * Eall + ce[csel]) * L + torch.minimum(lab_f, lab_k)[has]) * L \
        + torch.maximum(lab_f, lab_k)[has]
    pkey, pinv = torch.unique(pkey, return_inverse=True)
    c_t0 = (u[sel] - half).clamp(0.0, 1.0)
    c_t1 = (u[sel] + half).clamp(0.0, 1.0)
    ent_t0 = torch.full((pkey.numel(),), 2.0, dtype=dtype).scatter_reduce(
        0, pinv, c_t0, reduce="amin")
    ent_t1 = torch.full((pkey.numel(),), -1.0, dtype=dtype).scatter_reduce(
        0, pinv, c_t1, reduce="amax")
    # which crossing defines each end (its pixel pair lets the renderer redo it with grad)
    cq = qi[sel]
    seg = torch.stack([f_x[cq], f_y[cq], k_x[cq], k_y[cq]], 1)
    ar = torch.arange(pinv.numel())
    j0 = torch.full((pkey.numel(),), -1, dtype=torch.long).scatter_reduce(
        0, pinv, torch.where(c_t0 == ent_t0[pinv], ar, -1), reduce="amax")
    j1 = torch.full((pkey.numel(),), -1, dtype=torch.long).scatter_reduce(
        0, pinv, torch.where(c_t1 == ent_t1[pinv], ar, -1), reduce="amax")
    ent_seg0, ent_seg1 = seg[j0], seg[j1]
    ent_lb = pkey % L
    ent_la = (pkey // L) % L
    ent_be = pkey // (L * L)
    ent_b, ent_e = ent_be // Eall, ent_be % Eall
    e0x, e0y, e1x, e1y = ax[ent_b, ent_e], ay[ent_b, ent_e], bx[ent_b, ent_e], by[ent_b, ent_e]
    pax, pay = e0x + ent_t0 * (e1x - e0x), e0y + ent_t0 * (e1y - e0y)
    pbx, pby = e0x + ent_t1 * (e1x - e0x), e0y + ent_t1 * (e1y - e0y)

    # --- band pixels: within `band` (Chebyshev) of a crossing ---------------------------------
    R = int(math.ceil(band))
    seed = torch.zeros(B * H * W, dtype=torch.float32)
    seed[flat_p] = 1.0
    seed[flat_q] = 1.0
    seed = seed.reshape(B, 1, H, W)
    seed = torch.nn.functional.max_pool2d(seed, (1, 2 * R + 1), stride=1, padding=(0, R))
    seed = torch.nn.functional.max_pool2d(seed, (2 * R + 1, 1), stride=1, padding=(R, 0))
    nb, ny, nx = (seed[:, 0] > 0).nonzero(as_tuple=True)
    n_lab = label[nb, ny, nx]
    pi, ei = _tile_pairs(torch.minimum(pax, pbx) - band, torch.minimum(pay, pby) - band,
                         torch.maximum(pax, pbx) + band, torch.maximum(pay, pby) + band, ent_b,
                         nx, ny, nb, H, W, tile)
    v = n_lab[pi]
    la_, lb_ = ent_la[ei], ent_lb[ei]
    d, _ = _segment_distance(nx[pi].to(dtype), ny[pi].to(dtype), pax[ei], pay[ei], pbx[ei],
                             pby[ei])
    rel = (((la_ == v) | (lb_ == v)) & (d < band)).nonzero()[:, 0]
    pi, ei, v, d = pi[rel], ei[rel], v[rel], d[rel]
    other = la_[rel] + lb_[rel] - v
    # records: the pixel's own label (inside, +1) and the label across the edge (outside, -1)
    rec_l = torch.cat([v, other])
    fg = (rec_l < M).nonzero()[:, 0]
    rec_l = rec_l[fg]
    rec_p = torch.cat([pi, pi])[fg]
    rec_e = torch.cat([ei, ei])[fg]
    rec_s = torch.cat([torch.ones_like(pi), -torch.ones_like(pi)])[fg]
    rec_d = torch.cat([d, d])[fg]
    # nearest piece per (pixel, label)
    slot = rec_p * M + rec_l
    dkey = (rec_d.to(torch.float32).view(torch.int32).to(torch.int64) << 32) \
        | torch.arange(rec_p.numel(), dtype=torch.int64)
    sbest = torch.full((nb.numel() * M,), _INT64_MAX, dtype=torch.int64)
    sbest.scatter_reduce_(0, slot, dkey, reduce="amin")
    w_slot = (sbest != _INT64_MAX).nonzero()[:, 0]
    wrec = sbest[w_slot] & 0xFFFFFFFF
    w_pix = w_slot // M
    went = rec_e[wrec]
    return _Band(nb[w_pix], ny[w_pix], nx[w_pix], w_slot % M, rec_s[wrec], ent_e[went],
                 ent_t0[went], ent_t1[went], ent_seg0[went], ent_seg1[went])


def _piece_end(seg, t_nograd, ax, ay, bx, by, offset: float) -> torch.Tensor:
    """Edge parameter ``(R,)`` of a piece end: where the edge ``a b`` crosses the pixel-pair
    segment ``seg`` ``(R, 4)``, shifted by ``offset`` pixels along the edge, clamped to
    [0, 1]. Differentiable w.r.t. the edge; ends clamped in the no-grad pass stay clamped."""
    fx, fy = seg[:, 0].to(ax.dtype), seg[:, 1].to(ax.dtype)
    rx, ry = seg[:, 2].to(ax.dtype) - fx, seg[:, 3].to(ax.dtype) - fy
    sx, sy = bx - ax, by - ay
    den = rx * sy - ry * sx
    den = torch.where(den.abs() > 1e-12, den, torch.ones_like(den))
    u = ((ax - fx) * ry - (ay - fy) * rx) / den
    t = (u + offset / torch.sqrt(sx * sx + sy * sy).clamp_min(1e-9)).clamp(0.0, 1.0)
    clamped = (t_nograd <= 0.0) | (t_nograd >= 1.0)
    return torch.where(clamped, t_nograd, t)


def _face_planes(us, vs, z, faces, values: Optional[torch.Tensor], near: float) -> torch.Tensor:
    """Per-face screen-space affine functions of ``1/z`` and ``values/z`` (perspective-correct
    interpolation: both are affine in the pixel coordinates within a face).

    Args:
        us, vs, z: ``(B, V)`` pixel coordinates and depth; faces ``(F, 3)``;
        values: None or ``(C, B, V)`` per-vertex channels.
    Returns:
        ``(3 Q, B F)`` with ``Q = 1 + C`` quantities: rows ``[cx (Q), cy (Q), c0 (Q)]`` so that
        a quantity equals ``cx * x + cy * y + c0`` at pixel ``(x, y)`` of the face.
    """
    B, Fn = us.shape[0], faces.shape[0]
    cols = [faces[:, k] for k in range(3)]
    x0, x1, x2 = (us.index_select(1, f).reshape(1, -1) for f in cols)
    y0, y1, y2 = (vs.index_select(1, f).reshape(1, -1) for f in cols)
    # screen barycentric of vertex i at p: (a_i x + b_i y + c_i) / area2
    a0, b0, c0 = y1 - y2, x2 - x1, x1 * y2 - x2 * y1
    a1, b1, c1 = y2 - y0, x0 - x2, x2 * y0 - x0 * y2
    a2, b2, c2 = y0 - y1, x1 - x0, x0 * y1 - x1 * y0
    area2 = c0 + c1 + c2
    inv_a = 1.0 / torch.where(area2.abs() > 1e-12, area2, torch.ones_like(area2))
    qs = []
    for f in cols:
        zi = z.index_select(1, f).reshape(1, -1)
        izi = 1.0 / torch.where(zi > near, zi, torch.ones_like(zi))  # (1, BF)
        if values is None:
            qs.append(izi)
        else:
            qs.append(torch.cat([izi, values.index_select(2, f).reshape(values.shape[0], -1)
                                 * izi], 0))
    q0, q1, q2 = qs  # (Q, BF) each
    cx = (a0 * q0 + a1 * q1 + a2 * q2) * inv_a
    cy = (b0 * q0 + b1 * q1 + b2 * q2) * inv_a
    cc = (c0 * q0 + c1 * q1 + c2 * q2) * inv_a
    return torch.cat([cx, cy, cc], 0)


def render(meshes: Sequence[tuple[torch.Tensor, torch.Tensor]], K: torch.Tensor, size,
           colors: Optional[Sequence[Colors]] = None, band: float = 2.0,
           near: float = 1e-4, tile: int = 8, piece: Optional[float] = None,
           cull_backfaces: bool = True) -> RenderOutput:
    """Render soft/hard masks, depth and colour of meshes with mutual occlusion.

    Args:
        meshes: M pairs ``(verts (B, V_m, 3) camera frame, faces (F_m, 3) long)``.
        K: intrinsics ``(3, 3)`` or ``(B, 3, 3)`` of the target image (e.g. ``RoI.K``).
        size: ``S`` or ``(H, W)``.
        colors: optional, one per mesh: None, per-vertex colours ``(V_m, 3)`` /
            ``(B, V_m, 3)`` in [0, 1], or a :class:`Texture`.
        band: half-width in pixels of the soft silhouette band (the "sigma").
        near: near-plane depth; faces closer than this are dropped.
        tile: screen tile size used to pair edges with pixels.
        piece: half-length in pixels of the part of a contour edge activated by one crossing.
        cull_backfaces: skip back faces of closed, consistently wound meshes (exact: they
            are always hidden; open meshes are never culled).
    Returns:
        :class:`RenderOutput`.
    """
    if len(meshes) == 0:
        raise ValueError("render needs at least one mesh")
    if band <= 0:
        raise ValueError(f"band must be positive, got {band}")
    piece = band + 1.0 if piece is None else float(piece)
    H, W = _size_hw(size)
    M = len(meshes)
    B = meshes[0][0].shape[0]
    dtype = meshes[0][0].dtype
    if colors is not None and len(colors) != M:
        raise ValueError(f"colors must have one entry per mesh ({M}), got {len(colors)}")
    verts_l, faces_l, edges_l, opp_l, always_l, finst_l, einst_l = [], [], [], [], [], [], []
    vstart, closed_l, topos = [0], [], []
    for m, (v, f) in enumerate(meshes):
        if v.dim() != 3 or v.shape[-1] != 3 or v.shape[0] != B:
            raise ValueError(f"mesh {m}: verts must be (B={B}, V, 3), got {tuple(v.shape)}")
        if f.dim() != 2 or f.shape[-1] != 3:
            raise ValueError(f"mesh {m}: faces must be (F, 3), got {tuple(f.shape)}")
        if f.numel() and (int(f.min()) < 0 or int(f.max()) >= v.shape[1]):
            raise ValueError(f"mesh {m}: face indices out of range [0, {v.shape[1]})")
        topo = _topology(f)
        topos.append(topo)
        off = vstart[-1]
        verts_l.append(v.to(dtype))
        faces_l.append(f.long() + off)
        edges_l.append(topo.edges + off)
        opp_l.append(torch.where(topo.opposite >= 0, topo.opposite + off, -1))
        always_l.append(topo.always_contour)
        closed_l.append(topo.closed and cull_backfaces)
        finst_l.append(torch.full((f.shape[0],), m, dtype=torch.long))
        einst_l.append(torch.full((topo.edges.shape[0],), m, dtype=torch.long))
        vstart.append(off + v.shape[1])
    verts = torch.cat(verts_l, 1)
    faces = torch.cat(faces_l, 0)
    edges = torch.cat(edges_l, 0)
    face_inst = torch.cat(finst_l)
    Fn = faces.shape[0]
    uv, z = project_points(torch.as_tensor(K).to(dtype), verts)  # with grad
    us, vs = uv[..., 0], uv[..., 1]

    with torch.no_grad():
        usd, vsd, zd = us.detach().contiguous(), vs.detach().contiguous(), z.detach()
        face_mask = None
        if any(closed_l):
            # back faces of closed meshes never show: skip them (outward orientation from the
            # sign of the signed volume, so inside-out meshes work too)
            vd = verts.detach()
            X, Y, Z = (vd[..., k].contiguous() for k in range(3))
            c0, c1, c2 = faces[:, 0], faces[:, 1], faces[:, 2]
            x0, x1, x2 = X.index_select(1, c0), X.index_select(1, c1), X.index_select(1, c2)
            y0, y1, y2 = Y.index_select(1, c0), Y.index_select(1, c1), Y.index_select(1, c2)
            z0, z1, z2 = Z.index_select(1, c0), Z.index_select(1, c1), Z.index_select(1, c2)
            # det(p0, p1, p2) = ((p1 - p0) x (p2 - p0)) . p0, (B, F)
            facing = x0 * (y1 * z2 - z1 * y2) - y0 * (x1 * z2 - z1 * x2) \
                + z0 * (x1 * y2 - y1 * x2)
            face_mask = torch.ones(B, Fn, dtype=torch.bool)
            f0 = 0
            for m, (_, f) in enumerate(meshes):
                f1 = f0 + f.shape[0]
                if closed_l[m]:
                    # 6 x signed volume per connected component (e.g. per hand link body)
                    topo = topos[m]
                    comp = topo.face_component
                    vol = torch.zeros(B, topo.n_components, dtype=facing.dtype).index_add_(
                        1, comp, facing[:, f0:f1])
                    face_mask[:, f0:f1] = facing[:, f0:f1] * torch.sign(
                        vol.index_select(1, comp)) < 0
                f0 = f1
        uvd = torch.stack([usd, vsd], -1)
        frag = rasterize(uvd, zd, faces, (H, W), near=near, face_mask=face_mask)
        label = torch.where(frag.face >= 0, face_inst[frag.face.clamp(min=0)], M)  # (B,H,W)
        bd = _find_band(usd, vsd, zd, label, frag.zbuf, edges, torch.cat(opp_l, 0),
                        torch.cat(always_l), torch.cat(einst_l), M, band, near, tile, piece)
        # covered pixels and the column of their face in the per-face tables
        row = torch.where(frag.face >= 0, torch.arange(B).reshape(B, 1, 1) * Fn + frag.face,
                          -1).reshape(-1)
        cov = (row >= 0).nonzero()[:, 0]
        cov_row = row[cov]
        cov_x = (cov % W).to(dtype)
        cy_pix = ((cov // W) % H).to(dtype)

    # --- soft masks: hard one-hot, band pixels replaced by the edge-distance ramp ------------
    hard_masks = label[:, None] == torch.arange(M).reshape(1, M, 1, 1)
    i0, i1 = edges[bd.edge, 0], edges[bd.edge, 1]
    Vt = us.shape[1]
    g0, g1 = bd.b * Vt + i0, bd.b * Vt + i1
    usf, vsf = us.reshape(-1), vs.reshape(-1)
    e0x, e0y = usf.index_select(0, g0), vsf.index_select(0, g0)
    e1x, e1y = usf.index_select(0, g1), vsf.index_select(0, g1)
    # piece ends: crossing parameter -/+ piece length, recomputed with autograd so that the
    # piece follows the geometry (clamped ends sit on the edge's vertices)
    t0 = _piece_end(bd.seg0, bd.t0, e0x, e0y, e1x, e1y, -piece)
    t1 = _piece_end(bd.seg1, bd.t1, e0x, e0y, e1x, e1y, piece)
    pax, pay = e0x + t0 * (e1x - e0x), e0y + t0 * (e1y - e0y)
    pbx, pby = e0x + t1 * (e1x - e0x), e0y + t1 * (e1y - e0y)
    dist, tpar = _segment_distance(bd.x.to(dtype), bd.y.to(dtype), pax, pay, pbx, pby)
    sval = 0.5 + 0.5 * bd.sign.to(dtype) * _poly(dist / band)
    flat = ((bd.b * M + bd.label) * H + bd.y) * W + bd.x
    soft = hard_masks.to(dtype).reshape(-1).index_copy(0, flat, sval).reshape(B, M, H, W)

    # --- interior: perspective-correct interpolation from per-face affine planes ---------------
    kinds = [None if colors is None or c is None else
             ("tex" if isinstance(c, Texture) else "rgb") for c in (colors or [None] * M)]
    values = None
    if any(k is not None for k in kinds):
        per_mesh = []
        for m, kind in enumerate(kinds):
            nv = vstart[m + 1] - vstart[m]
            if kind is None:
                per_mesh.append(torch.zeros(B, nv, 3, dtype=dtype))
            elif kind == "tex":
                uvt = colors[m].uv.to(dtype)
                per_mesh.append(torch.cat([uvt, torch.zeros_like(uvt[:, :1])], -1)
                                .expand(B, -1, -1))
            else:
                c = torch.as_tensor(colors[m]).to(dtype)
                if c.shape[-2:] != (nv, 3):
                    raise ValueError(f"colors[{m}] must be ({nv}, 3), got {tuple(c.shape)}")
                per_mesh.append(c if c.dim() == 3 else c.expand(B, -1, -1))
        values = torch.cat(per_mesh, 1).permute(2, 0, 1).contiguous()  # (3, B, V)
    # planes of the visible faces only (batch folded into a face list of the first element)
    vis, vis_inv = torch.unique(cov_row, return_inverse=True)
    vb, vf = vis // Fn, vis % Fn
    if B == 1:
        planes = _face_planes(us, vs, z, faces.index_select(0, vf), values, near)
    else:
        # per-(batch, face) rows: gather vertex data into a batch of one
        Vt = us.shape[1]
        fidx = (vb[:, None] * Vt + faces.index_select(0, vf)).reshape(-1, 3)
        planes = _face_planes(us.reshape(1, -1), vs.reshape(1, -1), z.reshape(1, -1), fidx,
                              None if values is None else values.reshape(values.shape[0], 1, -1),
                              near)
    cx, cy, cc = planes.index_select(1, vis_inv).chunk(3, 0)
    q = cx * cov_x + cy * cy_pix + cc  # (Q, P): 1/z, value/z
    invz, num = q.split([1, q.shape[0] - 1], 0)
    invz = invz[0]
    depth = torch.zeros(B * H * W, dtype=dtype).index_copy(0, cov, 1.0 / invz).reshape(B, H, W)

    rgb = None
    if values is not None:
        attr = torch.zeros(3, B * H * W, dtype=dtype).index_copy(1, cov, num / invz)
        rgb = torch.zeros(B, 3, H, W, dtype=dtype)
        for m, kind in enumerate(kinds):
            if kind is None:
                continue
            own = (label == m).reshape(1, -1)
            cimg = torch.where(own, attr, torch.zeros_like(attr))
            # band pixels outside mesh m: attributes of the nearest point of the edge piece
            out = ((bd.label == m) & (bd.sign < 0)).nonzero()[:, 0]
            if out.numel():
                ia, ib = i0[out], i1[out]
                ok = (ia >= vstart[m]) & (ia < vstart[m + 1])
                tt = t0[out] + tpar[out] * (t1[out] - t0[out])
                bo = bd.b[out]
                ev = (1 - tt) * values[:, bo, ia] + tt * values[:, bo, ib]  # (3, R)
                ev = torch.where(ok, ev, torch.zeros_like(ev))
                fo = (bo * H + bd.y[out]) * W + bd.x[out]
                cimg = cimg.index_copy(1, fo, ev)
            cimg = cimg.reshape(3, B, H, W).transpose(0, 1)
            if kind == "tex":
                img = colors[m].image.to(dtype)[None].expand(B, -1, -1, -1)
                grid = torch.stack([cimg[:, 0] * 2 - 1, 1 - cimg[:, 1] * 2], -1)
                cimg = torch.nn.functional.grid_sample(img, grid, mode="bilinear",
                                                       padding_mode="border",
                                                       align_corners=False)
            rgb = rgb + soft[:, m, None] * cimg
    instance = torch.where(label < M, label, -1)
    return RenderOutput(soft, hard_masks, depth, rgb, instance, frag.face)


class SoftRenderer:
    """Small stateful wrapper: fixed output size and band width.

    ``SoftRenderer(size=128, band=2.0)(meshes, K, colors)`` == ``render(...)``.
    """

    def __init__(self, size, band: float = 2.0, near: float = 1e-4, tile: int = 8,
                 piece: Optional[float] = None, cull_backfaces: bool = True):
        self.size = _size_hw(size)
        self.band = float(band)
        self.near = float(near)
        self.tile = int(tile)
        self.piece = piece
        self.cull_backfaces = bool(cull_backfaces)

    def __call__(self, meshes, K, colors=None) -> RenderOutput:
        return render(meshes, K, self.size, colors=colors, band=self.band, near=self.near,
                      tile=self.tile, piece=self.piece, cull_backfaces=self.cull_backfaces)
