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

Modules: this one (inputs, the passes in order, colour compositing); :mod:`.render_topology`
(mesh edges, culling eligibility, per-scene tables); :mod:`.render_raster` (stage 1);
:mod:`.render_interpolate` (stage 2); :mod:`.render_band` (stage 3).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np
import torch

from .camera import project_points
from .render_band import _Band, _find_band, _piece_end, _poly, _segment_distance
from .render_interpolate import _Interpolate
from .render_raster import Fragments, _gather_index, _rasterize_corners, _size_hw, rasterize
from .render_topology import MeshTopology, _Scene, _scene, _topology

__all__ = [
    "Texture", "MeshTopology", "Fragments", "RenderOutput", "rasterize", "render",
    "SoftRenderer",
]


@dataclass
class Texture:
    """Texture map: per-vertex UVs ``(V, 2)`` in [0, 1] (v up, as OBJ/trimesh) and an image
    ``(3, Ht, Wt)`` float in [0, 1]."""

    uv: torch.Tensor
    image: torch.Tensor


Colors = Union[None, torch.Tensor, Texture]


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


class _HardPass(NamedTuple):
    """What the no-grad pass decides: fragments, labels (mesh index, ``M`` = background) as numpy
    ``(B H W,)`` and torch ``(B, H, W)``, the silhouette band, and the covered pixels: flat index
    ``cov`` ``(P,)``, centres ``cov_x, cov_y`` ``(P,)``, index ``vis_inv`` ``(P,)`` into the visible
    face rows, whose batch ``vis_b`` and face ``vis_f`` ``(n_vis,)`` are given."""

    frag: Fragments
    lab_np: np.ndarray
    label: torch.Tensor
    band: _Band
    cov: torch.Tensor
    cov_x: torch.Tensor
    cov_y: torch.Tensor
    vis_inv: torch.Tensor
    vis_b: np.ndarray
    vis_f: np.ndarray


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
    scene, verts = _stacked_scene(meshes, B, dtype)
    uv, z = project_points(torch.as_tensor(K).to(dtype), verts)  # with grad
    us, vs = uv[..., 0], uv[..., 1]
    with torch.no_grad():
        hp = _hard_pass(us, vs, z, verts, scene, M, (H, W), band, near, tile, piece, cull_backfaces)
    hard_masks = torch.from_numpy(hp.lab_np.reshape(B, 1, H, W) == np.arange(M).reshape(1, M, 1, 1))
    soft, ends = _soft_masks(us, vs, hp.band, hard_masks, scene.edges, verts.shape[1], band, piece, dtype)
    kinds = [None if colors is None or c is None else
             ("tex" if isinstance(c, Texture) else "rgb") for c in (colors or [None] * M)]
    values = _vertex_values(colors, kinds, scene.vstart, B, dtype)
    depth, attr_pix = _interior(us, vs, z, values, scene.faces, hp, near, dtype)
    rgb = None
    if values is not None:
        rgb = _composite_rgb(colors, kinds, values, attr_pix, hp, soft, ends, scene.vstart, dtype)
    instance = torch.from_numpy(np.where(hp.lab_np < M, hp.lab_np, -1).reshape(B, H, W))
    return RenderOutput(soft, hard_masks, depth, rgb, instance, hp.frag.face)


def _stacked_scene(meshes, B: int, dtype) -> tuple[_Scene, torch.Tensor]:
    """The meshes checked, their cached :class:`_Scene` and the stacked vertices ``(B, V, 3)``."""
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
    verts = torch.cat(verts_l, 1) if len(meshes) > 1 else verts_l[0]
    return scene, verts


def _front_face_corners(usd, vsd, zd, verts, scene: _Scene, cull_backfaces: bool):
    """Gathered face corners ``(3 [u, v, z], 3, B F)`` and the face mask ``(B F,)`` of the faces
    that may show (None: all): back faces of closed meshes never show."""
    B, Vt = zd.shape
    faces = scene.faces
    Fn = faces.shape[0]
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
        # outward orientation from the sign of the signed volume, so inside-out meshes work too
        (x0, x1, x2), (y0, y1, y2), (z0, z1, z2) = corners[3], corners[4], corners[5]
        # det(p0, p1, p2) = ((p1 - p0) x (p2 - p0)) . p0, (B F)
        facing = (x0 * (y1 * z2 - z1 * y2) - y0 * (x1 * z2 - z1 * x2)
                  + z0 * (x1 * y2 - y1 * x2)).reshape(B, Fn)
        # 6 x signed volume per connected component (e.g. per hand link body)
        vol = torch.zeros(B, scene.n_components, dtype=facing.dtype).index_add_(
            1, scene.face_component, facing)
        face_mask = ((facing * torch.sign(vol.index_select(1, scene.face_component)) < 0)
                     | scene.face_open).reshape(-1)
    return corners[:3], face_mask


def _hard_pass(us, vs, z, verts, scene: _Scene, M: int, size, band: float, near: float, tile: int,
               piece: float, cull_backfaces: bool) -> _HardPass:
    """Stages 1 and the no-grad half of 3 (call without grad): rasterise, label the pixels, find
    the silhouette band, and index the covered pixels by visible face."""
    H, W = size
    B, Vt = z.shape
    Fn = scene.faces.shape[0]
    dtype = verts.dtype
    usd, vsd, zd = us.detach().contiguous(), vs.detach().contiguous(), z.detach()
    corners, face_mask = _front_face_corners(usd, vsd, zd, verts, scene, cull_backfaces)
    frag = _rasterize_corners(corners, B, Fn, (H, W), near, face_mask)
    # covered pixels, their face row (b F + f) and labels; index work in numpy (faster)
    face_np = frag.face.numpy().reshape(-1)
    cov_np = np.flatnonzero(face_np >= 0)
    cov_face = face_np[cov_np]
    lab_np = np.full(B * H * W, M, dtype=np.int64)
    lab_np[cov_np] = scene.face_inst_np[cov_face]
    label = torch.from_numpy(lab_np.reshape(B, H, W))
    bd = _find_band(usd, vsd, zd, label, frag.zbuf, scene.edges, scene.opposite, scene.always,
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
    return _HardPass(frag, lab_np, label, bd, cov, cov_x, cy_pix, vis_inv, vb_np, vf_np)


def _soft_masks(us, vs, bd: _Band, hard_masks, edges, Vt: int, band: float, piece: float, dtype):
    """Soft masks ``(B, M, H, W)``: the hard one-hot with the band pixels replaced by the
    edge-distance ramp (with grad through the projected edge vertices ``us, vs`` ``(B, V)``). Also
    the band records' edge vertices, piece ends and nearest-point parameters ``(i0, i1, t0, t1,
    tpar)`` ``(R,)`` each, for the colours outside a mesh."""
    B, M, H, W = hard_masks.shape
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
    return soft, (i0, i1, t0, t1, tpar)


def _vertex_values(colors, kinds, vstart, B: int, dtype) -> Optional[torch.Tensor]:
    """Per-vertex values ``(3, B, V)`` interpolated over the faces: colours, or texture UVs (third
    channel 0), zeros for meshes without colours; None when no mesh has colours."""
    if not any(k is not None for k in kinds):
        return None
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
    return torch.cat(per_mesh, 1).permute(2, 0, 1).contiguous()  # (3, B, V)


def _interior(us, vs, z, values, faces, hp: _HardPass, near: float, dtype):
    """Stage 2: depth ``(B, H, W)`` (0 on background) and the values ``(3, P)`` (``(0, P)``
    without values) at the covered pixels, perspective-correct from per-face affine planes."""
    B, H, W = hp.label.shape
    Vt = z.shape[1]
    # visible faces as rows (b V + vertex) of the flattened vertex arrays
    vb, vf = torch.from_numpy(hp.vis_b), torch.from_numpy(hp.vis_f)
    fidx = faces.index_select(0, vf)
    if B > 1:
        fidx = vb[:, None] * Vt + fidx
    vals_flat = None if values is None else values.reshape(values.shape[0], -1)
    depth_pix, attr_pix = _Interpolate.apply(
        us.reshape(-1), vs.reshape(-1), z.reshape(-1), vals_flat, fidx, hp.vis_inv, hp.cov_x,
        hp.cov_y, near)
    depth = torch.zeros(B * H * W, dtype=dtype).index_copy(0, hp.cov, depth_pix).reshape(B, H, W)
    return depth, attr_pix


def _composite_rgb(colors, kinds, values, attr_pix, hp: _HardPass, soft, ends, vstart, dtype):
    """``rgb = sum_m soft_m * colour_m`` ``(B, 3, H, W)``; in a mesh's band outside it, the colour
    of the nearest point of its own edge piece (0 where that piece belongs to an occluder)."""
    B, H, W = hp.label.shape
    bd, label = hp.band, hp.label
    i0, i1, t0, t1, tpar = ends
    attr = torch.zeros(3, B * H * W, dtype=dtype).index_copy(1, hp.cov, attr_pix)
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
    return rgb


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
