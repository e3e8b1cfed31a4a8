"""Object models: triangle meshes with colours for rendering, metrics and physics.

``ObjectModel`` wraps a ``trimesh.Trimesh`` (loaded from OBJ/PLY/STL/GLB, or built in) and
exposes torch tensors: ``vertices (V, 3)``, ``faces (F, 3)`` long, ``vertex_colors (V, 3)`` in
[0, 1], optional ``uv (V, 2)`` and ``texture (H, W, 3)``. Coordinates are metres in the object
frame. The Warp mesh used for SDF queries is built from ``vertices``/``faces`` by
:mod:`hp_ros.core.sdf`; call :meth:`ObjectModel.require_watertight` first.

Built-in objects (watertight, 2-6k faces, colour pattern so that rotations are observable):

* ``cracker_box``: box of a YCB cracker box, extents x = 0.16, y = 0.21, z = 0.07 m, centred at
  the origin. Faces coloured by side (+x red, -x maroon, +y green, -y olive, +z blue, -z yellow)
  plus a white stripe across the +z face near +y (breaks the remaining symmetries).
* ``soup_can``: cylinder of a YCB tomato soup can, radius 0.034 m, height 0.102 m, axis z,
  centred. Grey lids, red upper label band, white lower band and a dark-blue vertical marker
  stripe on the +x side (shows roll about the axis). Geometrically symmetric (``symmetric=True``).
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch

__all__ = ["ObjectModel", "BUILTIN_OBJECTS", "DEFAULT_COLOR"]

log = logging.getLogger(__name__)

DEFAULT_COLOR = (0.7, 0.7, 0.7)
BUILTIN_OBJECTS = ("cracker_box", "soup_can")
# A hand-held object in metres is well below this size; in millimetres well above it.
_AUTO_MM_THRESHOLD = 2.0


class ObjectModel:
    """A rigid object mesh in its own frame (metres). See the module doc.

    Attributes: ``name``, ``symmetric`` (use ADD-S rather than ADD), ``trimesh``,
    ``vertices (V, 3)``, ``faces (F, 3)`` long, ``vertex_colors (V, 3)``, ``uv (V, 2)`` or None,
    ``texture (H, W, 3)`` float in [0, 1] or None.
    """

    def __init__(self, mesh, name: str = "object", symmetric: bool = False,
                 vertex_colors: Optional[np.ndarray] = None, uv: Optional[np.ndarray] = None,
                 texture: Optional[np.ndarray] = None, dtype=torch.float32, device=None):
        import trimesh

        if not isinstance(mesh, trimesh.Trimesh):
            raise TypeError(f"expected a trimesh.Trimesh, got {type(mesh).__name__}")
        if len(mesh.faces) == 0:
            raise ValueError(f"object {name!r} has no faces")
        self.trimesh = mesh
        self.name = name
        self.symmetric = bool(symmetric)
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        V = len(mesh.vertices)
        if vertex_colors is None:
            vertex_colors = np.tile(np.asarray(DEFAULT_COLOR, float), (V, 1))
        vertex_colors = np.asarray(vertex_colors, float)
        if vertex_colors.shape != (V, 3):
            raise ValueError(f"vertex_colors must be ({V}, 3), got {vertex_colors.shape}")
        self._colors = np.clip(vertex_colors, 0.0, 1.0)
        self._uv = None if uv is None else np.asarray(uv, float)
        self._texture = None if texture is None else np.asarray(texture, float)
        self._refresh()

    def _refresh(self):
        kw = dict(dtype=self.dtype, device=self.device)
        m = self.trimesh
        self.vertices = torch.tensor(np.array(m.vertices), **kw)
        self.faces = torch.tensor(np.array(m.faces), dtype=torch.long, device=self.device)
        self.vertex_colors = torch.as_tensor(self._colors, **kw)
        self.uv = None if self._uv is None else torch.as_tensor(self._uv, **kw)
        self.texture = None if self._texture is None else torch.as_tensor(self._texture, **kw)

    def to(self, device=None, dtype=None) -> "ObjectModel":
        """Move/cast tensors in place; returns self."""
        if device is not None:
            self.device = torch.device(device)
        if dtype is not None:
            self.dtype = dtype
        self._refresh()
        return self

    def __repr__(self) -> str:
        return (f"ObjectModel({self.name!r}, V={len(self.trimesh.vertices)}, F={len(self.trimesh.faces)}, "
                f"extents={np.round(self.trimesh.extents, 4).tolist()}, watertight={self.is_watertight})")

    # ----------------------------------------------------------------------------- geometry
    @property
    def is_watertight(self) -> bool:
        return bool(self.trimesh.is_watertight)

    def require_watertight(self, repair: bool = False) -> "ObjectModel":
        """Return self if the mesh is closed; else repair it (``repair=True``) or raise ValueError.

        Repair merges duplicate vertices, fixes winding/normals and fills holes with trimesh; the
        result is checked again and a ValueError is raised when it is still open.
        """
        if self.is_watertight:
            return self
        if not repair:
            raise ValueError(
                f"object mesh {self.name!r} is not watertight ({self._open_edges()} open edges): a signed "
                "distance is undefined. Use a closed mesh or call require_watertight(repair=True)")
        import trimesh

        m = self.trimesh.copy()
        m.merge_vertices()
        m.update_faces(m.nondegenerate_faces())
        m.update_faces(m.unique_faces())
        m.remove_unreferenced_vertices()
        trimesh.repair.fill_holes(m)
        trimesh.repair.fix_normals(m)
        if not m.is_watertight:
            raise ValueError(f"object mesh {self.name!r} is still not watertight after repair "
                             f"({_open_edge_count(m)} open edges)")
        # colours follow the vertices through a nearest-vertex lookup (repair may reindex)
        from scipy.spatial import cKDTree

        _, nn = cKDTree(np.asarray(self.trimesh.vertices)).query(np.asarray(m.vertices))
        self._colors = self._colors[nn]
        self._uv = None if self._uv is None else self._uv[nn]
        self.trimesh = m
        self._refresh()
        return self

    def _open_edges(self) -> int:
        return _open_edge_count(self.trimesh)

    @property
    def extents(self) -> torch.Tensor:
        """Axis-aligned bounding-box edge lengths ``(3,)`` in metres."""
        return torch.tensor(np.array(self.trimesh.extents), dtype=self.dtype, device=self.device)

    @property
    def diameter(self) -> float:
        """Largest distance between two vertices (metres), the usual ADD threshold reference."""
        hull = self.trimesh.convex_hull.vertices if len(self.trimesh.vertices) > 200 else self.trimesh.vertices
        hull = np.asarray(hull)
        d = np.linalg.norm(hull[:, None] - hull[None], axis=-1)
        return float(d.max())

    def surface_points(self, n: int, seed: int = 0) -> torch.Tensor:
        """``(n, 3)`` area-weighted samples of the surface, deterministic for a given ``seed``."""
        import trimesh

        pts, _ = trimesh.sample.sample_surface(self.trimesh, int(n), seed=seed)
        return torch.as_tensor(pts, dtype=self.dtype, device=self.device)

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, path, units: str = "auto", center: bool = False, name: Optional[str] = None,
             symmetric: bool = False, dtype=torch.float32, device=None) -> "ObjectModel":
        """Load OBJ/PLY/STL/GLB (anything trimesh reads) as one mesh.

        ``units``: ``"m"``, ``"mm"`` or ``"auto"`` (a largest extent above 2 means millimetres;
        the decision is reported with ``warnings.warn``). ``center``: move the bounding-box centre
        to the origin. Vertex colours are kept; a texture with UVs is kept and sampled at the
        vertices for ``vertex_colors``; otherwise the material colour or a default grey is used.
        """
        import trimesh

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"object mesh not found: {path}")
        if units not in ("m", "mm", "auto"):
            raise ValueError(f"units must be 'm', 'mm' or 'auto', got {units!r}")
        mesh = trimesh.load(str(path), force="mesh")
        if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
            raise ValueError(f"{path} contains no triangle mesh")
        colors, uv, texture = _extract_colors(mesh)
        if units == "auto":
            ext = float(np.max(mesh.extents))
            units = "mm" if ext > _AUTO_MM_THRESHOLD else "m"
            warnings.warn(f"{path.name}: units not given, guessed {units!r} from the largest extent {ext:.4g}; "
                          "pass units='m' or units='mm' to be explicit", stacklevel=2)
        if units == "mm":
            mesh.apply_scale(1e-3)
        if center:
            mesh.apply_translation(-mesh.bounds.mean(axis=0))
        return cls(mesh, name=name or path.stem, symmetric=symmetric, vertex_colors=colors, uv=uv,
                   texture=texture, dtype=dtype, device=device)

    @classmethod
    def builtin(cls, name: str, dtype=torch.float32, device=None) -> "ObjectModel":
        """A built-in procedural object: ``"cracker_box"`` or ``"soup_can"`` (module doc)."""
        if name == "cracker_box":
            mesh, colors = _cracker_box()
            return cls(mesh, name=name, symmetric=False, vertex_colors=colors, dtype=dtype, device=device)
        if name == "soup_can":
            mesh, colors = _soup_can()
            return cls(mesh, name=name, symmetric=True, vertex_colors=colors, dtype=dtype, device=device)
        raise ValueError(f"unknown built-in object {name!r}; available: {list(BUILTIN_OBJECTS)}")

    @classmethod
    def from_spec(cls, spec: str, **kwargs) -> "ObjectModel":
        """``"builtin:<name>"`` or a mesh file path (``kwargs`` go to :meth:`load`)."""
        spec = str(spec)
        if spec.startswith("builtin:"):
            extra = {k: v for k, v in kwargs.items() if k in ("dtype", "device")}
            return cls.builtin(spec[len("builtin:"):], **extra)
        if spec in BUILTIN_OBJECTS and not Path(spec).exists():
            raise ValueError(f"object spec {spec!r}: write 'builtin:{spec}' for the built-in object")
        return cls.load(spec, **kwargs)


# --------------------------------------------------------------------------------- helpers

def _open_edge_count(mesh) -> int:
    import trimesh

    edges = mesh.edges_sorted
    groups = trimesh.grouping.group_rows(edges, require_count=1)
    return int(len(groups))


def _extract_colors(mesh):
    """(vertex colours (V, 3) or None, uv (V, 2) or None, texture (H, W, 3) or None) of a mesh."""
    vis = mesh.visual
    kind = getattr(vis, "kind", None)
    if kind == "vertex":
        c = np.asarray(vis.vertex_colors)[:, :3].astype(float) / 255.0
        return c, None, None
    if kind == "face":
        fc = np.asarray(vis.face_colors)[:, :3].astype(float) / 255.0
        c = np.zeros((len(mesh.vertices), 3))
        cnt = np.zeros(len(mesh.vertices))
        for k in range(3):
            np.add.at(c, mesh.faces[:, k], fc)
            np.add.at(cnt, mesh.faces[:, k], 1)
        return c / np.maximum(cnt, 1)[:, None], None, None
    if kind == "texture":
        uv = getattr(vis, "uv", None)
        mat = getattr(vis, "material", None)
        image = getattr(mat, "image", None) if mat is not None else None
        if image is None and mat is not None and hasattr(mat, "baseColorTexture"):
            image = mat.baseColorTexture
        if image is not None and min(image.size) <= 2:
            image = None  # trimesh's placeholder when the texture file is missing
        uv = None if uv is None or len(uv) != len(mesh.vertices) else np.asarray(uv, float)
        if image is not None and uv is not None:
            tex = np.asarray(image.convert("RGB"), dtype=float) / 255.0
            H, W = tex.shape[:2]
            u = np.clip(np.round((uv[:, 0] % 1.0) * (W - 1)), 0, W - 1).astype(int)
            v = np.clip(np.round((1.0 - (uv[:, 1] % 1.0)) * (H - 1)), 0, H - 1).astype(int)
            return tex[v, u], uv, tex
        base = None
        if mat is not None:
            for attr in ("diffuse", "baseColorFactor", "main_color"):
                val = getattr(mat, attr, None)
                if val is not None:
                    base = np.asarray(val, float)[:3]
                    base = base / 255.0 if base.max() > 1.0 else base
                    break
        if base is not None:
            return np.tile(base, (len(mesh.vertices), 1)), uv, None
        return None, uv, None
    return None, None, None


def _cracker_box(extents=(0.16, 0.21, 0.07), subdivisions: int = 4):
    import trimesh

    mesh = trimesh.creation.box(extents=extents)
    for _ in range(subdivisions):  # 12 -> 3072 faces, stays watertight (shared midpoints)
        mesh = mesh.subdivide()
    v = np.asarray(mesh.vertices)
    half = np.asarray(extents) / 2.0
    ratio = np.abs(v) / half
    axis = ratio.argmax(axis=1)
    positive = v[np.arange(len(v)), axis] > 0
    side_colors = np.array([[[0.55, 0.1, 0.1], [0.9, 0.15, 0.1]],    # -x maroon, +x red
                            [[0.45, 0.45, 0.1], [0.1, 0.7, 0.2]],    # -y olive, +y green
                            [[0.95, 0.8, 0.1], [0.1, 0.25, 0.85]]])  # -z yellow, +z blue
    colors = side_colors[axis, positive.astype(int)]
    stripe = (axis == 2) & positive & (v[:, 1] > 0.03) & (v[:, 1] < 0.06)
    colors[stripe] = 0.95
    return mesh, colors


def _soup_can(radius: float = 0.034, height: float = 0.102, sections: int = 64, rings: int = 16):
    import trimesh

    h = height / 2.0
    radii = np.linspace(0.0, radius, 5)[1:]
    # profile in (r, z), revolved about z; lid rings give colour resolution on the caps
    profile = ([(0.0, -h)] + [(r, -h) for r in radii] + [(radius, z) for z in np.linspace(-h, h, rings + 1)[1:-1]]
               + [(r, h) for r in radii[::-1]] + [(0.0, h)])
    mesh = trimesh.creation.revolve(np.asarray(profile), sections=sections)
    mesh.merge_vertices()
    v = np.asarray(mesh.vertices)
    r = np.linalg.norm(v[:, :2], axis=1)
    on_side = (r > radius - 1e-6) & (np.abs(v[:, 2]) < h - 1e-6)
    colors = np.tile([0.75, 0.75, 0.78], (len(v), 1))                  # lids: grey
    colors[on_side & (v[:, 2] >= -0.01)] = [0.8, 0.1, 0.1]             # label: red upper band
    colors[on_side & (v[:, 2] < -0.01)] = [0.95, 0.95, 0.95]           # white lower band
    angle = np.arctan2(v[:, 1], v[:, 0])
    colors[on_side & (np.abs(angle) < 0.25)] = [0.1, 0.1, 0.6]          # marker stripe at +x
    return mesh, colors
