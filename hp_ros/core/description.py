"""Robot descriptions: load a URDF or a ``.xacro`` file and resolve its mesh URIs.

A small, dependency-light URDF parser (xml.etree) that keeps exactly what the hand model needs:
the kinematic tree (joint origins, axes, limits, types) and the visual/collision geometry of each
link (primitives and mesh files with scale). Forward kinematics lives in :mod:`hp_ros.core.hand`.

Mesh URIs are resolved in this order:

* ``package://pkg/rel/path``: through ``ament_index_python`` (``<share>/pkg/rel/path``) when the
  package is registered, else by looking for ``rel/path`` and ``pkg/rel/path`` under each folder of
  ``mesh_search_path`` (and under the description's own folder and its parent, which covers the
  usual ``<pkg>/urdf/x.urdf`` + ``<pkg>/meshes/...`` layout);
* ``file:///abs/path`` and absolute paths as they are;
* relative paths relative to the folder of the URDF/xacro file.

Xacro files are expanded with the ``xacro`` package (PyPI). A file that only *defines* a macro
(as Wonik's ``allegro_hand_description_right.xacro`` does) is instantiated by calling the macro:
``xacro_macro`` names it (default: the only macro in the file) and ``xacro_args`` gives its
parameters, e.g. ``{"prefix": "ah_"}`` as Wonik's bringup does.
"""
from __future__ import annotations

import os
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

__all__ = [
    "Geometry", "Link", "Joint", "RobotDescription", "load_description", "parse_urdf_string",
    "expand_xacro", "resolve_uri", "rpy_to_matrix", "origin_matrix",
]

XACRO_NS = "http://www.ros.org/wiki/xacro"


def rpy_to_matrix(rpy: Sequence[float]) -> np.ndarray:
    """URDF roll-pitch-yaw (fixed axes x, y, z: ``R = Rz(y) Ry(p) Rx(r)``) -> ``(3, 3)``."""
    r, p, y = (float(v) for v in rpy)
    cr, sr, cp, sp, cy, sy = np.cos(r), np.sin(r), np.cos(p), np.sin(p), np.cos(y), np.sin(y)
    Rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    Ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    Rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


def origin_matrix(xyz: Sequence[float] = (0, 0, 0), rpy: Sequence[float] = (0, 0, 0)) -> np.ndarray:
    """``(4, 4)`` float64 homogeneous transform from URDF ``xyz`` / ``rpy``."""
    T = np.eye(4)
    T[:3, :3] = rpy_to_matrix(rpy)
    T[:3, 3] = [float(v) for v in xyz]
    return T


@dataclass
class Geometry:
    """One visual or collision element of a link.

    ``kind`` is ``box`` (``size`` = 3 edge lengths), ``cylinder`` (``radius``, ``length``; axis z),
    ``sphere`` (``radius``), ``capsule`` (``radius``, ``length``; axis z) or ``mesh``
    (``filename`` as written, ``path`` resolved or None, ``scale`` (3,)).
    ``origin`` is the ``(4, 4)`` pose of the element in the link frame.
    """

    kind: str
    origin: np.ndarray
    size: Optional[np.ndarray] = None
    radius: Optional[float] = None
    length: Optional[float] = None
    filename: Optional[str] = None
    path: Optional[Path] = None
    scale: np.ndarray = field(default_factory=lambda: np.ones(3))
    rgba: Optional[np.ndarray] = None


@dataclass
class Link:
    name: str
    visuals: list = field(default_factory=list)
    collisions: list = field(default_factory=list)


@dataclass
class Joint:
    """A URDF joint; ``origin`` is ``T_parent_child`` at zero joint value, ``axis`` a unit (3,)."""

    name: str
    type: str
    parent: str
    child: str
    origin: np.ndarray
    axis: np.ndarray
    lower: float = -np.inf
    upper: float = np.inf


@dataclass
class RobotDescription:
    """Parsed robot: ``links`` in document order, ``joints`` in document order, ``root`` link."""

    name: str
    links: dict
    joints: list
    root: str
    source: Optional[Path] = None

    @property
    def actuated_joints(self) -> list:
        """Revolute/continuous/prismatic joints in document order (the canonical joint order)."""
        return [j for j in self.joints if j.type in ("revolute", "continuous", "prismatic")]

    def child_joints(self, link: str) -> list:
        return [j for j in self.joints if j.parent == link]


# ----------------------------------------------------------------------------- URI resolution

def _ament_share(package: str) -> Optional[Path]:
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        return None
    try:
        return Path(get_package_share_directory(package))
    except (PackageNotFoundError, KeyError, LookupError, ValueError, OSError):
        return None


def resolve_uri(uri: str, base_dir: Optional[Path] = None,
                search_path: Iterable = ()) -> Optional[Path]:
    """Resolve a URDF mesh URI to an existing file, or None when it cannot be found.

    ``base_dir`` is the folder of the description (for relative paths); ``search_path`` is a list
    of folders tried for ``package://`` URIs when ament_index does not know the package.
    """
    search = [Path(p) for p in search_path]
    if uri.startswith("package://"):
        rest = uri[len("package://"):]
        package, _, rel = rest.partition("/")
        candidates = []
        share = _ament_share(package)
        if share is not None:
            candidates.append(share / rel)
        roots = list(search)
        if base_dir is not None:
            roots += [Path(base_dir), Path(base_dir).parent]
        for root in roots:
            candidates += [root / rel, root / package / rel, root / Path(rel).name]
        for c in candidates:
            if c.is_file():
                return c.resolve()
        return None
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    p = Path(uri)
    if not p.is_absolute() and base_dir is not None:
        p = Path(base_dir) / p
    return p.resolve() if p.is_file() else None


# ----------------------------------------------------------------------------- xacro

def _xacro_macros(path: Path) -> list:
    root = ET.parse(path).getroot()
    return [el.get("name") for el in root.iter(f"{{{XACRO_NS}}}macro")]


def expand_xacro(path, mappings: Optional[dict] = None, xacro_macro: Optional[str] = None,
                 xacro_args: Optional[dict] = None) -> str:
    """Expand a ``.xacro`` file to URDF XML text with the ``xacro`` package.

    ``mappings`` are xacro arguments (``name:=value`` on the command line). When the expansion
    has no ``<link>`` (the file only defines macros), the macro ``xacro_macro`` (default: the only
    one defined) is instantiated with the attributes ``xacro_args``.
    """
    import xacro

    path = Path(path).resolve()
    mappings = {str(k): str(v) for k, v in (mappings or {}).items()}
    text = xacro.process_file(str(path), mappings=mappings).toxml()
    if "<link" in text and xacro_macro is None:
        return text
    macros = _xacro_macros(path)
    if xacro_macro is None:
        if len(macros) != 1:
            raise ValueError(f"{path} defines no links and macros {macros}: pass xacro_macro= to choose one")
        xacro_macro = macros[0]
    elif xacro_macro not in macros:
        raise ValueError(f"xacro macro {xacro_macro!r} not found in {path} (macros: {macros})")
    robot_name = ET.parse(path).getroot().get("name", "robot")
    attrs = " ".join(f'{k}="{v}"' for k, v in (xacro_args or {}).items())
    wrapper = (f'<?xml version="1.0"?>\n<robot xmlns:xacro="{XACRO_NS}" name="{robot_name}">\n'
               f'  <xacro:include filename="{path}"/>\n  <xacro:{xacro_macro} {attrs}/>\n</robot>\n')
    with tempfile.TemporaryDirectory(prefix="hp_ros_xacro_") as tmp:
        wrapper_path = Path(tmp) / "instantiate.urdf.xacro"
        wrapper_path.write_text(wrapper)
        return xacro.process_file(str(wrapper_path), mappings=mappings).toxml()


# ----------------------------------------------------------------------------- URDF parsing

def _floats(text: Optional[str], n: int, default) -> np.ndarray:
    if text is None:
        return np.array(default, dtype=float)
    vals = [float(v) for v in text.split()]
    if len(vals) != n:
        raise ValueError(f"expected {n} numbers, got {text!r}")
    return np.array(vals)


def _origin(el) -> np.ndarray:
    o = el.find("origin") if el is not None else None
    if o is None:
        return np.eye(4)
    return origin_matrix(_floats(o.get("xyz"), 3, (0, 0, 0)), _floats(o.get("rpy"), 3, (0, 0, 0)))


def _geometry(el, base_dir, search_path, materials, strict_meshes: bool) -> Optional[Geometry]:
    g = el.find("geometry")
    if g is None or len(g) == 0:
        return None
    shape = g[0]
    origin = _origin(el)
    rgba = None
    mat = el.find("material")
    if mat is not None:
        c = mat.find("color")
        if c is not None:
            rgba = _floats(c.get("rgba"), 4, (0.5, 0.5, 0.5, 1))
        elif mat.get("name") in materials:
            rgba = materials[mat.get("name")]
    tag = shape.tag
    if tag == "box":
        return Geometry("box", origin, size=_floats(shape.get("size"), 3, (0, 0, 0)), rgba=rgba)
    if tag in ("cylinder", "capsule"):
        return Geometry(tag, origin, radius=float(shape.get("radius")), length=float(shape.get("length")),
                        rgba=rgba)
    if tag == "sphere":
        return Geometry("sphere", origin, radius=float(shape.get("radius")), rgba=rgba)
    if tag == "mesh":
        filename = shape.get("filename")
        path = resolve_uri(filename, base_dir, search_path)
        if path is None and strict_meshes:
            raise FileNotFoundError(
                f"mesh {filename!r} not found (description folder {base_dir}, search path "
                f"{[str(p) for p in search_path]}); pass mesh_search_path=[...] with the folder that "
                "holds the package or its meshes")
        scale = _floats(shape.get("scale"), 3, (1, 1, 1)) if shape.get("scale") else np.ones(3)
        return Geometry("mesh", origin, filename=filename, path=path, scale=scale, rgba=rgba)
    raise ValueError(f"unsupported URDF geometry <{tag}>")


def parse_urdf_string(text: str, base_dir=None, mesh_search_path: Iterable = (),
                      strict_meshes: bool = True, source=None) -> RobotDescription:
    """Parse URDF XML text into a :class:`RobotDescription` (see the module doc for URIs)."""
    root = ET.fromstring(text)
    if root.tag != "robot":
        raise ValueError(f"not a URDF: root element is <{root.tag}>, expected <robot>")
    search = [Path(p) for p in mesh_search_path]
    base_dir = Path(base_dir) if base_dir is not None else None
    materials = {}
    for m in root.findall("material"):
        c = m.find("color")
        if c is not None:
            materials[m.get("name")] = _floats(c.get("rgba"), 4, (0.5, 0.5, 0.5, 1))
    links = {}
    for el in root.findall("link"):
        link = Link(el.get("name"))
        for v in el.findall("visual"):
            geo = _geometry(v, base_dir, search, materials, strict_meshes)
            if geo is not None:
                link.visuals.append(geo)
        for c in el.findall("collision"):
            geo = _geometry(c, base_dir, search, materials, strict_meshes)
            if geo is not None:
                link.collisions.append(geo)
        links[link.name] = link
    joints = []
    for el in root.findall("joint"):
        jtype = el.get("type")
        if jtype not in ("fixed", "revolute", "continuous", "prismatic"):
            raise ValueError(f"joint {el.get('name')!r}: unsupported type {jtype!r}")
        axis_el = el.find("axis")
        axis = _floats(axis_el.get("xyz") if axis_el is not None else None, 3, (1, 0, 0))
        n = np.linalg.norm(axis)
        if n == 0:
            raise ValueError(f"joint {el.get('name')!r} has a zero axis")
        lim = el.find("limit")
        lower, upper = -np.inf, np.inf
        if lim is not None and jtype != "continuous":
            lower = float(lim.get("lower", "-inf"))
            upper = float(lim.get("upper", "inf"))
        parent, child = el.find("parent").get("link"), el.find("child").get("link")
        for ln in (parent, child):
            if ln not in links:
                raise ValueError(f"joint {el.get('name')!r} refers to unknown link {ln!r}")
        joints.append(Joint(el.get("name"), jtype, parent, child, _origin(el), axis / n, lower, upper))
    children = {j.child for j in joints}
    roots = [name for name in links if name not in children]
    if len(roots) != 1:
        raise ValueError(f"URDF must have exactly one root link, found {roots}")
    return RobotDescription(root.get("name", "robot"), links, joints, roots[0],
                            Path(source) if source else None)


def load_description(path, mesh_search_path: Iterable = (), xacro_mappings: Optional[dict] = None,
                     xacro_macro: Optional[str] = None, xacro_args: Optional[dict] = None,
                     strict_meshes: bool = True) -> RobotDescription:
    """Load a ``.urdf`` or ``.xacro`` file (see the module doc).

    ``mesh_search_path``: folders searched for ``package://`` meshes (also read from the
    ``HP_ROS_MESH_PATH`` environment variable, ``os.pathsep``-separated). ``strict_meshes``: raise
    when a mesh file cannot be found (else its ``Geometry.path`` is None and it is skipped).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"robot description not found: {path}")
    search = [Path(p) for p in mesh_search_path]
    env = os.environ.get("HP_ROS_MESH_PATH")
    if env:
        search += [Path(p) for p in env.split(os.pathsep) if p]
    if path.suffix == ".xacro":
        text = expand_xacro(path, xacro_mappings, xacro_macro, xacro_args)
    else:
        text = path.read_text()
    return parse_urdf_string(text, path.parent.resolve(), search, strict_meshes, source=path)
