"""Hand model: FK against yourdfpy, gradients against finite differences, naming, geometry."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yourdfpy

from hp_ros.core import se3
from hp_ros.core.description import expand_xacro, load_description, parse_urdf_string, resolve_uri
from hp_ros.core.hand import HandModel, JointNaming, JointStateMapper, default_urdf_path

WONIK_PKG = "package://allegro_hand_v4_description/meshes/link_f.4.STL"


@pytest.fixture(scope="module")
def hand64():
    return HandModel.default(dtype=torch.float64)


def _yourdfpy(path_or_text) -> yourdfpy.URDF:
    if isinstance(path_or_text, Path):
        return yourdfpy.URDF.load(str(path_or_text), build_scene_graph=True, load_meshes=False)
    with tempfile.NamedTemporaryFile("w", suffix=".urdf", delete=False) as f:
        f.write(path_or_text)
    return yourdfpy.URDF.load(f.name, build_scene_graph=True, load_meshes=False)


def _compare_with_yourdfpy(hand: HandModel, ref: yourdfpy.URDF, n: int = 100):
    """Max |position| and |rotation| error over n random in-limit configs and all links."""
    assert list(ref.actuated_joint_names) == hand.joint_names
    g = torch.Generator().manual_seed(1)
    q = hand.random_q(n, generator=g)
    T = hand.forward_kinematics(q).numpy()
    pos_err = rot_err = 0.0
    for b in range(n):
        ref.update_cfg(q[b].numpy())
        for i, link in enumerate(hand.link_names):
            T_ref = ref.get_transform(frame_to=link, frame_from=hand.base_link)
            pos_err = max(pos_err, np.abs(T_ref[:3, 3] - T[b, i, :3, 3]).max())
            rot_err = max(rot_err, np.abs(T_ref[:3, :3] - T[b, i, :3, :3]).max())
    return pos_err, rot_err


# ----------------------------------------------------------------------------- FK vs yourdfpy

def test_fk_matches_yourdfpy_project_urdf(hand64):
    pos_err, rot_err = _compare_with_yourdfpy(hand64, _yourdfpy(default_urdf_path()))
    assert pos_err < 1e-6 and rot_err < 1e-6, (pos_err, rot_err)


@pytest.mark.shared_data
def test_fk_matches_yourdfpy_dex_urdf(shared_data):
    path = shared_data / "allegro" / "dex_urdf_allegro_right" / "allegro_hand_right.urdf"
    hand = HandModel.from_urdf(path, dtype=torch.float64)
    assert hand.base_link == "base_link"
    assert hand.fingertip_links == ["link_15.0_tip", "link_3.0_tip", "link_7.0_tip", "link_11.0_tip"]
    pos_err, rot_err = _compare_with_yourdfpy(hand, _yourdfpy(path))
    assert pos_err < 1e-6 and rot_err < 1e-6, (pos_err, rot_err)


@pytest.mark.shared_data
def test_fk_matches_yourdfpy_wonik_xacro(shared_data):
    root = shared_data / "allegro" / "wonik_ros2_v4_right"
    xacro_path = root / "urdf" / "allegro_hand_description_right.xacro"
    hand = HandModel.from_urdf(xacro_path, mesh_search_path=[root], dtype=torch.float64)
    assert hand.joint_names[:5] == ["ah_joint00", "ah_joint01", "ah_joint02", "ah_joint03", "ah_joint10"]
    assert hand.base_link == "ah_palm_link" and "ah_base_link" in hand.link_names
    text = expand_xacro(xacro_path, xacro_args={"prefix": "ah_"})
    pos_err, rot_err = _compare_with_yourdfpy(hand, _yourdfpy(text))
    assert pos_err < 1e-6 and rot_err < 1e-6, (pos_err, rot_err)


@pytest.mark.shared_data
def test_project_kinematics_equal_wonik_and_close_to_dex(shared_data, hand64):
    """The project URDF's frames equal Wonik's; SimLab/dex-urdf finger roots differ by <= 1.6 mm."""
    root = shared_data / "allegro" / "wonik_ros2_v4_right"
    wonik = HandModel.from_urdf(root / "urdf" / "allegro_hand_description_right.xacro",
                                mesh_search_path=[root], dtype=torch.float64)
    q = hand64.random_q(8, generator=torch.Generator().manual_seed(3))
    T_proj = hand64.forward_kinematics(q)
    T_wonik = wonik.forward_kinematics(q)
    for i, name in enumerate(hand64.link_names):
        j = wonik.link_index(name)
        assert torch.allclose(T_proj[:, i], T_wonik[:, j], atol=1e-9), name
    dex = HandModel.from_urdf(shared_data / "allegro" / "dex_urdf_allegro_right" / "allegro_hand_right.urdf",
                              naming="wonik", dtype=torch.float64)
    assert dex.joint_names[0] == "ah_joint10"  # renamed; canonical order stays the URDF order (index first)
    mapper = dex.joint_state_mapper()
    q_dex = torch.stack([torch.as_tensor(mapper.update(hand64.joint_names, qb.numpy())) for qb in q])
    T_dex = dex.forward_kinematics(q_dex)
    for f in range(4):
        for k in range(4):  # joint frames (tips differ: thumb tip offset 54.3 vs 26.7 mm)
            name = f"ah_link_{f}{k}"
            d = (T_proj[:, hand64.link_index(name), :3, 3] - T_dex[:, dex.link_index(name), :3, 3]).norm(dim=-1)
            assert d.max() < 1.7e-3, (name, d.max())


# ----------------------------------------------------------------------------- gradients

def test_gradients_match_finite_differences(hand64):
    g = torch.Generator().manual_seed(0)
    q = hand64.random_q(2, generator=g).requires_grad_(True)
    xi = torch.tensor([[0.1, -0.05, 0.4, 0.3, -0.2, 0.1], [0.0, 0.02, 0.5, -0.4, 0.1, 0.2]], dtype=torch.float64,
                      requires_grad=True)
    sel = torch.arange(0, hand64.n_surface_points, 97)

    def f(q_, xi_):
        base = se3.se3_exp(xi_)
        pts = hand64.surface_points(q_, base)[:, sel]
        return torch.cat([pts.reshape(2, -1), hand64.fingertips(q_, base).reshape(2, -1)], dim=1)

    assert torch.autograd.gradcheck(f, (q, xi), eps=1e-6, atol=1e-7, rtol=1e-3, fast_mode=True)
    # full Jacobian of the fingertips w.r.t. q and the base tangent
    tips = lambda q_, xi_: hand64.fingertips(q_, se3.se3_exp(xi_))  # noqa: E731
    assert torch.autograd.gradcheck(tips, (q, xi), eps=1e-6, atol=1e-7, rtol=1e-3)

    # explicit relative-error check of one directional derivative, as the acceptance states it
    v_q, v_xi = torch.randn(q.shape, generator=g, dtype=torch.float64), torch.randn(xi.shape, generator=g,
                                                                                      dtype=torch.float64)
    w = torch.randn(f(q, xi).shape, generator=g, dtype=torch.float64)
    (gq, gxi) = torch.autograd.grad((f(q, xi) * w).sum(), (q, xi))
    analytic = (gq * v_q).sum() + (gxi * v_xi).sum()
    h = 1e-6
    with torch.no_grad():
        fd = ((f(q + h * v_q, xi + h * v_xi) - f(q - h * v_q, xi - h * v_xi)) * w).sum() / (2 * h)
    assert abs(analytic - fd) / abs(fd) < 1e-3


def test_gradient_wrt_base_matrix(hand64):
    q = hand64.zero_q(1)
    base = se3.se3_exp(torch.tensor([[0.0, 0.1, 0.5, 0.2, 0.3, -0.1]], dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda b: hand64.fingertips(q, b), (base,), eps=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------- names

def test_joint_naming_mapping_table():
    w, s = JointNaming("wonik"), JointNaming("simlab")
    for k in range(4):
        assert w.translate_joint(f"ah_joint0{k}", s) == f"joint_{12 + k}.0"
        assert w.translate_joint(f"ah_joint1{k}", s) == f"joint_{k}.0"
        assert w.translate_joint(f"ah_joint2{k}", s) == f"joint_{4 + k}.0"
        assert w.translate_joint(f"ah_joint3{k}", s) == f"joint_{8 + k}.0"
    assert [s.translate_joint(w.translate_joint(n, s), w) for n in w.joint_names] == w.joint_names
    assert w.translate_link("ah_link_14", s) == "link_3.0_tip"
    assert w.translate_link("ah_link_04", s) == "link_15.0_tip"
    assert s.translate_link("base_link", w) == "ah_palm_link"
    assert JointNaming.detect(s.joint_names) == s
    assert JointNaming.detect(JointNaming("wonik", "rh_").joint_names) == JointNaming("wonik", "rh_")
    with pytest.raises(ValueError, match="unknown joint naming"):
        JointNaming("shadow")


def test_wonik_and_simlab_joint_states_give_same_hand(hand64):
    rng = np.random.default_rng(0)
    q = hand64.random_q(1, generator=torch.Generator().manual_seed(5))[0].numpy()
    w, s = JointNaming("wonik"), JointNaming("simlab")
    names_w = list(hand64.joint_names)
    perm = rng.permutation(16)
    names_w_shuffled = [names_w[i] for i in perm]
    names_s_shuffled = [w.translate_joint(n, s) for n in names_w_shuffled]
    q_w = hand64.joint_state_mapper().update(names_w_shuffled, q[perm])
    q_s = hand64.joint_state_mapper().update(names_s_shuffled, q[perm])
    np.testing.assert_array_equal(q_w, q)
    np.testing.assert_array_equal(q_s, q)
    # a SimLab-named model posed from the same Wonik JointState gives the same link poses
    hand_s = HandModel.default(naming="simlab", dtype=torch.float64)
    assert hand_s.joint_names[0] == "joint_12.0" and hand_s.fingertip_links[1] == "link_3.0_tip"
    q_s2 = hand_s.joint_state_mapper().update(names_w_shuffled, q[perm])
    T_w = hand64.forward_kinematics(torch.as_tensor(q_w)[None])
    T_s = hand_s.forward_kinematics(torch.as_tensor(q_s2)[None])
    for i, name in enumerate(hand64.link_names):
        other = w.translate_link(name, s) or name
        assert torch.allclose(T_w[0, i], T_s[0, hand_s.link_index(other)], atol=1e-12), name
    assert torch.allclose(hand64.surface_points(torch.as_tensor(q_w)[None]),
                          hand_s.surface_points(torch.as_tensor(q_s2)[None]))


def test_joint_state_mapper_subsets_and_errors(hand64):
    m = hand64.joint_state_mapper()
    with pytest.raises(ValueError, match="no position received yet") as e:
        m.update(["ah_joint00"], [0.5])
    assert "ah_joint33" in str(e.value) and "ah_joint00" not in str(e.value)
    q = m.update(hand64.joint_names[1:], np.arange(1, 16) * 0.01)
    assert q[0] == 0.5 and np.isclose(q[15], 0.15)
    q = m.update(["joint_0.0", "ah_joint33"], [0.7, -0.1])  # subset, mixed schemes
    assert np.isclose(q[4], 0.7) and np.isclose(q[15], -0.1) and q[0] == 0.5
    with pytest.raises(ValueError, match=r"unknown joint names \['wrist', 'joint_16.0'\]"):
        m.update(["ah_joint00", "wrist", "joint_16.0"], [0, 0, 0])
    with pytest.raises(ValueError, match="3 names but 2 positions"):
        m.update(["ah_joint00", "ah_joint01", "ah_joint02"], [0, 0])
    m2 = JointStateMapper(hand64.joint_names, "wonik", accept=["wonik"])
    with pytest.raises(ValueError, match="unknown joint names"):
        m2.update(["joint_0.0"], [0.0], require_complete=False)


def test_joint_state_mapper_repeated_names_are_checked_once_and_still_mapped(hand64):
    """A driver sends the same names every message: the mapper reuses the last message's checked
    indices - and still maps a new order, refuses a duplicate or unknown name after valid
    messages, and takes the cached order again after an error."""
    m = hand64.joint_state_mapper()
    names = list(hand64.joint_names)
    q = np.linspace(-0.2, 0.6, 16)
    for k in range(3):
        np.testing.assert_array_equal(m.update(names, q + k), q + k)
    rev = names[::-1]
    np.testing.assert_array_equal(m.update(rev, q[::-1]), q)   # another order: mapped by name
    with pytest.raises(ValueError, match="duplicate joint names"):
        m.update(rev[:-1] + [rev[0]], q)
    with pytest.raises(ValueError, match="unknown joint names"):
        m.update(rev[:-1] + ["wrist"], q)
    np.testing.assert_array_equal(m.update(rev, q[::-1] + 1.0), q + 1.0)


# ----------------------------------------------------------------------------- limits, geometry

def test_joint_limits_and_clamp(hand64):
    lo, hi = hand64.joint_limits
    assert lo.shape == hi.shape == (16,)
    assert lo[0].item() == pytest.approx(0.263) and hi[0].item() == pytest.approx(1.396)
    assert lo[5].item() == pytest.approx(-0.196) and hi[5].item() == pytest.approx(1.61)
    q = torch.full((2, 16), 5.0, dtype=torch.float64)
    q[1] = -5.0
    c = hand64.clamp(q)
    assert torch.equal(c[0], hi) and torch.equal(c[1], lo)
    r = hand64.random_q(50)
    assert bool(((r >= lo) & (r <= hi)).all())


def test_surface_points_and_mesh_lie_on_links(hand64):
    assert hand64.local_surface_points.shape == (2000, 3)
    assert hand64.point_link_ids.shape == (2000,)
    q = hand64.random_q(3, generator=torch.Generator().manual_seed(2))
    base = se3.se3_exp(torch.tensor([0.05, -0.02, 0.45, 0.5, 1.0, -0.3], dtype=torch.float64))[None].expand(3, 4, 4)
    T = hand64.forward_kinematics(q, base)
    pts = hand64.surface_points(q, base)
    assert pts.shape == (3, 2000, 3)
    # points expressed back in their own link frame equal the stored local samples
    T_pts = T[:, hand64.point_link_ids]
    local = (se3.invert(T_pts)[..., :3, :3] @ pts[..., None])[..., 0] + se3.invert(T_pts)[..., :3, 3]
    assert torch.allclose(local, hand64.local_surface_points.expand(3, -1, -1), atol=1e-12)
    # every link with geometry gets points, roughly in proportion to its area (palm is the largest)
    counts = torch.bincount(hand64.point_link_ids, minlength=hand64.num_links)
    assert counts.argmax().item() == hand64.link_index("ah_palm_link")
    assert (counts[[hand64.link_index(n) for n in hand64.link_names if n != "ah_base_link"]] > 10).all()
    # fingertip mesh vertices are within the 14 mm tip geometry around the tip frame origin
    verts, faces, vids = hand64.posed_mesh(q, base)
    tips = hand64.fingertips(q, base)
    assert faces.dtype == torch.long and faces.max() < verts.shape[1] and vids.shape == (verts.shape[1],)
    for f, name in enumerate(hand64.fingertip_links):
        sel = vids == hand64.link_index(name)
        d = (verts[:, sel] - tips[:, f, None]).norm(dim=-1)
        assert d.max() < 0.0205 and d.min() < 0.0125
    # fingertip positions equal the tip link frames
    assert torch.allclose(tips, T[:, [hand64.link_index(n) for n in hand64.fingertip_links], :3, 3])


def test_fingertip_positions_documented_dimensions(hand64):
    """Straight index finger: tip at root + 16.4 + 54 + 38.4 + 26.7 mm along the finger axis."""
    q = torch.zeros(1, 16, dtype=torch.float64)
    q[0, 0] = 0.263  # thumb joint 0 lower limit
    tip = hand64.fingertips(q)[0, 1]
    L = 0.0164 + 0.054 + 0.0384 + 0.0267
    a = -np.deg2rad(5)  # index root roll
    expected = torch.tensor([0.0, 0.0435 - L * np.sin(a), L * np.cos(a)], dtype=torch.float64)
    assert torch.allclose(tip, expected, atol=1e-12)
    q[0, 5:8] = 0.5  # flexion moves the tip towards the palm side (+x)
    assert hand64.fingertips(q)[0, 1, 0] > 0.05


def test_contact_candidates_face_palm_side(hand64):
    q = hand64.zero_q(1)
    pts, normals = hand64.surface_points(q, return_normals=True)
    c = hand64.contact_candidates
    assert 0 < len(c) < hand64.n_surface_points
    palm = hand64.link_index("ah_palm_link")
    palm_c = c[hand64.point_link_ids[c] == palm]
    assert len(palm_c) > 20
    assert (normals[0, palm_c, 0] > 0.9).all() and (pts[0, palm_c, 0] > 0.011).all()
    # every pad point of the straight fingers faces +x; no thumb-base points are candidates
    finger_c = c[hand64.point_link_ids[c] == hand64.link_index("ah_link_12")]
    assert len(finger_c) > 5 and (normals[0, finger_c, 0] > 0.3).all()
    assert not (hand64.point_link_ids[c] == hand64.link_index("ah_link_00")).any()


def test_input_validation(hand64):
    with pytest.raises(ValueError, match=r"q must have shape \(B, 16\)"):
        hand64.forward_kinematics(torch.zeros(16, dtype=torch.float64))
    with pytest.raises(ValueError, match="base must have shape"):
        hand64.forward_kinematics(torch.zeros(2, 16, dtype=torch.float64), torch.eye(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown link"):
        hand64.link_index("nope")
    with pytest.raises(ValueError, match="base_link 'ah_link_12' moves with joint"):
        HandModel.default(base_link="ah_link_12")


def test_float32_batch_matches_float64(hand64):
    h32 = HandModel.default()
    q = hand64.random_q(64, generator=torch.Generator().manual_seed(4))
    p64 = hand64.surface_points(q)
    p32 = h32.surface_points(q.float())
    assert p32.dtype == torch.float32 and (p32.double() - p64).abs().max() < 1e-6


# ----------------------------------------------------------------------------- description

def test_resolve_uri_variants(tmp_path):
    mesh = tmp_path / "pkg_share" / "my_desc" / "meshes" / "a.stl"
    mesh.parent.mkdir(parents=True)
    mesh.write_text("solid a\nendsolid a\n")
    assert resolve_uri("meshes/a.stl", tmp_path / "pkg_share" / "my_desc") == mesh.resolve()
    assert resolve_uri(str(mesh)) == mesh.resolve()
    assert resolve_uri("file://" + str(mesh)) == mesh.resolve()
    assert resolve_uri("package://my_desc/meshes/a.stl", None, [tmp_path / "pkg_share"]) == mesh.resolve()
    assert resolve_uri("package://my_desc/meshes/a.stl", None, [tmp_path / "pkg_share" / "my_desc"]) == mesh.resolve()
    assert resolve_uri("package://my_desc/meshes/a.stl", None, []) is None
    assert resolve_uri("package://other_pkg/meshes/b.stl", None, [tmp_path]) is None
    text = ('<robot name="r"><link name="a"><visual><geometry><mesh filename="package://nope/x.stl"/>'
            '</geometry></visual></link></robot>')
    with pytest.raises(FileNotFoundError, match="mesh_search_path"):
        parse_urdf_string(text)
    assert parse_urdf_string(text, strict_meshes=False).links["a"].visuals[0].path is None
    with pytest.raises(ValueError, match="exactly one root"):
        parse_urdf_string('<robot name="r"><link name="a"/><link name="b"/></robot>')


@pytest.mark.shared_data
def test_vendor_meshes_are_loaded(shared_data, tmp_path):
    root = shared_data / "allegro" / "wonik_ros2_v4_right"
    # the package:// URI resolves through the search path (here: a folder named after the package)
    pkg_dir = tmp_path / "allegro_hand_v4_description"
    pkg_dir.symlink_to(root)
    assert resolve_uri(WONIK_PKG, None, [tmp_path]) == (root / "meshes" / "link_f.4.STL").resolve()
    assert resolve_uri(WONIK_PKG, None, [root]) == (root / "meshes" / "link_f.4.STL").resolve()
    desc = load_description(root / "urdf" / "allegro_hand_description_right.xacro", mesh_search_path=[tmp_path],
                            xacro_args={"prefix": "ah_"})
    geo = desc.links["ah_link_14"].visuals[0]
    assert geo.kind == "mesh" and geo.path.name == "link_f.4.STL"
    hand = HandModel(desc, n_surface_points=500, dtype=torch.float64)
    import trimesh
    palm = trimesh.load(str(root / "meshes" / "palm_link.STL"), force="mesh")
    verts, faces, vids = hand.posed_mesh(hand.zero_q(1))
    palm_v = verts[0, vids == hand.link_index("ah_palm_link")]
    assert torch.allclose(palm_v.min(0).values, torch.tensor(np.array(palm.bounds[0])), atol=1e-9)
    assert hand.surface_points(hand.zero_q(1)).shape == (1, 500, 3)
    # dex-urdf: relative mesh paths
    dex = HandModel.from_urdf(shared_data / "allegro" / "dex_urdf_allegro_right" / "allegro_hand_right.urdf",
                              n_surface_points=300)
    v, f, ids = dex.posed_mesh(dex.zero_q(2))
    assert v.shape[0] == 2 and len(f) > 10000
