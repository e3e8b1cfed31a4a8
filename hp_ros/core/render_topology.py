"""Mesh topology for the renderer (:mod:`hp_ros.core.render`): unique edges with their adjacent
faces' third vertices (silhouette candidates), closedness (back-face culling), connected
components; cached per face array, and concatenated per list of meshes (:class:`_Scene`)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["MeshTopology"]


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
