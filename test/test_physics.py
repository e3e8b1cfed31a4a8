"""Physics priors and physical metrics: closed-form values, analytic volumes, a pressed fingertip."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from hp_ros.core import se3
from hp_ros.core.physics import (contact_count, contact_mask, contact_sliding_loss,
                                 hand_object_interpenetration_volume, hand_smoothness_loss,
                                 interpenetration_volume, max_penetration_depth, object_oscillation_loss,
                                 object_smoothness_loss, penetration_loss, per_vertex_contact, physics_loss)
from hp_ros.core.priors import Weights
from hp_ros.core.sdf import MeshSDF, signed_distance_world

SDF = torch.tensor([[0.01, -0.002, 0.0005, -0.004, 0.003],
                    [0.0, 0.0011, -0.001, 0.02, 0.0009]], dtype=torch.float64)


@pytest.fixture(scope="module")
def cube_sdf():
    m = trimesh.creation.box(extents=[0.04, 0.04, 0.04])
    return MeshSDF(m.vertices, m.faces)


def test_penetration_loss_value_and_gradient():
    s = SDF.clone().requires_grad_(True)
    loss = penetration_loss(s)
    expected = ((0.002 ** 2 + 0.004 ** 2) + 0.001 ** 2) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    (g,) = torch.autograd.grad(loss, s)
    assert torch.allclose(g, torch.where(SDF < 0, SDF, torch.zeros_like(SDF)))  # d/ds relu(-s)^2 / B = s
    assert penetration_loss(SDF, reduction="mean").item() == pytest.approx(sum([0.002 ** 2, 0.004 ** 2, 0.001 ** 2]) / 10)
    with pytest.raises(ValueError, match="reduction"):
        penetration_loss(SDF, reduction="max")


def test_contact_metrics():
    assert contact_mask(SDF).tolist() == [[False, True, True, True, False], [True, False, True, False, True]]
    assert contact_count(SDF).tolist() == [3, 3]
    assert contact_count(SDF, threshold=0.0).tolist() == [2, 1]
    assert torch.allclose(max_penetration_depth(SDF), torch.tensor([0.004, 0.001], dtype=torch.float64))
    hard = per_vertex_contact(SDF)
    assert torch.equal(hard, contact_mask(SDF).double())
    soft = per_vertex_contact(SDF, soft=True)
    assert soft[1, 1].item() < 0.5 < soft[1, 0].item()  # 1.1 mm vs 0 mm
    assert per_vertex_contact(torch.tensor([1e-3]), soft=True).item() == pytest.approx(0.5)
    assert ((soft > 0.5) == contact_mask(SDF)).all()
    with pytest.raises(ValueError):
        contact_mask(SDF, threshold=-1.0)


def _trajectory(B=4):
    """Object poses moving along x with rotation about z; returns T (B, 4, 4)."""
    t = torch.arange(B, dtype=torch.float64)
    R = se3.so3_exp(torch.stack([0 * t, 0 * t, 0.1 * t], -1))
    return se3.make_pose(R, torch.stack([0.01 * t, 0 * t, 0.3 + 0 * t], -1))


def test_contact_sliding_zero_for_attached_points_and_exact_for_slip():
    T = _trajectory(3)
    g = torch.Generator().manual_seed(0)
    p_obj = torch.rand(6, 3, generator=g, dtype=torch.float64) * 0.05
    pw = se3.transform_points(T, p_obj.expand(3, 6, 3))  # rigidly attached to the object
    contact = torch.ones(3, 6, dtype=torch.bool)
    assert contact_sliding_loss(pw, T, contact).item() == pytest.approx(0.0, abs=1e-20)
    # point 0 slides 2 mm along object y between frames 1 and 2; point 5 moves but is not in contact
    p_slip = p_obj.expand(3, 6, 3).clone()
    p_slip[2, 0, 1] += 0.002
    p_slip[2, 5] += 0.05
    contact[:, 5] = False
    pw = se3.transform_points(T, p_slip).requires_grad_(True)
    loss = contact_sliding_loss(pw, T, contact)
    assert loss.item() == pytest.approx(0.002 ** 2 / (2 * 5), rel=1e-9)  # 10 persistent contact pairs
    (g_p,) = torch.autograd.grad(loss, pw)
    assert g_p[:, 5].abs().max() == 0  # non-contact point gets no gradient
    assert contact_sliding_loss(pw[:1], T[:1], contact[:1]).item() == 0.0


def test_smoothness_and_oscillation_closed_form():
    v0 = torch.rand(10, 3, dtype=torch.float64)
    d = torch.tensor([0.001, -0.002, 0.0005], dtype=torch.float64)
    const_vel = torch.stack([v0 + k * d for k in range(5)])           # (5, 10, 3)
    assert object_smoothness_loss(const_vel).item() == pytest.approx(float(d @ d), rel=1e-9)
    assert object_oscillation_loss(const_vel).item() == pytest.approx(0.0, abs=1e-18)
    jitter = torch.stack([v0 + ((-1) ** k) * d for k in range(5)])    # back and forth
    assert object_oscillation_loss(jitter).item() == pytest.approx(16 * float(d @ d), rel=1e-9)
    assert object_smoothness_loss(jitter).item() == pytest.approx(4 * float(d @ d), rel=1e-9)
    assert object_oscillation_loss(const_vel[:2]).item() == 0.0

    q = torch.zeros(3, 16, dtype=torch.float64)
    q[1, 0] = 0.1
    q[2, 0] = 0.1
    q[2, 3] = -0.2
    assert hand_smoothness_loss(q).item() == pytest.approx((0.01 + 0.04) / 2)
    T = _trajectory(3)
    expected_base = (0.01 ** 2 + 0.1 ** 2)  # each step: 1 cm along x + 0.1 rad about z
    # relative motion T_{t-1}^-1 T_t: translation expressed in the previous frame, norm 1 cm
    assert hand_smoothness_loss(hand_base=T).item() == pytest.approx(expected_base, rel=1e-6)
    with pytest.raises(ValueError):
        hand_smoothness_loss()


def test_physics_loss_total_is_weighted_sum(cube_sdf):
    T = _trajectory(3).float()
    g = torch.Generator().manual_seed(1)
    p_obj = (torch.rand(3, 50, 3, generator=g) - 0.5) * 0.05  # some inside the 4 cm cube
    pw = se3.transform_points(T, p_obj)
    q = torch.rand(3, 16, generator=g)
    w = Weights(penetration=2.0, contact_sliding=3.0, object_smoothness=5.0, hand_smoothness=7.0, oscillation=11.0)
    total, terms = physics_loss(cube_sdf, pw, T, w, hand_q=q)
    sdf, _ = signed_distance_world(cube_sdf, pw, T)
    assert terms["penetration"].item() == pytest.approx(penetration_loss(sdf).item(), rel=1e-6)
    assert terms["penetration"].item() > 0
    obj_pts = se3.transform_points(T, cube_sdf.vertices)
    assert terms["object_smoothness"].item() == pytest.approx(object_smoothness_loss(obj_pts).item(), rel=1e-6)
    assert terms["oscillation"].item() == pytest.approx(object_oscillation_loss(obj_pts).item(), rel=1e-5)
    assert terms["hand_smoothness"].item() == pytest.approx(hand_smoothness_loss(q).item(), rel=1e-6)
    assert terms["num_contacts"].item() == contact_mask(sdf).sum().item()
    weighted = sum(getattr(w, k) * terms[k] for k in
                   ("penetration", "contact_sliding", "object_smoothness", "hand_smoothness", "oscillation"))
    assert total.item() == pytest.approx(weighted.item(), rel=1e-6)
    total0, terms0 = physics_loss(cube_sdf, pw, T, Weights().without("physics"))
    assert total0.item() == 0.0 and terms0["penetration"].item() == 0.0
    with pytest.raises(ValueError):
        Weights(penetration=-1.0)
    with pytest.raises(ValueError, match=r"\(3, 4, 4\)"):
        physics_loss(cube_sdf, pw, T[:2])


def test_interpenetration_volume_boxes_and_box_sphere(cube_sdf):
    # two 4 cm cubes, one shifted by (2, 1, 0.5) cm: overlap 2 x 3 x 3.5 cm^3
    T = torch.eye(4)
    T[:3, 3] = torch.tensor([0.02, 0.01, 0.005])
    assert interpenetration_volume(cube_sdf, cube_sdf, T) == pytest.approx(0.02 * 0.03 * 0.035, rel=0.05)
    # cube rotated 45 deg about z inside the same cube: octagonal prism, area s^2 * 2 (sqrt 2 - 1)
    R45 = se3.make_pose(se3.so3_exp(torch.tensor([0.0, 0.0, math.pi / 4])), torch.zeros(3))
    assert interpenetration_volume(cube_sdf, cube_sdf, R45) == pytest.approx(0.04 ** 3 * 2 * (math.sqrt(2) - 1), rel=0.05)
    # sphere r = 2 cm centred on the cube's top face: half the sphere is inside
    s = trimesh.creation.icosphere(subdivisions=4, radius=0.02)
    sph = MeshSDF(s.vertices, s.faces)
    T = torch.eye(4)
    T[:3, 3] = torch.tensor([0.0, 0.0, 0.02])
    assert interpenetration_volume(cube_sdf, sph, T) == pytest.approx(2 / 3 * math.pi * 0.02 ** 3, rel=0.05)
    # disjoint -> 0
    T[:3, 3] = torch.tensor([0.1, 0.0, 0.0])
    assert interpenetration_volume(cube_sdf, sph, T) == 0.0


def test_hand_object_volume_uses_union_of_parts(cube_sdf):
    # "hand" = two overlapping 2 cm cubes (a non-watertight union, like link meshes)
    a = trimesh.creation.box(extents=[0.02] * 3)
    b = a.copy()
    b.apply_translation([0.01, 0.0, 0.0])
    verts = torch.tensor(np.vstack([a.vertices, b.vertices]), dtype=torch.float32)
    faces = torch.tensor(np.vstack([a.faces, b.faces + len(a.vertices)]))
    T_world_object = se3.make_pose(torch.eye(3), torch.tensor([0.03, 0.0, 0.0]))[None]  # cube spans x in [0.01, 0.05]
    vol = hand_object_interpenetration_volume(verts[None], faces, cube_sdf, T_world_object)
    # union spans x in [-0.01, 0.02]; inside the cube for x in [0.01, 0.02] -> 1 x 2 x 2 cm^3
    assert vol.shape == (1,) and vol.item() == pytest.approx(0.01 * 0.02 * 0.02, rel=0.05)


def _pressed_fingertip_scene(obj_name: str):
    """Allegro with a flexed index finger and an object placed so that the index pad points
    (the hand's most +x points, facing +x of the palm) are 5 mm inside the object."""
    from hp_ros.core.hand import HandModel
    from hp_ros.core.objects import ObjectModel

    hand = HandModel.default()
    obj = ObjectModel.builtin(obj_name)
    osdf = MeshSDF(obj.vertices, obj.faces)
    q = hand.zero_q(1)
    for k in (1, 2, 3):  # index finger flexed
        q[0, hand.joint_names.index(hand.naming.joint_name(1, k))] = 0.5
    pts = hand.surface_points(q)
    tip_link = hand.link_index(hand.fingertip_links[1])
    i = int(pts[0, :, 0].argmax())
    assert int(hand.point_link_ids[i]) == tip_link  # the pressed point is on the index fingertip
    # object's -z side faces the hand: object z axis = palm +x
    R = torch.stack([torch.tensor([0.0, 0, -1]), torch.tensor([0.0, 1, 0]), torch.tensor([1.0, 0, 0])], 1)
    half_z = float(obj.vertices[:, 2].max())
    T0 = se3.make_pose(R, pts[0, i] + torch.tensor([half_z - 0.005, 0.0, 0.0]))[None]
    return hand, q, obj, osdf, pts, T0


@pytest.mark.parametrize("obj_name", ["cracker_box", "soup_can"])
def test_penetration_term_resolves_pressed_fingertip(obj_name):
    pytest.importorskip("hp_ros.core.hand")
    pytest.importorskip("hp_ros.core.objects")
    hand, q, obj, osdf, pts, T0 = _pressed_fingertip_scene(obj_name)
    sdf0, _ = signed_distance_world(osdf, pts, T0)
    assert max_penetration_depth(sdf0).item() == pytest.approx(0.005, abs=1e-4)
    # gradient descent on a 6-DoF world-frame delta of the object pose, penetration term only
    xi = torch.zeros(1, 6, requires_grad=True)
    opt = torch.optim.SGD([xi], lr=0.05)
    for _ in range(40):
        sdf, _ = signed_distance_world(osdf, pts, se3.apply_delta(T0, xi))
        loss = penetration_loss(sdf)
        opt.zero_grad()
        loss.backward()
        opt.step()
    T = se3.apply_delta(T0, xi.detach())
    sdf, _ = signed_distance_world(osdf, pts, T)
    assert max_penetration_depth(sdf).item() <= 0.5e-3
    moved = (se3.transform_points(T, obj.vertices) - se3.transform_points(T0, obj.vertices)).norm(dim=-1).max()
    assert moved.item() < 6e-3
    assert xi[0, 0].item() > 0.004  # pushed away along the pad normal (+x)
    if obj_name == "cracker_box":  # voxelised hand-object intersection of the posed hand mesh
        verts, faces, _ = hand.posed_mesh(q)
        assert hand_object_interpenetration_volume(verts, faces, osdf, T0).item() > 1e-7
        T_far = T0.clone()
        T_far[:, 0, 3] += 0.03
        assert hand_object_interpenetration_volume(verts, faces, osdf, T_far).item() == 0.0
