"""Object model: built-ins, loading, units, centring, watertightness, colours."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import trimesh

from hp_ros.core.objects import ObjectModel


@pytest.mark.parametrize("name,extents,volume", [
    ("cracker_box", (0.16, 0.21, 0.07), 0.16 * 0.21 * 0.07),
    ("soup_can", (0.068, 0.068, 0.102), np.pi * 0.034 ** 2 * 0.102),
])
def test_builtin_geometry(name, extents, volume):
    obj = ObjectModel.builtin(name)
    assert obj.is_watertight and obj.require_watertight() is obj
    assert 2000 <= obj.faces.shape[0] <= 6000
    assert torch.allclose(obj.extents, torch.tensor(extents, dtype=torch.float32), atol=1e-6)
    assert np.allclose(obj.trimesh.bounds.mean(0), 0.0, atol=1e-9)
    # revolve approximates the circle by a 64-gon: volume within 0.5 %
    assert obj.trimesh.volume == pytest.approx(volume, rel=5e-3)
    assert obj.vertex_colors.shape == obj.vertices.shape
    assert obj.faces.dtype == torch.long and obj.faces.max() < obj.vertices.shape[0]
    assert obj.symmetric == (name == "soup_can")
    assert obj.diameter == pytest.approx(float(np.linalg.norm(extents)) if name == "cracker_box"
                                         else float(np.hypot(0.068, 0.102)), rel=2e-3)


def test_cracker_box_colours_distinguish_rotations():
    """Each side has its own colour, and the +z face has an off-centre stripe."""
    obj = ObjectModel.builtin("cracker_box")
    v, c = obj.vertices.double(), obj.vertex_colors.double()
    half = torch.tensor([0.08, 0.105, 0.035], dtype=torch.float64)
    side_means = []
    for axis in range(3):
        for sign in (-1, 1):
            # face interior (away from edges, where colours blend)
            sel = (v[:, axis] * sign > half[axis] - 1e-6)
            others = [a for a in range(3) if a != axis]
            for a in others:
                sel &= v[:, a].abs() < half[a] - 0.015
            sel &= ~((c - 0.95).abs().max(-1).values < 1e-6)  # ignore the stripe
            assert sel.sum() > 3
            side_means.append(c[sel].mean(0))
    M = torch.stack(side_means)
    d = torch.cdist(M, M) + torch.eye(6) * 10
    assert d.min() > 0.2  # all six sides differ clearly
    stripe = (c - 0.95).abs().max(-1).values < 1e-6
    assert stripe.sum() > 5 and (v[stripe, 2] > 0.0349).all() and (v[stripe, 1] > 0.02).all()


def test_soup_can_marker_stripe():
    obj = ObjectModel.builtin("soup_can")
    v, c = obj.vertices, obj.vertex_colors
    blue = (c - torch.tensor([0.1, 0.1, 0.6])).abs().max(-1).values < 1e-6
    assert blue.sum() > 10
    ang = torch.atan2(v[blue, 1], v[blue, 0])
    assert ang.abs().max() < 0.26  # only on the +x side: roll about the axis is observable


def test_surface_points_are_on_surface_and_seeded():
    obj = ObjectModel.builtin("cracker_box")
    p = obj.surface_points(1000, seed=3)
    assert p.shape == (1000, 3)
    assert torch.equal(p, obj.surface_points(1000, seed=3))
    assert not torch.equal(p, obj.surface_points(1000, seed=4))
    half = torch.tensor([0.08, 0.105, 0.035])
    on_face = ((p.abs() - half).abs() < 1e-6).any(-1)
    assert on_face.all() and (p.abs() <= half + 1e-6).all()
    # area weighting: fraction of points on the two z faces ~ their area share
    frac = ((p[:, 2].abs() - 0.035).abs() < 1e-6).float().mean().item()
    area_z = 2 * 0.16 * 0.21
    total = area_z + 2 * 0.16 * 0.07 + 2 * 0.21 * 0.07
    assert frac == pytest.approx(area_z / total, abs=0.05)


def _write_mesh(tmp_path, name, mesh):
    path = tmp_path / name
    mesh.export(str(path))
    return path


def test_load_units_centre_and_colours(tmp_path):
    box = trimesh.creation.box(extents=(40.0, 60.0, 20.0))  # millimetres
    box.apply_translation((100.0, 0.0, 5.0))
    box.visual.vertex_colors = np.tile([255, 0, 0, 255], (len(box.vertices), 1))
    path = _write_mesh(tmp_path, "box_mm.ply", box)
    with pytest.warns(UserWarning, match="guessed 'mm'"):
        obj = ObjectModel.load(path)
    assert torch.allclose(obj.extents, torch.tensor([0.04, 0.06, 0.02]), atol=1e-6)
    assert np.allclose(obj.trimesh.bounds.mean(0), [0.1, 0.0, 0.005], atol=1e-6)
    assert torch.allclose(obj.vertex_colors, torch.tensor([1.0, 0.0, 0.0]).expand_as(obj.vertex_colors))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        centred = ObjectModel.load(path, units="mm", center=True)
    assert np.allclose(centred.trimesh.bounds.mean(0), 0.0, atol=1e-9)
    assert centred.name == "box_mm"
    metres = ObjectModel.load(path, units="m")
    assert metres.extents.max().item() == pytest.approx(60.0)
    with pytest.warns(UserWarning, match="guessed 'm'"):
        small = ObjectModel.load(_write_mesh(tmp_path, "small.stl", trimesh.creation.box(extents=(0.1, 0.1, 0.1))))
    assert small.extents.max().item() == pytest.approx(0.1)
    with pytest.raises(ValueError, match="units must be"):
        ObjectModel.load(path, units="cm")
    with pytest.raises(FileNotFoundError):
        ObjectModel.load(tmp_path / "missing.obj")


def test_texture_is_sampled_at_vertices(tmp_path):
    from PIL import Image

    tex = np.zeros((8, 8, 3), dtype=np.uint8)
    tex[:, :4] = [255, 0, 0]    # left half red (u < 0.5)
    tex[:, 4:] = [0, 0, 255]    # right half blue
    mesh = trimesh.Trimesh(vertices=[[0, 0, 0], [0.1, 0, 0], [0, 0.1, 0], [0.1, 0.1, 0]],
                           faces=[[0, 1, 2], [1, 3, 2]], process=False)
    uv = np.array([[0.1, 0.5], [0.9, 0.5], [0.1, 0.9], [0.9, 0.9]])
    mesh.visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray(tex))
    path = tmp_path / "quad.glb"
    mesh.export(str(path))
    obj = ObjectModel.load(path, units="m")
    assert obj.texture is not None and obj.texture.shape == (8, 8, 3) and obj.uv.shape[1] == 2
    red = torch.tensor([1.0, 0.0, 0.0])
    blue = torch.tensor([0.0, 0.0, 1.0])
    for vi in range(len(obj.vertices)):
        expected = red if obj.uv[vi, 0] < 0.5 else blue
        assert torch.allclose(obj.vertex_colors[vi], expected, atol=1e-6)
    assert not obj.is_watertight


def test_watertight_refusal_and_repair():
    box = trimesh.creation.box(extents=(0.1, 0.1, 0.1))
    open_box = trimesh.Trimesh(box.vertices, box.faces[:-1], process=False)  # one triangle missing
    obj = ObjectModel(open_box, name="open_box")
    assert not obj.is_watertight
    with pytest.raises(ValueError, match="open_box.*not watertight.*3 open edges.*repair=True"):
        obj.require_watertight()
    assert obj.require_watertight(repair=True) is obj
    assert obj.is_watertight and obj.faces.shape[0] == 12
    assert obj.trimesh.volume == pytest.approx(1e-3, rel=1e-6)
    plane = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], [[0, 1, 2], [1, 3, 2]], process=False)
    with pytest.raises(ValueError, match="still not watertight"):
        ObjectModel(plane, name="sheet").require_watertight(repair=True)


def test_from_spec(tmp_path):
    assert ObjectModel.from_spec("builtin:soup_can").name == "soup_can"
    path = _write_mesh(tmp_path, "b.obj", trimesh.creation.box(extents=(0.05, 0.05, 0.05)))
    assert ObjectModel.from_spec(str(path), units="m").faces.shape[0] == 12
    with pytest.raises(ValueError, match="unknown built-in object 'mug'"):
        ObjectModel.from_spec("builtin:mug")
    with pytest.raises(ValueError, match="builtin:cracker_box"):
        ObjectModel.from_spec("cracker_box")


def test_dtype_and_device():
    obj = ObjectModel.builtin("soup_can", dtype=torch.float64)
    assert obj.vertices.dtype == torch.float64 and obj.vertex_colors.dtype == torch.float64
    obj.to(dtype=torch.float32)
    assert obj.vertices.dtype == torch.float32 and obj.surface_points(5).dtype == torch.float32


@pytest.mark.shared_data
def test_ycb_meshes_units(shared_data):
    mm = shared_data / "ycb" / "bop_ycbv_happypose" / "obj_000002.ply"
    m = shared_data / "ycb" / "eleramp_ycbv_reoriented" / "YcbCrackerBox" / "textured_simple_reoriented.obj"
    a = ObjectModel.load(mm, units="mm")
    b = ObjectModel.load(m, units="m")
    # documented in SOURCES.md: BOP vertices = eleramp vertices - (0.029424, -0.0117005, -0.0048365) m
    assert torch.allclose(torch.sort(a.extents).values, torch.sort(b.extents).values, atol=1e-4)
    offset = torch.tensor([0.029424, -0.0117005, -0.0048365], dtype=torch.float64)
    lo_a = torch.as_tensor(np.array(a.trimesh.bounds[0]))
    lo_b = torch.as_tensor(np.array(b.trimesh.bounds[0]))
    assert torch.allclose(lo_a, lo_b - offset, atol=1e-5)
    assert a.texture is None  # texture png is absent from the snapshot


@pytest.mark.shared_data
def test_textured_hope_mesh(shared_data):
    path = shared_data / "real" / "diffdope_hope_example" / "mesh" / "AlphabetSoup.ply"
    obj = ObjectModel.load(path, units="mm")
    assert obj.texture is not None and obj.texture.shape[:2] == (2048, 2048)
    assert obj.uv.shape == (obj.vertices.shape[0], 2)
    assert obj.vertex_colors.std(0).max() > 0.05  # colours really vary over the label
    assert obj.extents.max().item() < 0.2
