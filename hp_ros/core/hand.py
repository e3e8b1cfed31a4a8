"""Allegro hand model: batched differentiable forward kinematics, surface points, posed mesh,
joint-name schemes and JointState handling.

Frames and conventions
----------------------
* ``base`` arguments are poses ``T_parent_handbase`` ``(B, 4, 4)``; the *hand base* is the palm
  link (``ah_palm_link`` / SimLab ``base_link``) unless ``base_link=`` says otherwise. With
  ``base = T_cam_palm`` every output is in the camera frame; with ``base=None`` it is in the
  hand-base frame.
* Joint vectors ``q`` are ``(B, J)`` (J = 16 for the Allegro) in the model's canonical order =
  the order of the actuated joints in the URDF (``hand.joint_names``). For the project URDF that
  is ah_joint00..03 (thumb), 10..13 (index), 20..23 (middle), 30..33 (ring).
* Fingertips are the origins of the fingertip links, ordered **thumb, index, middle, ring**
  (``hand.fingertip_links``, e.g. ah_link_04, ah_link_14, ah_link_24, ah_link_34).
* Palm side / contact candidates: fingers close towards +x of the palm frame. Candidates are
  surface points whose normal is within ~72 deg of the "pad direction": +x on the palm
  (``palm_normal``), ``axis x z`` (= +x for the Allegro) on links driven by a flexion joint (axis
  +-y) and on their fixed children (fingertips). Thumb links 00/01 (abduction/rotation) and the
  finger base links (yaw, axis z) carry no candidates.

Everything is differentiable with respect to ``q`` and ``base`` (plain torch ops; the URDF's
static transforms are precomputed, each kinematic depth level costs one batched matmul).

Modules: this one (:class:`HandModel`); :mod:`.hand_naming` (naming schemes, JointState mapping;
its names are importable from here too).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch

from .description import Geometry, RobotDescription, load_description
from .hand_naming import FINGERS, JointNaming, JointStateMapper, _as_naming

__all__ = ["FINGERS", "JointNaming", "JointStateMapper", "HandModel", "default_urdf_path"]


def default_urdf_path() -> Path:
    """The project URDF: next to the package (source tree) or in share/hp_ros/urdf (installed)."""
    name = "allegro_hand_right.urdf"
    here = Path(__file__).resolve().parents[2] / "urdf" / name
    if here.is_file():
        return here
    try:
        from ament_index_python.packages import get_package_share_directory
        shared = Path(get_package_share_directory("hp_ros")) / "urdf" / name
        if shared.is_file():
            return shared
    except Exception:  # ament index absent or package not registered
        pass
    import sys
    installed = Path(sys.prefix) / "share" / "hp_ros" / "urdf" / name
    if installed.is_file():
        return installed
    raise FileNotFoundError(f"{name} not found next to the hp_ros package nor in share/hp_ros/urdf")


def _skew(a: np.ndarray) -> np.ndarray:
    return np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])


def _geometry_mesh(geo: Geometry):
    """trimesh.Trimesh of one URDF geometry element in its link frame (None if unavailable)."""
    import trimesh

    if geo.kind == "box":
        m = trimesh.creation.box(extents=geo.size)
    elif geo.kind == "cylinder":
        m = trimesh.creation.cylinder(radius=geo.radius, height=geo.length, sections=24)
    elif geo.kind == "capsule":
        m = trimesh.creation.capsule(radius=geo.radius, height=geo.length, count=[24, 12])
    elif geo.kind == "sphere":
        m = trimesh.creation.icosphere(subdivisions=2, radius=geo.radius)
    elif geo.kind == "mesh":
        if geo.path is None:
            return None
        m = trimesh.load(str(geo.path), force="mesh")  # process=True merges STL's per-face vertices
        m = trimesh.Trimesh(np.asarray(m.vertices, float) * geo.scale, np.asarray(m.faces), process=False)
    else:
        return None
    m.apply_transform(geo.origin)
    return m


class HandModel:
    """Kinematic + geometric model of a hand from a URDF (see the module doc for frames).

    Attributes: ``joint_names`` (J,), ``link_names`` (L,), ``fingertip_links`` (4,),
    ``base_link``, ``naming``; ``point_link_ids`` (N,) long, ``contact_candidates`` (K,) long.
    """

    def __init__(self, description: RobotDescription, naming=None, base_link: Optional[str] = None,
                 n_surface_points: int = 2000, geometry: str = "visual", seed: int = 0,
                 device=None, dtype=torch.float32, palm_normal=(1.0, 0.0, 0.0)):
        if geometry not in ("visual", "collision"):
            raise ValueError(f"geometry must be 'visual' or 'collision', got {geometry!r}")
        self.description = description
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        self.geometry = geometry
        self.seed = seed
        self.n_surface_points = int(n_surface_points)

        rl = self._adopt_names(description, naming)
        base_urdf = self._base_link_urdf(description, base_link, rl)
        self.base_link = rl(base_urdf)
        self._build_kinematics(description, self._base_from_root(description, base_urdf))

        lower = np.array([j.lower for j in description.actuated_joints])
        upper = np.array([j.upper for j in description.actuated_joints])
        self._np.update(lower=lower, upper=upper)

        # ---- names of interest ------------------------------------------------------------
        self.fingertip_links = (self.naming.fingertip_links if self.naming is not None else [])
        for t in self.fingertip_links:
            if t not in self.link_names:
                raise ValueError(f"fingertip link {t!r} not in the model {self.link_names}")

        # ---- geometry: per-link meshes, surface samples, contact candidates --------------
        self._build_geometry(palm_normal)
        self._to_torch()

    def _adopt_names(self, description: RobotDescription, naming):
        """Set ``naming``, ``joint_names`` and ``link_names`` (the URDF's, or translated to ``naming``'s
        scheme) and the URDF's own; returns the URDF link name -> model link name function."""
        urdf_joints = [j.name for j in description.actuated_joints]
        urdf_naming = JointNaming.detect(urdf_joints)
        naming = _as_naming(naming)
        rename_joint, rename_link = {}, {}
        if naming is not None and urdf_naming is None:
            raise ValueError(f"naming={naming.scheme!r} requested but the URDF joints {urdf_joints} "
                             "follow neither the Wonik nor the SimLab scheme")
        if naming is not None and naming != urdf_naming:
            for jn in urdf_joints:
                rename_joint[jn] = urdf_naming.translate_joint(jn, naming)
            for ln in description.links:
                t = urdf_naming.translate_link(ln, naming)
                if t is not None:
                    rename_link[ln] = t
        self.naming = naming if naming is not None else urdf_naming
        self._urdf_naming = urdf_naming
        rl = lambda n: rename_link.get(n, n)  # noqa: E731

        self.link_names = [rl(n) for n in description.links]
        self._urdf_link_names = list(description.links)
        self.joint_names = [rename_joint.get(n, n) for n in urdf_joints]
        return rl

    def _base_link_urdf(self, description: RobotDescription, base_link: Optional[str], rl) -> str:
        """The URDF name of the hand base: ``base_link`` (a model link name); by default the palm link
        of the URDF's naming scheme, else the link carrying most actuated chains."""
        if base_link is None:
            if self._urdf_naming is not None and self._urdf_naming.palm_link in self._urdf_link_names:
                return self._urdf_naming.palm_link
            # the link carrying most actuated chains
            counts = {}
            for j in description.actuated_joints:
                counts[j.parent] = counts.get(j.parent, 0) + 1
            return max(counts, key=counts.get) if counts else description.root
        inv = {rl(n): n for n in description.links}
        if base_link not in inv:
            raise ValueError(f"base_link {base_link!r} is not a link of the model: {self.link_names}")
        return inv[base_link]

    def _base_from_root(self, description: RobotDescription, base_urdf: str) -> np.ndarray:
        """``T_base_root`` ``(4, 4)`` through fixed joints only (the base must not move with q)."""
        parent_joint = {j.child: j for j in description.joints}
        T_root_base = np.eye(4)
        name = base_urdf
        while name != description.root:
            j = parent_joint[name]
            if j.type != "fixed":
                raise ValueError(f"base_link {self.base_link!r} moves with joint {j.name!r}; choose a link "
                                 "rigidly attached to the URDF root")
            T_root_base = j.origin @ T_root_base
            name = j.parent
        return np.linalg.inv(T_root_base)

    def _build_kinematics(self, description: RobotDescription, T_base_root: np.ndarray):
        """The kinematic tree as arrays: per-link local transform factors (``_np``: O, OA, OB, OC),
        the joint driving each link (``_q_index``) and each joint's child (``_joint_child``), the
        links grouped by depth (``_levels``) and the permutation back to link order."""
        link_idx = {n: i for i, n in enumerate(self._urdf_link_names)}
        jidx = {j.name: i for i, j in enumerate(description.actuated_joints)}
        J, L = len(self.joint_names), len(self.link_names)
        parent_joint = {j.child: j for j in description.joints}
        root = link_idx[description.root]
        depth = np.zeros(L, dtype=int)
        parent = np.full(L, -1)
        for i, n in enumerate(self._urdf_link_names):
            d, cur = 0, n
            while cur in parent_joint:
                cur = parent_joint[cur].parent
                d += 1
            depth[i] = d
            if n in parent_joint:
                parent[i] = link_idx[parent_joint[n].parent]
        # per-link local transform: O + sin(q) OA + (1 - cos(q)) OB + q OC (O = joint origin)
        O = np.tile(np.eye(4), (L, 1, 1))
        OA, OB, OC = np.zeros((L, 4, 4)), np.zeros((L, 4, 4)), np.zeros((L, 4, 4))
        q_index = np.zeros(L, dtype=int)
        self._joint_child = np.zeros(J, dtype=int)
        for i, n in enumerate(self._urdf_link_names):
            if i == root:
                O[i] = T_base_root  # the root is posed as base @ T_base_root
                continue
            j = parent_joint[n]
            O[i] = j.origin
            if j.type in ("revolute", "continuous"):
                K = np.zeros((4, 4))
                K[:3, :3] = _skew(j.axis)
                OA[i], OB[i] = j.origin @ K, j.origin @ (K @ K)
                q_index[i] = jidx[j.name]
                self._joint_child[jidx[j.name]] = i
            elif j.type == "prismatic":
                C = np.zeros((4, 4))
                C[:3, 3] = j.axis
                OC[i] = j.origin @ C
                q_index[i] = jidx[j.name]
                self._joint_child[jidx[j.name]] = i
        self._np = dict(O=O, OA=OA, OB=OB, OC=OC)
        self._q_index = q_index
        self._levels = []  # (link indices at depth d, their parents' positions in level d-1)
        pos_in_level = {}
        for d in range(depth.max() + 1):
            members = [i for i in range(L) if depth[i] == d]
            for p, i in enumerate(members):
                pos_in_level[i] = p
            parents = [pos_in_level[parent[i]] for i in members] if d > 0 else []
            self._levels.append((members, parents))
        order = [i for members, _ in self._levels for i in members]
        self._inv_order = np.argsort(order)
        self._root = root

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def from_urdf(cls, path, naming=None, mesh_search_path: Iterable = (), n_surface_points: int = 2000,
                  device=None, dtype=torch.float32, base_link: Optional[str] = None, geometry: str = "visual",
                  xacro_args: Optional[dict] = None, xacro_mappings: Optional[dict] = None,
                  xacro_macro: Optional[str] = None, seed: int = 0) -> "HandModel":
        """Model from a ``.urdf`` or ``.xacro`` file (see :func:`hp_ros.core.description.load_description`).

        ``naming``: ``"wonik"`` / ``"simlab"`` renames joints and links to that scheme; None keeps
        the URDF's names. For a ``.xacro`` that only defines a macro without ``xacro_args``, the
        Wonik bringup prefix ``{"prefix": "ah_"}`` is used.
        """
        path = Path(path)
        if path.suffix == ".xacro" and xacro_args is None:
            xacro_args = {"prefix": "ah_"}
        desc = load_description(path, mesh_search_path=mesh_search_path, xacro_mappings=xacro_mappings,
                                xacro_macro=xacro_macro, xacro_args=xacro_args)
        return cls(desc, naming=naming, base_link=base_link, n_surface_points=n_surface_points,
                   geometry=geometry, seed=seed, device=device, dtype=dtype)

    @classmethod
    def default(cls, naming: str = "wonik", **kwargs) -> "HandModel":
        """The project's Allegro v4 right hand with primitive geometry (no mesh files needed)."""
        return cls.from_urdf(default_urdf_path(), naming=naming, **kwargs)

    def to(self, device=None, dtype=None) -> "HandModel":
        """Move/cast the model's tensors in place (returns self)."""
        if device is not None:
            self.device = torch.device(device)
        if dtype is not None:
            self.dtype = dtype
        self._to_torch()
        return self

    def _build_geometry(self, palm_normal):
        import trimesh

        meshes, vert_ids, colors = [], [], []
        self.link_colors = np.full((len(self.link_names), 3), 0.5)
        for i, ln in enumerate(self._urdf_link_names):
            link = self.description.links[ln]
            geos = link.visuals if self.geometry == "visual" else link.collisions
            parts = [m for m in (_geometry_mesh(g) for g in geos) if m is not None]
            rgba = next((g.rgba for g in geos if g.rgba is not None), None)
            if rgba is not None:
                self.link_colors[i] = rgba[:3]
            if parts:
                m = trimesh.util.concatenate(parts) if len(parts) > 1 else parts[0]
                meshes.append(m)
                vert_ids.append(np.full(len(m.vertices), i))
        if not meshes:
            raise ValueError("the robot description has no usable geometry (missing mesh files?)")
        offsets = np.cumsum([0] + [len(m.vertices) for m in meshes])
        verts = np.concatenate([m.vertices for m in meshes])
        faces = np.concatenate([np.asarray(m.faces) + o for m, o in zip(meshes, offsets[:-1])])
        vids = np.concatenate(vert_ids)
        hand = trimesh.Trimesh(verts, faces, process=False)
        pts, fidx = trimesh.sample.sample_surface(hand, self.n_surface_points, seed=self.seed)
        pids = vids[faces[fidx, 0]]
        normals = hand.face_normals[fidx]
        order = np.argsort(pids, kind="stable")  # link-major order
        self._np.update(mesh_verts=verts, mesh_faces=faces, mesh_vert_ids=vids,
                        points=pts[order], point_ids=pids[order], point_normals=normals[order])

        # contact candidates: palm front + pads of flexing links (and their fixed children)
        pad_dir = {}
        parent_joint = {j.child: j for j in self.description.joints}
        for ln in self._urdf_link_names:
            j = parent_joint.get(ln)
            if j is None:
                continue
            if j.type in ("revolute", "continuous"):
                if abs(j.axis[1]) > 0.9:  # a flexion joint (Allegro: axis +-y, phalanx along +z)
                    d = np.cross(j.axis, [0.0, 0.0, 1.0])
                    pad_dir[ln] = d / np.linalg.norm(d)
            elif j.type == "fixed" and j.parent in pad_dir:
                pad_dir[ln] = j.origin[:3, :3].T @ pad_dir[j.parent]
        base_urdf = self._urdf_link_names[self.link_names.index(self.base_link)]
        pad_dir[base_urdf] = np.asarray(palm_normal, float)
        ids, normals = self._np["point_ids"], self._np["point_normals"]
        dirs = np.zeros_like(normals)
        has = np.zeros(len(ids), dtype=bool)
        for ln, d in pad_dir.items():
            sel = ids == self._urdf_link_names.index(ln)
            dirs[sel] = d
            has[sel] = True
        self._np["contact"] = np.nonzero(has & ((normals * dirs).sum(-1) > 0.3))[0]

    def _to_torch(self):
        kw = dict(device=self.device, dtype=self.dtype)
        n = self._np
        self._O, self._OA, self._OB, self._OC = (torch.as_tensor(n[k], **kw) for k in ("O", "OA", "OB", "OC"))
        li = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.long, device=self.device)  # noqa: E731
        self._q_index_t = li(self._q_index)
        self._levels_t = [(li(m), li(p)) for m, p in self._levels]
        self._inv_order_t = li(self._inv_order)
        self._lower = torch.as_tensor(n["lower"], **kw)
        self._upper = torch.as_tensor(n["upper"], **kw)
        self._points = torch.as_tensor(n["points"], **kw)
        self._point_normals = torch.as_tensor(n["point_normals"], **kw)
        self.point_link_ids = li(n["point_ids"])
        self.contact_candidates = li(n["contact"])
        self._mesh_verts = torch.as_tensor(n["mesh_verts"], **kw)
        self.mesh_faces = li(n["mesh_faces"])
        self.mesh_vert_link_ids = li(n["mesh_vert_ids"])
        self._tip_idx = li([self.link_names.index(t) for t in self.fingertip_links])

    # ----------------------------------------------------------------------------- properties
    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    @property
    def num_links(self) -> int:
        return len(self.link_names)

    @property
    def joint_limits(self):
        """(lower ``(J,)``, upper ``(J,)``) in the model's dtype/device (±inf for continuous)."""
        return self._lower, self._upper

    def clamp(self, q: torch.Tensor) -> torch.Tensor:
        """Clamp ``q`` ``(..., J)`` into the joint limits (differentiable inside the limits)."""
        return torch.maximum(torch.minimum(q, self._upper), self._lower)

    def link_index(self, name: str) -> int:
        try:
            return self.link_names.index(name)
        except ValueError:
            raise ValueError(f"unknown link {name!r}; links: {self.link_names}") from None

    def joint_state_mapper(self, accept: Iterable[str] = JointNaming.SCHEMES, initial=None) -> JointStateMapper:
        """A :class:`JointStateMapper` for this model's joint order."""
        return JointStateMapper(self.joint_names, self.naming, accept=accept, initial=initial)

    def zero_q(self, batch: int = 1) -> torch.Tensor:
        """A ``(batch, J)`` in-limit configuration (0 clamped into the limits)."""
        return self.clamp(torch.zeros(batch, self.num_joints, device=self.device, dtype=self.dtype))

    # ----------------------------------------------------------------------------- kinematics
    def _check(self, q: torch.Tensor, base: Optional[torch.Tensor]):
        if q.dim() != 2 or q.shape[1] != self.num_joints:
            raise ValueError(f"q must have shape (B, {self.num_joints}), got {tuple(q.shape)}")
        if base is not None and (base.dim() != 3 or base.shape[1:] != (4, 4) or base.shape[0] not in (1, q.shape[0])):
            raise ValueError(f"base must have shape (B, 4, 4) or (1, 4, 4) with B={q.shape[0]}, got {tuple(base.shape)}")

    def forward_kinematics(self, q: torch.Tensor, base: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Link poses ``(B, L, 4, 4)`` (order ``link_names``) in the parent frame of ``base``.

        ``q`` ``(B, J)``; ``base`` ``(B, 4, 4)`` = T_parent_handbase or None (identity).
        """
        self._check(q, base)
        qs = q[:, self._q_index_t]                       # (B, L)
        s = torch.sin(qs)[..., None, None]
        c = torch.cos(qs)[..., None, None]
        local = self._O + s * self._OA + (1 - c) * self._OB + qs[..., None, None] * self._OC  # (B, L, 4, 4)
        members0, _ = self._levels_t[0]
        world = local[:, members0]
        if base is not None:
            world = base[:, None] @ world
        out = [world]
        for members, parents in self._levels_t[1:]:
            world = world[:, parents] @ local[:, members]
            out.append(world)
        return torch.cat(out, dim=1)[:, self._inv_order_t]

    def _pose_points(self, T: torch.Tensor, pts: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        Tp = T[:, ids]                                       # (B, N, 4, 4)
        return (Tp[..., :3, :3] @ pts[..., None])[..., 0] + Tp[..., :3, 3]

    def surface_points(self, q: torch.Tensor, base: Optional[torch.Tensor] = None,
                       link_poses: Optional[torch.Tensor] = None, return_normals: bool = False):
        """Posed surface samples ``(B, N, 3)`` (N = n_surface_points, link-major order,
        ``point_link_ids`` gives their links); with ``return_normals`` also unit normals ``(B, N, 3)``.
        Pass ``link_poses`` (from :meth:`forward_kinematics`) to avoid recomputing FK."""
        T = self.forward_kinematics(q, base) if link_poses is None else link_poses
        pts = self._pose_points(T, self._points, self.point_link_ids)
        if not return_normals:
            return pts
        R = T[:, self.point_link_ids, :3, :3]
        return pts, (R @ self._point_normals[..., None])[..., 0]

    @property
    def local_surface_points(self) -> torch.Tensor:
        """Surface samples ``(N, 3)`` in their own link frames."""
        return self._points

    def fingertips(self, q: torch.Tensor, base: Optional[torch.Tensor] = None,
                   link_poses: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Fingertip link origins ``(B, 4, 3)`` ordered thumb, index, middle, ring."""
        T = self.forward_kinematics(q, base) if link_poses is None else link_poses
        return T[:, self._tip_idx, :3, 3]

    def posed_mesh(self, q: torch.Tensor, base: Optional[torch.Tensor] = None,
                   link_poses: Optional[torch.Tensor] = None):
        """Whole-hand triangle mesh: (verts ``(B, V, 3)``, faces ``(F, 3)`` long, vert_link_ids ``(V,)``)."""
        T = self.forward_kinematics(q, base) if link_poses is None else link_poses
        verts = self._pose_points(T, self._mesh_verts, self.mesh_vert_link_ids)
        return verts, self.mesh_faces, self.mesh_vert_link_ids

    def random_q(self, batch: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Uniform random in-limit configurations ``(batch, J)``."""
        u = torch.rand(batch, self.num_joints, generator=generator, dtype=self.dtype).to(self.device)
        lo, hi = self._lower.clamp(min=-np.pi), self._upper.clamp(max=np.pi)
        return lo + u * (hi - lo)
