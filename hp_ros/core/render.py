"""Differentiable soft-silhouette, depth and RGB renderer of several meshes, in pure torch (CPU).

Design ("hard raster, soft edges"): everything discrete is decided without autograd and only the
few quantities that depend continuously on the vertices are recomputed with autograd. All heavy
steps are vectorised over structure-of-arrays 1-D tensors (contiguous elementwise ops and 1-D
``index_select`` are the fast paths of CPU torch).

Speed notes (2-core CPU, ~10^4-element arrays, so per-op cost dominates): the no-grad index
bookkeeping (nonzero, repeat, integer division, sorting, bucket joins) runs in numpy, whose
kernels are several times cheaper here than torch's (torch's CPU sort is ~20x slower than
numpy's above ~4k elements); "unique" is done by marking instead of sorting; the combined
topology of a mesh list is cached; faces are culled before any per-face work; the interior
interpolation is one autograd node with a hand-written backward that reduces pixels to
per-face moments before scattering to vertices.

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


class _Scene:
    """Concatenated topology of a list of meshes (vertex/face/edge indices offset into the
    stacked vertex array), cached per (topologies, vertex counts) so that a render call does no
    per-mesh table building."""

    def __init__(self, topos: Sequence[MeshTopology], nverts: Sequence[int]):
        self.topos = list(topos)  # keeps the keys' ids alive
        vstart, faces, edges, opp, always, finst, einst, comp, fopen = [0], [], [], [], [], [], \
            [], [], []
        ncomp = 0
        for m, (topo, nv) in enumerate(zip(topos, nverts)):
            off = vstart[-1]
            nf, ne = topo.faces_ref.shape[0], topo.edges.shape[0]
            faces.append(topo.faces_ref + off)
            edges.append(topo.edges + off)
            opp.append(torch.where(topo.opposite >= 0, topo.opposite + off, -1))
            always.append(topo.always_contour)
            finst.append(torch.full((nf,), m, dtype=torch.long))
            einst.append(torch.full((ne,), m, dtype=torch.long))
            comp.append(topo.face_component + ncomp)
            fopen.append(torch.full((nf,), not topo.closed, dtype=torch.bool))
            ncomp += int(topo.n_components)
            vstart.append(off + int(nv))
        self.vstart = vstart
        self.faces = torch.cat(faces)
        self.edges = torch.cat(edges)
        self.opposite = torch.cat(opp)
        self.always = torch.cat(always)
        self.face_inst = torch.cat(finst)
        self.face_inst_np = self.face_inst.numpy()
        self.edge_inst = torch.cat(einst)
        self.face_component = torch.cat(comp)
        self.n_components = ncomp
        self.face_open = torch.cat(fopen)
        self.any_closed = any(t.closed for t in topos)


_SCENE_CACHE: dict = {}


def _scene(topos: Sequence[MeshTopology], nverts: Sequence[int]) -> _Scene:
    key = (tuple(id(t) for t in topos), tuple(int(n) for n in nverts))
    sc = _SCENE_CACHE.get(key)
    if sc is None:
        if len(_SCENE_CACHE) > 32:
            _SCENE_CACHE.clear()
        sc = _SCENE_CACHE[key] = _Scene(topos, nverts)
    return sc


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
        (x0, x1, x2), (y0, y1, y2), (z0, z1, z2) = corners.index_select(2, sel)
        xmin, xmax = xmin.index_select(0, sel), xmax.index_select(0, sel)
        ymin, ymax = ymin.index_select(0, sel), ymax.index_select(0, sel)
        sgn = torch.sign(area2.index_select(0, sel))
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
        if pr_np.shape[0] > 0:
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
            face_buf.scatter_reduce_(0, torch.from_numpy(pix), torch.from_numpy(key),
                                     reduce="amin")
    fb = face_buf.numpy()
    hit = fb != _INT64_MAX
    fid = (fb & 0xFFFFFFFF) if B == 1 else (fb & 0xFFFFFFFF) % max(Fn, 1)
    face = np.where(hit, fid, -1)
    zbuf = torch.from_numpy((fb >> 32).astype(np.int32).view(np.float32)).to(dtype)
    zbuf = torch.where(torch.from_numpy(hit), zbuf, torch.tensor(math.inf, dtype=dtype))
    return Fragments(torch.from_numpy(face.reshape(B, H, W)), zbuf.reshape(B, H, W))


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
    See the module docstring.

    Index bookkeeping runs in numpy: for these small arrays its nonzero, integer division,
    repeat and sort are several times faster than torch's CPU kernels."""
    B, H, W = label.shape
    lab = label.numpy()
    usn, vsn, zn = us.numpy(), vs.numpy(), z.numpy()
    dtype = usn.dtype
    # --- crossings: 4-neighbour pixel pairs with different labels ----------------------------
    hb, hy, hx = np.nonzero(lab[:, :, :-1] != lab[:, :, 1:])
    vb, vy, vx = np.nonzero(lab[:, :-1, :] != lab[:, 1:, :])
    p_b = np.concatenate([hb, vb])
    p_x, p_y = np.concatenate([hx, vx]), np.concatenate([hy, vy])
    q_x, q_y = np.concatenate([hx + 1, vx]), np.concatenate([hy, vy + 1])
    flat_p = (p_b * H + p_y) * W + p_x
    flat_q = (p_b * H + q_y) * W + q_x
    zflat, lflat = zbuf.numpy().reshape(-1), lab.reshape(-1)
    p_front = zflat[flat_p] <= zflat[flat_q]
    f_x, f_y = np.where(p_front, p_x, q_x), np.where(p_front, p_y, q_y)
    k_x, k_y = np.where(p_front, q_x, p_x), np.where(p_front, q_y, p_y)
    lab_p, lab_q = lflat[flat_p], lflat[flat_q]
    lab_f = np.where(p_front, lab_p, lab_q)
    lab_k = np.where(p_front, lab_q, lab_p)

    # --- contour edges: border/non-manifold, or both adjacent faces on one side in the image --
    e = edges.numpy()
    Eall = e.shape[0]
    i0, i1 = e[:, 0], e[:, 1]
    ax, ay = usn[:, i0], vsn[:, i0]  # (B, E)
    bx, by = usn[:, i1], vsn[:, i1]
    dxe, dye = bx - ax, by - ay
    opp = np.maximum(opposite.numpy(), 0)

    def side(o):
        return dxe * (vsn[:, o] - ay) - dye * (usn[:, o] - ax)

    in_front = (zn[:, i0] > near) & (zn[:, i1] > near)
    contour = (always.numpy()[None] | (side(opp[:, 0]) * side(opp[:, 1]) >= 0)) & in_front
    cb, ce = np.nonzero(contour)
    cax, cay, cbx, cby = ax[cb, ce], ay[cb, ce], bx[cb, ce], by[cb, ce]
    qi, ci = _tile_pairs_np(np.minimum(cax, cbx) - 1, np.minimum(cay, cby) - 1,
                            np.maximum(cax, cbx) + 1, np.maximum(cay, cby) + 1, cb,
                            f_x, f_y, p_b, B, H, W, tile)
    inst_c = edge_inst.numpy()[ce[ci]]
    prio = np.where(inst_c == lab_f[qi], 0, np.where(inst_c == lab_k[qi], 1, 2))
    # segment (front pixel centre -> other pixel centre) against edge (a -> b)
    P0x, P0y = f_x[qi].astype(dtype), f_y[qi].astype(dtype)
    rx, ry = (k_x[qi] - f_x[qi]).astype(dtype), (k_y[qi] - f_y[qi]).astype(dtype)
    Ax, Ay = cax[ci], cay[ci]
    sx, sy = cbx[ci] - Ax, cby[ci] - Ay
    den = rx * sy - ry * sx
    good = np.abs(den) > 1e-12
    den = np.where(good, den, np.ones_like(den))
    APx, APy = Ax - P0x, Ay - P0y
    t = (APx * sy - APy * sx) / den
    u = (APx * ry - APy * rx) / den
    hit = np.flatnonzero((prio < 2) & good & (t >= 0) & (t <= 1) & (u >= 0) & (u <= 1))
    qi, ci, prio, t, u = qi[hit], ci[hit], prio[hit], t[hit], u[hit]
    # the front mesh's last crossing (largest t); else the other mesh's first crossing
    score = np.clip(np.where(prio == 0, 1.0 - t, t), 0, 1).astype(np.float32)
    key = (prio.astype(np.int64) << 31) | score.view(np.int32).astype(np.int64)
    npairs = p_b.shape[0]
    best = _scatter_min(npairs, qi, key)
    win = np.flatnonzero(key == best[qi])
    pick = np.full(npairs, -1, dtype=np.int64)
    pick[qi[win]] = win  # last write wins: the largest index among ties (increasing order)
    has = np.flatnonzero(pick >= 0)
    # active pieces, one per explained crossing: the part of the edge within `piece` pixels of
    # the crossing, labelled with the two labels it separates there (a long edge can border
    # different labels along its length); pieces of one edge with the same labels are merged
    sel = pick[has]
    csel = ci[sel]
    half = piece / np.maximum(np.sqrt((cbx[csel] - cax[csel]) ** 2
                                      + (cby[csel] - cay[csel]) ** 2), 1e-9)
    L = M + 1
    pkey = ((cb[csel] * Eall + ce[csel]) * L + np.minimum(lab_f, lab_k)[has]) * L \
        + np.maximum(lab_f, lab_k)[has]
    pkey, pinv = np.unique(pkey, return_inverse=True)
    pinv = pinv.reshape(-1)
    npk = pkey.shape[0]
    us_sel = u[sel]
    c_t0 = np.clip(us_sel - half, 0.0, 1.0).astype(dtype)
    c_t1 = np.clip(us_sel + half, 0.0, 1.0).astype(dtype)
    ent_t0 = _scatter_min(npk, pinv, c_t0)
    ent_t1 = -_scatter_min(npk, pinv, -c_t1)
    # which crossing defines each end (its pixel pair lets the renderer redo it with grad)
    cq = qi[sel]
    seg = np.stack([f_x[cq], f_y[cq], k_x[cq], k_y[cq]], 1)
    j0 = np.full(npk, -1, dtype=np.int64)
    m0 = np.flatnonzero(c_t0 == ent_t0[pinv])
    j0[pinv[m0]] = m0
    j1 = np.full(npk, -1, dtype=np.int64)
    m1 = np.flatnonzero(c_t1 == ent_t1[pinv])
    j1[pinv[m1]] = m1
    ent_seg0, ent_seg1 = seg[j0], seg[j1]
    ent_be, ent_lab = np.divmod(pkey, L * L)
    ent_la, ent_lb = np.divmod(ent_lab, L)
    ent_b, ent_e = np.divmod(ent_be, Eall)
    e0x, e0y, e1x, e1y = ax[ent_b, ent_e], ay[ent_b, ent_e], bx[ent_b, ent_e], by[ent_b, ent_e]
    pax, pay = e0x + ent_t0 * (e1x - e0x), e0y + ent_t0 * (e1y - e0y)
    pbx, pby = e0x + ent_t1 * (e1x - e0x), e0y + ent_t1 * (e1y - e0y)

    # --- band pixels: within `band` (Chebyshev) of a crossing ---------------------------------
    R = int(math.ceil(band))
    seed = np.zeros(B * H * W, dtype=bool)
    seed[flat_p] = True
    seed[flat_q] = True
    seed = seed.reshape(B, H, W)
    # separable binary dilation by a (2R+1)^2 square
    for ax_ in (2, 1):
        src = seed
        seed = src.copy()
        n_ax = src.shape[ax_]
        for r in range(1, min(R, n_ax - 1) + 1):
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[ax_], hi[ax_] = slice(r, None), slice(None, -r)
            seed[tuple(lo)] |= src[tuple(hi)]
            seed[tuple(hi)] |= src[tuple(lo)]
    nb, ny, nx = np.nonzero(seed)
    n_lab = lab[nb, ny, nx]
    pi, ei = _tile_pairs_np(np.minimum(pax, pbx) - band, np.minimum(pay, pby) - band,
                            np.maximum(pax, pbx) + band, np.maximum(pay, pby) + band, ent_b,
                            nx, ny, nb, B, H, W, tile)
    v = n_lab[pi]
    la_, lb_ = ent_la[ei], ent_lb[ei]
    d2 = _segment_distance2_np(nx[pi].astype(dtype), ny[pi].astype(dtype), pax[ei], pay[ei],
                               pbx[ei], pby[ei])
    rel = np.flatnonzero(((la_ == v) | (lb_ == v)) & (d2 < band * band))
    pi, ei, v = pi[rel], ei[rel], v[rel]
    d = np.sqrt(d2[rel])
    other = la_[rel] + lb_[rel] - v
    # records: the pixel's own label (inside, +1) and the label across the edge (outside, -1)
    rec_l = np.concatenate([v, other])
    fg = np.flatnonzero(rec_l < M)
    rec_l = rec_l[fg]
    nrel = pi.shape[0]
    rec_p = np.concatenate([pi, pi])[fg]
    rec_e = np.concatenate([ei, ei])[fg]
    rec_s = np.where(fg < nrel, 1, -1)
    rec_d = np.concatenate([d, d])[fg]
    # nearest piece per (pixel, label)
    slot = rec_p * M + rec_l
    dkey = (rec_d.astype(np.float32).view(np.int32).astype(np.int64) << 32) \
        | np.arange(rec_p.shape[0], dtype=np.int64)
    sbest = _scatter_min(nb.shape[0] * M, slot, dkey)
    w_slot = np.flatnonzero(sbest != _INT64_MAX)
    wrec = sbest[w_slot] & 0xFFFFFFFF
    w_pix, w_lab = np.divmod(w_slot, M)
    went = rec_e[wrec]
    out = (nb[w_pix], ny[w_pix], nx[w_pix], w_lab, rec_s[wrec], ent_e[went], ent_t0[went],
           ent_t1[went], ent_seg0[went], ent_seg1[went])
    return _Band(*(torch.from_numpy(np.ascontiguousarray(a)) for a in out))


def _scatter_min(n: int, index: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``out[i] = min(values[index == i])`` ``(n,)``; empty slots hold the dtype's maximum
    (``_INT64_MAX`` for int64, ``inf`` for floats)."""
    if values.dtype == np.int64:
        fill = _INT64_MAX
    else:
        fill = math.inf
    out = torch.full((n,), fill, dtype=torch.from_numpy(values[:0]).dtype)
    out.scatter_reduce_(0, torch.from_numpy(index), torch.from_numpy(values), reduce="amin")
    return out.numpy()


def _segment_distance2_np(px, py, ax, ay, bx, by) -> np.ndarray:
    """Squared distance ``(n,)`` of points ``p`` to segments ``a b`` (numpy, ``(n,)`` each),
    the same arithmetic as :func:`_segment_distance`."""
    dx, dy = bx - ax, by - ay
    t = np.clip(((px - ax) * dx + (py - ay) * dy) / np.maximum(dx * dx + dy * dy, 1e-20), 0, 1)
    ex, ey = ax + t * dx - px, ay + t * dy - py
    return ex * ex + ey * ey + 1e-20


def _tile_pairs_np(lo_x, lo_y, hi_x, hi_y, item_b, qx, qy, qb, B: int, H: int, W: int,
                   tile: int):
    """Candidate (query, item) index pairs (numpy): items whose box ``[lo, hi]`` (pixels,
    ``(n,)`` each) touches the screen tile of the integer query pixel ``(qx, qy)`` ``(q,)`` of
    the same batch element. Bucket join: expand items over their tiles, counting sort."""
    ntx, nty = (W + tile - 1) // tile, (H + tile - 1) // tile

    def cell(a, n):  # tile index, clipped to [-1, n] first (huge / non-finite coordinates)
        return np.clip(np.nan_to_num(np.floor(a / tile), nan=-1.0), -1, n).astype(np.int64)

    tx0, tx1 = cell(lo_x, ntx), cell(hi_x, ntx)
    ty0, ty1 = cell(lo_y, nty), cell(hi_y, nty)
    offscreen = (tx1 < 0) | (tx0 >= ntx) | (ty1 < 0) | (ty0 >= nty)
    tx0, tx1 = np.clip(tx0, 0, ntx - 1), np.clip(tx1, 0, ntx - 1)
    ty0, ty1 = np.clip(ty0, 0, nty - 1), np.clip(ty1, 0, nty - 1)
    tw = tx1 - tx0 + 1
    cnt = np.where(offscreen, 0, tw * (ty1 - ty0 + 1))
    item = np.repeat(np.arange(cnt.shape[0]), cnt)
    off = np.arange(item.shape[0]) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    twi = tw[item]
    ty, rem = np.divmod(off, twi)
    key = (item_b[item] * nty + ty + ty0[item]) * ntx + tx0[item] + rem
    nkeys = B * ntx * nty
    # stable counting order (radix sort for 16-bit keys)
    order = np.argsort(key.astype(np.int16) if nkeys < 32767 else key, kind="stable")
    item = item[order]
    counts = np.bincount(key, minlength=nkeys)
    start = np.cumsum(counts) - counts
    qkey = (qb * nty + qy // tile) * ntx + qx // tile
    qcnt = counts[qkey]
    qi = np.repeat(np.arange(qkey.shape[0]), qcnt)
    off = np.arange(qi.shape[0]) - np.repeat(np.cumsum(qcnt) - qcnt, qcnt)
    return qi, item[start[qkey][qi] + off]


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


class _Interpolate(torch.autograd.Function):
    """Perspective-correct interpolation of depth and per-vertex values at covered pixels,
    with a hand-written backward (one node instead of ~60 small autograd ops).

    With screen barycentrics ``l_k = (a_k x + b_k y + c_k) / A`` of the pixel in its face
    (``A = sum c_k``, twice the signed area), ``w_k = 1 / z_k``: ``invz = sum l_k w_k``,
    ``depth = 1 / invz``, ``value = sum l_k w_k v_k / invz``. Backward uses
    ``d l_k / d p_j = -l_j grad(l_k)`` (moving vertex ``j`` by ``dp`` moves the barycentrics
    like moving the pixel by ``-l_j dp``).

    Inputs: ``us, vs, z`` ``(N,)`` flattened vertex data, ``values`` ``(C, N)`` or None,
    ``fidx`` ``(n_vis, 3)`` vertex rows of the visible faces, ``pix_face`` ``(P,)`` index into
    them, ``px, py`` ``(P,)`` pixel centres, ``near``. Outputs: depth ``(P,)``, values
    ``(C, P)`` (``(0, P)`` without values).
    """

    @staticmethod
    def forward(ctx, us, vs, z, values, fidx, pix_face, px, py, near):
        cols = [fidx[:, k] for k in range(3)]
        x = [us.index_select(0, c) for c in cols]
        y = [vs.index_select(0, c) for c in cols]
        c = [x[1] * y[2] - x[2] * y[1], x[2] * y[0] - x[0] * y[2], x[0] * y[1] - x[1] * y[0]]
        area2 = c[0] + c[1] + c[2]
        inv_a = 1.0 / torch.where(area2.abs() > 1e-12, area2, torch.ones_like(area2))
        zk = [z.index_select(0, col) for col in cols]
        C = 0 if values is None else values.shape[0]
        # per-face table (rows: grad(l_k) x, y, l_k offset, w_k, v_kc), gathered per pixel
        rows = [(y[1] - y[2]) * inv_a, (y[2] - y[0]) * inv_a, (y[0] - y[1]) * inv_a,
                (x[2] - x[1]) * inv_a, (x[0] - x[2]) * inv_a, (x[1] - x[0]) * inv_a,
                c[0] * inv_a, c[1] * inv_a, c[2] * inv_a,
                *(torch.where(zi > near, 1.0 / zi, torch.ones_like(zi)) for zi in zk)]
        if C:
            rows += [values.index_select(1, col) for col in cols]  # (C, n_vis) each
            table = torch.cat([torch.stack(rows[:12]), *rows[12:]])
        else:
            table = torch.stack(rows)
        tp = table.index_select(1, pix_face)  # (12 + 3 C, P)
        ga, gb = tp[0:3], tp[3:6]
        lam = ga * px + gb * py + tp[6:9]  # (3, P) screen barycentrics
        om = tp[9:12]
        lw = lam * om
        depth = 1.0 / lw.sum(0)
        if C:
            vk = tp[12:].reshape(3, C, -1)
            attr = (lw[:, None] * vk).sum(0) * depth
        else:
            attr = us.new_zeros(0, px.shape[0])
        ctx.save_for_backward(fidx, pix_face, px, py, table, depth, attr)
        ctx.n_vertices = us.shape[0]
        ctx.C = C
        return depth, attr

    @staticmethod
    def backward(ctx, g_depth, g_attr):
        fidx, pix_face, px, py, table, depth, attr = ctx.saved_tensors
        C, nvis = ctx.C, table.shape[1]
        # per pixel: G = dL/d(invz, num_1..C) with depth = 1/invz, attr = num/invz
        g_invz = -g_depth * depth * depth
        if C:
            g_invz = g_invz - (g_attr * attr).sum(0) * depth
            G = torch.cat([g_invz[None], g_attr * depth])  # (1 + C, P)
        else:
            G = g_invz[None]
        # everything below is linear in G with per-face coefficients affine in the pixel
        # position: reduce to per-face moments M = sum_p [x, y, 1] (x) G  (3, 1 + C, n_vis)
        M = torch.zeros(3 * (1 + C), nvis, dtype=G.dtype).index_add_(
            1, pix_face, torch.cat([G * px, G * py, G])).reshape(3, 1 + C, nvis)
        ga, gb, gc, om = table[0:3], table[3:6], table[6:9], table[9:12]  # (3, n_vis) each
        ones = torch.ones_like(om[:, None])
        vext = torch.cat([ones, table[12:].reshape(3, C, nvis)], 1) if C else ones
        # T_j = sum_p l_j G  (3 j, 1 + C, n_vis)
        T = ga[:, None] * M[0] + gb[:, None] * M[1] + gc[:, None] * M[2]
        # d invz / d l_k = w_k, d num_c / d l_k = w_k v_kc; screen gradient of l_k = (ga, gb)
        alpha = ((om * ga)[:, None] * vext).sum(0)  # (1 + C, n_vis)
        beta = ((om * gb)[:, None] * vext).sum(0)
        # moving vertex j by dp moves the barycentrics like moving the pixel by -l_j dp
        g_x = -(alpha[None] * T).sum(1)  # (3 j, n_vis)
        g_y = -(beta[None] * T).sum(1)
        g_z = -(om * om) * (vext * T).sum(1)  # w = 1/z
        parts = [g_x[:, None], g_y[:, None], g_z[:, None]]
        if C:
            parts.append(om[:, None] * T[:, 1:])  # (3 j, C, n_vis)
        per_face = torch.cat(parts, 1).permute(0, 2, 1).reshape(3 * nvis, 3 + C)
        per_vert = torch.zeros(ctx.n_vertices, 3 + C, dtype=per_face.dtype).index_add_(
            0, fidx.t().reshape(-1), per_face)
        g_us, g_vs, g_zv = per_vert[:, 0], per_vert[:, 1], per_vert[:, 2]
        g_values = per_vert[:, 3:].t() if C else None
        return g_us, g_vs, g_zv, g_values, None, None, None, None, None


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
    topos, verts_l = [], []
    for m, (v, f) in enumerate(meshes):
        if v.dim() != 3 or v.shape[-1] != 3 or v.shape[0] != B:
            raise ValueError(f"mesh {m}: verts must be (B={B}, V, 3), got {tuple(v.shape)}")
        if f.dim() != 2 or f.shape[-1] != 3:
            raise ValueError(f"mesh {m}: faces must be (F, 3), got {tuple(f.shape)}")
        if f.numel() and (int(f.min()) < 0 or int(f.max()) >= v.shape[1]):
            raise ValueError(f"mesh {m}: face indices out of range [0, {v.shape[1]})")
        topos.append(_topology(f))
        verts_l.append(v.to(dtype))
    scene = _scene(topos, [v.shape[1] for v, _ in meshes])
    vstart, faces, edges = scene.vstart, scene.faces, scene.edges
    verts = torch.cat(verts_l, 1) if M > 1 else verts_l[0]
    Fn, Vt = faces.shape[0], verts.shape[1]
    uv, z = project_points(torch.as_tensor(K).to(dtype), verts)  # with grad
    us, vs = uv[..., 0], uv[..., 1]

    with torch.no_grad():
        usd, vsd, zd = us.detach().contiguous(), vs.detach().contiguous(), z.detach()
        cull = cull_backfaces and scene.any_closed
        # one gather of every face corner: (u, v, z[, X, Y, Z]) x 3 vertices x (B F)
        data = [usd, vsd, zd]
        if cull:
            vd = verts.detach()
            data += [vd[..., k] for k in range(3)]
        corners = torch.stack(data).reshape(len(data), B * Vt).index_select(
            1, _gather_index(faces, B, Vt)).reshape(len(data), 3, B * Fn)
        face_mask = None
        if cull:
            # back faces of closed meshes never show: skip them (outward orientation from the
            # sign of the signed volume, so inside-out meshes work too)
            (x0, x1, x2), (y0, y1, y2), (z0, z1, z2) = corners[3], corners[4], corners[5]
            # det(p0, p1, p2) = ((p1 - p0) x (p2 - p0)) . p0, (B F)
            facing = (x0 * (y1 * z2 - z1 * y2) - y0 * (x1 * z2 - z1 * x2)
                      + z0 * (x1 * y2 - y1 * x2)).reshape(B, Fn)
            # 6 x signed volume per connected component (e.g. per hand link body)
            vol = torch.zeros(B, scene.n_components, dtype=facing.dtype).index_add_(
                1, scene.face_component, facing)
            face_mask = ((facing * torch.sign(vol.index_select(1, scene.face_component)) < 0)
                         | scene.face_open).reshape(-1)
        frag = _rasterize_corners(corners[:3], B, Fn, (H, W), near, face_mask)
        # covered pixels, their face row (b F + f) and labels; index work in numpy (faster)
        face_np = frag.face.numpy().reshape(-1)
        cov_np = np.flatnonzero(face_np >= 0)
        cov_face = face_np[cov_np]
        lab_np = np.full(B * H * W, M, dtype=np.int64)
        lab_np[cov_np] = scene.face_inst_np[cov_face]
        label = torch.from_numpy(lab_np.reshape(B, H, W))
        bd = _find_band(usd, vsd, zd, label, frag.zbuf, edges, scene.opposite, scene.always,
                        scene.edge_inst, M, band, near, tile, piece)
        if B > 1:
            cov_b, cov_pix = np.divmod(cov_np, H * W)
            cov_row_np = cov_b * Fn + cov_face
        else:
            cov_pix, cov_row_np = cov_np, cov_face
        cy_np, cx_np = np.divmod(cov_pix, W)
        cov = torch.from_numpy(cov_np)
        cov_x = torch.from_numpy(cx_np).to(dtype)
        cy_pix = torch.from_numpy(cy_np).to(dtype)
        # visible face rows and each covered pixel's position among them (a "unique" without
        # sorting: torch's CPU sort is slow for more than a few thousand elements)
        seen = np.zeros(B * Fn, dtype=bool)
        seen[cov_row_np] = True
        vis_np = np.flatnonzero(seen)
        vis_inv = torch.from_numpy((np.cumsum(seen) - 1)[cov_row_np])
        vb_np, vf_np = np.divmod(vis_np, Fn)

    # --- soft masks: hard one-hot, band pixels replaced by the edge-distance ramp ------------
    hard_masks = torch.from_numpy(lab_np.reshape(B, 1, H, W) == np.arange(M).reshape(1, M, 1, 1))
    i0, i1 = edges[bd.edge, 0], edges[bd.edge, 1]
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
    # visible faces as rows (b V + vertex) of the flattened vertex arrays
    vb, vf = torch.from_numpy(vb_np), torch.from_numpy(vf_np)
    fidx = faces.index_select(0, vf)
    if B > 1:
        fidx = vb[:, None] * Vt + fidx
    vals_flat = None if values is None else values.reshape(values.shape[0], -1)
    depth_pix, attr_pix = _Interpolate.apply(
        us.reshape(-1), vs.reshape(-1), z.reshape(-1), vals_flat, fidx, vis_inv, cov_x,
        cy_pix, near)
    depth = torch.zeros(B * H * W, dtype=dtype).index_copy(0, cov, depth_pix).reshape(B, H, W)

    rgb = None
    if values is not None:
        attr = torch.zeros(3, B * H * W, dtype=dtype).index_copy(1, cov, attr_pix)
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
    instance = torch.from_numpy(np.where(lab_np < M, lab_np, -1).reshape(B, H, W))
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
