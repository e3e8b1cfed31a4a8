"""Silhouette band of the renderer (:mod:`hp_ros.core.render`, stage 3 of its module docstring).

No autograd (:func:`_find_band`): 4-neighbour pixel pairs with different labels are crossings; each
is explained by a contour edge of the front mesh (segment intersection, bucketed by screen tiles);
the part of that edge around the crossing becomes an active piece; band pixels get their nearest
active piece per label. With autograd (:func:`_piece_end`, :func:`_segment_distance`,
:func:`_poly`): the pieces' ends and the pixels' distances to them, recomputed from the projected
vertices so that the soft masks follow the geometry.

Index bookkeeping runs in numpy: for these small arrays its nonzero, integer division, repeat and
sort are several times faster than torch's CPU kernels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from .render_raster import _INT64_MAX


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


class _Crossings(NamedTuple):
    """4-neighbour pixel pairs with different labels, ``(P,)`` each: batch ``b``, flat indices
    ``flat_p, flat_q`` of the pair's pixels, the front (nearer) pixel ``f`` and the other ``k``, and
    their labels."""

    b: np.ndarray
    flat_p: np.ndarray
    flat_q: np.ndarray
    f_x: np.ndarray
    f_y: np.ndarray
    k_x: np.ndarray
    k_y: np.ndarray
    lab_f: np.ndarray
    lab_k: np.ndarray


class _ContourEdges(NamedTuple):
    """Projected edges ``ax, ay, bx, by`` ``(B, E)`` (all edges), and the contour edges among them:
    batch ``cb`` and edge ``ce`` ``(C,)`` with their end points ``cax, cay, cbx, cby`` ``(C,)``."""

    n_edges: int
    ax: np.ndarray
    ay: np.ndarray
    bx: np.ndarray
    by: np.ndarray
    cb: np.ndarray
    ce: np.ndarray
    cax: np.ndarray
    cay: np.ndarray
    cbx: np.ndarray
    cby: np.ndarray


class _Pieces(NamedTuple):
    """Active contour-edge pieces ``(K,)`` each: batch, edge, the two labels they separate, edge
    parameters of their ends ``t0, t1``, the pixel pairs ``(K, 4)`` of the crossings that set the
    ends, and the ends' screen positions ``pa, pb``."""

    b: np.ndarray
    e: np.ndarray
    la: np.ndarray
    lb: np.ndarray
    t0: np.ndarray
    t1: np.ndarray
    seg0: np.ndarray
    seg1: np.ndarray
    pax: np.ndarray
    pay: np.ndarray
    pbx: np.ndarray
    pby: np.ndarray


def _find_band(us, vs, z, label, zbuf, edges, opposite, always, edge_inst, M: int,
               band: float, near: float, tile: int, piece: float) -> _Band:
    """Locate silhouette crossings, explain each by a contour edge and collect the band pixels
    with their nearest active edge piece per label. No autograd; ``us, vs, z`` are ``(B, V)``.
    See the module docstring."""
    B, H, W = label.shape
    lab = label.numpy()
    usn, vsn, zn = us.numpy(), vs.numpy(), z.numpy()
    dtype = usn.dtype
    cr = _crossings(lab, zbuf.numpy())
    ce = _contour_edges(usn, vsn, zn, edges.numpy(), opposite.numpy(), always.numpy(), near)
    has, cq, csel, u_sel = _explain_crossings(cr, ce, edge_inst.numpy(), dtype, B, H, W, tile)
    pieces = _active_pieces(cr, ce, has, cq, csel, u_sel, M, piece, dtype)
    return _nearest_pieces(lab, _band_seeds(cr, B, H, W, band), pieces, M, band, tile, dtype)


def _crossings(lab: np.ndarray, zbuf: np.ndarray) -> _Crossings:
    """The crossings of the labels ``(B, H, W)`` with the z-buffer ``(B, H, W)`` (nearer = front)."""
    B, H, W = lab.shape
    hb, hy, hx = np.nonzero(lab[:, :, :-1] != lab[:, :, 1:])
    vb, vy, vx = np.nonzero(lab[:, :-1, :] != lab[:, 1:, :])
    p_b = np.concatenate([hb, vb])
    p_x, p_y = np.concatenate([hx, vx]), np.concatenate([hy, vy])
    q_x, q_y = np.concatenate([hx + 1, vx]), np.concatenate([hy, vy + 1])
    flat_p = (p_b * H + p_y) * W + p_x
    flat_q = (p_b * H + q_y) * W + q_x
    zflat, lflat = zbuf.reshape(-1), lab.reshape(-1)
    p_front = zflat[flat_p] <= zflat[flat_q]
    f_x, f_y = np.where(p_front, p_x, q_x), np.where(p_front, p_y, q_y)
    k_x, k_y = np.where(p_front, q_x, p_x), np.where(p_front, q_y, p_y)
    lab_p, lab_q = lflat[flat_p], lflat[flat_q]
    lab_f = np.where(p_front, lab_p, lab_q)
    lab_k = np.where(p_front, lab_q, lab_p)
    return _Crossings(p_b, flat_p, flat_q, f_x, f_y, k_x, k_y, lab_f, lab_k)


def _contour_edges(usn, vsn, zn, e: np.ndarray, opposite: np.ndarray, always: np.ndarray,
                   near: float) -> _ContourEdges:
    """Contour edges: border/non-manifold, or both adjacent faces on one side in the image (and
    both end points in front of ``near``). ``usn, vsn, zn`` ``(B, V)``, ``e`` ``(E, 2)``."""
    Eall = e.shape[0]
    i0, i1 = e[:, 0], e[:, 1]
    ax, ay = usn[:, i0], vsn[:, i0]  # (B, E)
    bx, by = usn[:, i1], vsn[:, i1]
    dxe, dye = bx - ax, by - ay
    opp = np.maximum(opposite, 0)

    def side(o):
        return dxe * (vsn[:, o] - ay) - dye * (usn[:, o] - ax)

    in_front = (zn[:, i0] > near) & (zn[:, i1] > near)
    contour = (always[None] | (side(opp[:, 0]) * side(opp[:, 1]) >= 0)) & in_front
    cb, ce = np.nonzero(contour)
    cax, cay, cbx, cby = ax[cb, ce], ay[cb, ce], bx[cb, ce], by[cb, ce]
    return _ContourEdges(Eall, ax, ay, bx, by, cb, ce, cax, cay, cbx, cby)


def _explain_crossings(cr: _Crossings, ce_: _ContourEdges, edge_inst: np.ndarray, dtype, B: int,
                       H: int, W: int, tile: int):
    """The contour edge that explains each crossing it can: of the edges crossing the segment
    between the pair's pixel centres, the front mesh's last crossing (largest t), else the other
    mesh's first. Returns the explained crossings ``(X,)`` (indices into ``cr``), the same again as
    the winning pairs' crossing, their contour edges (indices into ``ce_``'s ``C``) and the edge
    parameters ``u`` ``(X,)`` of the crossing points."""
    cax, cay, cbx, cby, cb = ce_.cax, ce_.cay, ce_.cbx, ce_.cby, ce_.cb
    f_x, f_y, k_x, k_y = cr.f_x, cr.f_y, cr.k_x, cr.k_y
    qi, ci = _tile_pairs_np(np.minimum(cax, cbx) - 1, np.minimum(cay, cby) - 1,
                            np.maximum(cax, cbx) + 1, np.maximum(cay, cby) + 1, cb,
                            f_x, f_y, cr.b, B, H, W, tile)
    inst_c = edge_inst[ce_.ce[ci]]
    prio = np.where(inst_c == cr.lab_f[qi], 0, np.where(inst_c == cr.lab_k[qi], 1, 2))
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
    npairs = cr.b.shape[0]
    best = _scatter_min(npairs, qi, key)
    win = np.flatnonzero(key == best[qi])
    pick = np.full(npairs, -1, dtype=np.int64)
    pick[qi[win]] = win  # last write wins: the largest index among ties (increasing order)
    has = np.flatnonzero(pick >= 0)
    sel = pick[has]
    return has, qi[sel], ci[sel], u[sel]


def _active_pieces(cr: _Crossings, ce_: _ContourEdges, has, cq, csel, us_sel, M: int, piece: float,
                   dtype) -> _Pieces:
    """Active pieces, one per explained crossing: the part of the edge within ``piece`` pixels of
    the crossing, labelled with the two labels it separates there (a long edge can border
    different labels along its length); pieces of one edge with the same labels are merged."""
    cax, cay, cbx, cby, ax, ay, bx, by = ce_.cax, ce_.cay, ce_.cbx, ce_.cby, ce_.ax, ce_.ay, ce_.bx, ce_.by
    Eall = ce_.n_edges
    half = piece / np.maximum(np.sqrt((cbx[csel] - cax[csel]) ** 2
                                      + (cby[csel] - cay[csel]) ** 2), 1e-9)
    L = M + 1
    pkey = ((ce_.cb[csel] * Eall + ce_.ce[csel]) * L + np.minimum(cr.lab_f, cr.lab_k)[has]) * L \
        + np.maximum(cr.lab_f, cr.lab_k)[has]
    pkey, pinv = np.unique(pkey, return_inverse=True)
    pinv = pinv.reshape(-1)
    npk = pkey.shape[0]
    c_t0 = np.clip(us_sel - half, 0.0, 1.0).astype(dtype)
    c_t1 = np.clip(us_sel + half, 0.0, 1.0).astype(dtype)
    ent_t0 = _scatter_min(npk, pinv, c_t0)
    ent_t1 = -_scatter_min(npk, pinv, -c_t1)
    # which crossing defines each end (its pixel pair lets the renderer redo it with grad)
    seg = np.stack([cr.f_x[cq], cr.f_y[cq], cr.k_x[cq], cr.k_y[cq]], 1)
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
    return _Pieces(ent_b, ent_e, ent_la, ent_lb, ent_t0, ent_t1, ent_seg0, ent_seg1, pax, pay, pbx, pby)


def _band_seeds(cr: _Crossings, B: int, H: int, W: int, band: float) -> np.ndarray:
    """``(B, H, W)`` bool: the pixels within ``band`` (Chebyshev) of a crossing."""
    R = int(math.ceil(band))
    seed = np.zeros(B * H * W, dtype=bool)
    seed[cr.flat_p] = True
    seed[cr.flat_q] = True
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
    return seed


def _nearest_pieces(lab: np.ndarray, seed: np.ndarray, pc: _Pieces, M: int, band: float, tile: int,
                    dtype) -> _Band:
    """Band records: for each band pixel (``seed``) and each label on either side of an active piece
    within ``band`` of it that separates the pixel's own label (+1) from another (-1), the
    nearest such piece."""
    B, H, W = lab.shape
    pax, pay, pbx, pby = pc.pax, pc.pay, pc.pbx, pc.pby
    nb, ny, nx = np.nonzero(seed)
    n_lab = lab[nb, ny, nx]
    pi, ei = _tile_pairs_np(np.minimum(pax, pbx) - band, np.minimum(pay, pby) - band,
                            np.maximum(pax, pbx) + band, np.maximum(pay, pby) + band, pc.b,
                            nx, ny, nb, B, H, W, tile)
    v = n_lab[pi]
    la_, lb_ = pc.la[ei], pc.lb[ei]
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
    out = (nb[w_pix], ny[w_pix], nx[w_pix], w_lab, rec_s[wrec], pc.e[went], pc.t0[went],
           pc.t1[went], pc.seg0[went], pc.seg1[went])
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
