"""The priors registry (hp_ros.core.priors): each entry's function and default weight are what the
refinement computes, and a registered prior reaches the core, the node's parameters and ``terms``."""
from __future__ import annotations

import pytest
import torch

from hp_ros.core import se3
from hp_ros.core.camera import Camera
from hp_ros.core.hand import HandModel
from hp_ros.core.losses import mask_l2, rgb_l2
from hp_ros.core.objects import ObjectModel
from hp_ros.core.physics import (contact_mask, contact_sliding_loss, object_oscillation_loss, object_smoothness_loss,
                                 penetration_loss, physics_loss)
from hp_ros.core.priors import PRIORS, Prior, Weights, register, term_names, unregister
from hp_ros.core.refine import FrameObservation, RefineConfig, Refiner
from hp_ros.core.refine_depth import depth_loss
from hp_ros.core.render import render
from hp_ros.core.sdf import signed_distance_world

try:  # imported before a test registers a prior: its OWN_PARAMS (the README's tables) stay the shipped ones
    from hp_ros.nodes import refinement_params as NODE
except ImportError:  # no rclpy
    NODE = None
needs_rclpy = pytest.mark.skipif(NODE is None, reason="rclpy not importable")

# the weights of before the registry (RefineWeights' defaults): a registry line with a wrong number fails
DEFAULTS = {"mask_object": 1.0, "mask_hand": 1.0, "rgb": 0.05, "depth": 0.5, "penetration": 2.0e3,
            "contact_sliding": 1.0e2, "object_smoothness": 10.0, "hand_smoothness": 0.0, "oscillation": 10.0,
            "calibration_prior": 1.0e2, "joint_offset_prior": 1.0e2}


@pytest.fixture(scope="module")
def scene():
    from hp_ros.core.synth import SynthConfig, generate_sequence

    seq = generate_sequence(SynthConfig(duration_s=1.0, fps=6, seed=1))  # frames 2-5 in contact
    return seq, HandModel.default(), ObjectModel.builtin("cracker_box"), Camera(torch.tensor(seq.K), seq.width,
                                                                                seq.height)


def _frames(seq, ks):
    return [FrameObservation(rgb=seq.rgb[k], object_mask=seq.object_mask[k], hand_mask=seq.hand_mask[k],
                             depth=seq.depth_mm[k].astype("float32") / 1000.0, q=seq.q_frames_true[k],
                             T_cam_hand=seq.T_cam_hand_true) for k in ks]


def _window_poses(seq, ks):
    """Ground truth moved differently in each frame (1-3 mm toward the fingers and sideways), so every
    term is non-zero: penetration, sliding contacts, a jerky object."""
    T = torch.tensor(seq.T_cam_obj[ks], dtype=torch.float32)
    d = torch.tensor([[0.003, -0.002, 0.001, 0.0, 0.02, 0.0], [-0.002, 0.001, 0.002, 0.03, 0.0, 0.0],
                      [0.002, 0.003, -0.001, 0.0, 0.0, -0.02]])
    return se3.apply_delta(T, d[:len(ks)])


def test_default_weights_are_the_registry_entries():
    assert dict(Weights()) == DEFAULTS
    assert [p.name for p in PRIORS.values()] == list(DEFAULTS)  # registry order = order of the sums
    assert term_names() == ("mask", "rgb", "depth", "penetration", "sliding", "smoothness", "oscillation")


def test_each_term_and_the_total_match_the_direct_function_calls(scene):
    """The refinement's loss of a 3-frame window (hand rendered, depth, corrections) with the default
    weights against the losses.py / physics.py / refine_depth.py functions called directly."""
    seq, hand, obj, cam = scene
    ks = [3, 4, 5]
    cfg = RefineConfig(static_hand_occluder=False, rgb_gain=False, num_hypotheses=0)
    ref = Refiner(obj, hand, cfg)
    T = _window_poses(seq, ks)
    obs, has_hand, q, T_hand, left, side = ref._prepare(_frames(seq, ks), cam, T)
    assert has_hand
    S = cfg.roi_size
    crop = ref._crop(obs, left, side, S, cam)
    mesh, pts = ref._hand_geometry({"q": q, "T_hand": T_hand})
    xi_hand = torch.tensor([0.002, -0.001, 0.0, 0.01, 0.0, -0.02])
    dq = torch.linspace(-0.02, 0.03, q.shape[1])
    with torch.no_grad():
        total, terms, _ = ref._loss(T[None], crop, Weights(), mesh, S, pts, xi_hand, dq)

        out = render([mesh, (se3.transform_points(T, ref.verts), ref.faces)], crop["K"], S,
                     colors=[None, ref.colors], band=cfg.band)
        sdf, _ = signed_distance_world(ref.sdf, pts, T)
        obj_pts = se3.transform_points(T, ref.object_samples)
        direct = {
            "mask_object": mask_l2(out.soft_masks[:, 1], crop["object"], crop["valid"]).mean(),
            "mask_hand": mask_l2(out.soft_masks[:, 0], crop["hand"], crop["valid"]).mean(),
            "rgb": rgb_l2(out.rgb, crop["rgb"], crop["object"]).mean(),
            "depth": depth_loss(out.depth, out.hard_masks[:, 1], crop["depth"], crop["hand"], cfg.depth_scale).mean(),
            "penetration": penetration_loss(sdf),
            "contact_sliding": contact_sliding_loss(pts, T, contact_mask(sdf)),
            "object_smoothness": object_smoothness_loss(obj_pts),
            "oscillation": object_oscillation_loss(obj_pts),
            "calibration_prior": (xi_hand ** 2).sum(),
            "joint_offset_prior": (dq ** 2).sum(),
        }
    # hand_smoothness needs the hand's motion over the window, which the refinement does not optimise
    assert list(terms) == [k for k in DEFAULTS if k != "hand_smoothness"]
    for k, v in direct.items():
        assert float(v) > 0, k  # a wrong weight of this term changes the total
        assert float(terms[k][0]) == pytest.approx(float(v), rel=1e-5, abs=1e-12), k
    assert float(total[0]) == pytest.approx(sum(DEFAULTS[k] * float(v) for k, v in direct.items()), rel=1e-5)

    # physics_loss (the registry's physics entries) with its default weights
    q_win = q + torch.tensor([[0.0], [0.01], [0.03]])
    ptot, pterms = physics_loss(ref.sdf, pts, T, object_vertices=ref.object_samples, hand_q=q_win)
    assert float(pterms["hand_smoothness"]) == 0.0  # weight 0 by default: not computed
    expected = sum(DEFAULTS[k] * float(direct[k]) for k in ("penetration", "contact_sliding", "object_smoothness",
                                                            "oscillation"))
    assert float(ptot) == pytest.approx(expected, rel=1e-5)
    ptot1, pterms1 = physics_loss(ref.sdf, pts, T, Weights(hand_smoothness=3.0), object_vertices=ref.object_samples,
                                  hand_q=q_win)
    hs = float(((q_win[1:] - q_win[:-1]) ** 2).sum(-1).mean())
    assert float(pterms1["hand_smoothness"]) == pytest.approx(hs, rel=1e-6)
    assert float(ptot1) == pytest.approx(expected + 3.0 * hs, rel=1e-5)


def test_weights_are_checked_and_restricted_by_term():
    w = Weights({"rgb": 0.2}, penetration=0.0)
    assert w.rgb == 0.2 and w["penetration"] == 0.0 and w.mask_object == 1.0
    smooth = Weights().restricted(["smoothness"])
    assert smooth.object_smoothness == 10.0 and smooth.oscillation == 0.0 and smooth.mask_hand == 0.0
    assert smooth.calibration_prior == 100.0  # not switchable by terms
    assert not Weights().without("physics").uses_physics and Weights().uses_physics
    for bad in ({"penetration": -1.0}, {"rgb": float("nan")}, {"colour": 1.0}):
        with pytest.raises(ValueError):
            Weights(bad)
    with pytest.raises(ValueError, match="unknown loss term"):
        Weights().restricted(["mask", "colour"])
    with pytest.raises(ValueError, match="unknown data"):
        Prior("x", lambda x: x, 1.0, ("contacts",), "x", "image")
    with pytest.raises(ValueError, match="registered already"):
        register(PRIORS["rgb"])


def _constant(x):
    """A test prior: 0.25 for every rendered image."""
    return x.soft_object.new_full((x.R * x.B,), 0.25)


@pytest.fixture
def extra_prior():
    prior = register(Prior("test_constant", _constant, 2.0, ("object_mask",), "constant", "image", doc="a constant"))
    yield prior
    unregister(prior.name)


def test_a_registered_prior_is_used_by_the_refinement(scene, extra_prior):
    seq, hand, obj, cam = scene
    assert "constant" in term_names() and Weights().test_constant == 2.0
    ref = Refiner(obj, None, RefineConfig(num_hypotheses=0))
    f = _frames(seq, [3])
    T = torch.tensor(seq.T_cam_obj[3], dtype=torch.float32)
    with_it = ref.refine(f, cam, T, max_iterations=0, terms=["mask", "constant"])
    without = ref.refine(f, cam, T, max_iterations=0, terms=["mask"])
    assert with_it.final_terms["test_constant"] == pytest.approx(0.25)
    assert "test_constant" not in without.final_terms
    assert with_it.initial_loss - without.initial_loss == pytest.approx(2.0 * 0.25, rel=1e-5)


@needs_rclpy
def test_a_registered_prior_appears_in_the_node_parameters(extra_prior):
    node = NODE
    params = node.own_params()
    assert "constant" in params["default_terms"].default
    assert params["weights.test_constant"].default == 2.0
    assert node.terms_problem(["mask", "constant"]) is None and node.terms_problem(["colour"])
    values = {k: p.default for k, p in params.items()}
    assert node.weights_from_params({**values, "weights.test_constant": 0.5}) == Weights(test_constant=0.5)


@needs_rclpy
def test_node_defaults_are_the_cores():
    node = NODE
    from hp_ros.core.global_pose import DEFAULT_GLOBAL_HYPOTHESES, DEFAULT_GLOBAL_ITERATIONS, AnswerCheck

    core, check, p = RefineConfig(), AnswerCheck(), node.OWN_PARAMS
    for name in ("max_iterations", "roi_size", "num_hypotheses", "early_stop_patience", "optimize_camera_hand",
                 "optimize_joint_offsets"):
        assert p[name].default == getattr(core, name), name
    assert core.num_hypotheses == 8
    assert p["global_iterations"].default == DEFAULT_GLOBAL_ITERATIONS == 8
    assert (p["global_hypotheses"].default, p["global_min_iou"].default, p["global_max_penetration_mm"].default,
            p["global_attempts"].default) == (DEFAULT_GLOBAL_HYPOTHESES, check.min_mask_iou,
                                              check.max_penetration_mm, check.attempts)
    assert node.weights_from_params({k: v.default for k, v in p.items()}) == Weights()
