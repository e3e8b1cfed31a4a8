"""Global estimate without an initial pose (hp_ros.core.global_pose) on synthetic RGB-D frames of an
object in the hand (exact ray casting, RealSense-like depth noise and holes, the hand in front)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hp_ros.core import metrics
from hp_ros.core.camera import Camera
from hp_ros.core.global_pose import GlobalPoseSearch, cold_start, uniform_rotations
from hp_ros.core.hand import HandModel
from hp_ros.core.objects import ObjectModel
from hp_ros.core.refine import FrameObservation, RefineConfig, Refiner


def _frame(name: str, seed: int, k: int = 1):
    from hp_ros.core.synth import SynthConfig, generate_sequence

    seq = generate_sequence(SynthConfig(duration_s=0.4, fps=5, seed=seed, object=f"builtin:{name}"))
    f = FrameObservation(rgb=seq.rgb[k], object_mask=seq.object_mask[k], hand_mask=seq.hand_mask[k],
                         depth=seq.depth_mm[k].astype(np.float32) / 1000.0, q=seq.q_frames_true[k],
                         T_cam_hand=seq.T_cam_hand_published)
    return seq, f, Camera(torch.tensor(seq.K), seq.width, seq.height)


@pytest.mark.parametrize("name,seed", [("cracker_box", 2), ("soup_can", 0)])
def test_cold_start_finds_the_object_without_an_initial_pose(name, seed):
    """seed 2: the hand hides a third of the box (the visible-centroid placement alone was 5 cm off)."""
    seq, f, cam = _frame(name, seed)
    obj = ObjectModel.builtin(name)
    res, found = cold_start(Refiner(obj, HandModel.default(), RefineConfig()), GlobalPoseSearch(obj), f, cam)
    assert found is not None and found.candidates.shape[1:] == (4, 4)
    err = metrics.add_s(seq.T_cam_obj[1][None], res.T_cam_obj.double().numpy(), obj.vertices.numpy())[0]
    assert err < 0.01, err
    assert res.mask_iou[0] > 0.9


def test_cold_start_refuses_frames_it_cannot_use():
    seq, f, cam = _frame("cracker_box", 1)
    obj = ObjectModel.builtin("cracker_box")
    ref = Refiner(obj, None, RefineConfig())
    f.depth = np.zeros_like(f.depth)  # no depth on the object: no estimate
    assert cold_start(ref, GlobalPoseSearch(obj), f, cam) == (None, None)
    f.depth = None
    with pytest.raises(ValueError, match="depth"):
        cold_start(ref, GlobalPoseSearch(obj), f, cam)


def test_rotations_are_spread_over_so3():
    R = uniform_rotations(480)
    assert R.shape == (480, 3, 3)
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=R.dtype).expand(480, 3, 3), atol=1e-9)
    # every one of 200 random rotations has a sampled one within 35 degrees
    probe = uniform_rotations(200, seed=1)
    cos = ((torch.einsum("aij,bij->ab", probe, R) - 1) / 2).clamp(-1, 1)
    assert float(torch.rad2deg(torch.acos(cos.max(1).values)).max()) < 35.0
    symmetric = GlobalPoseSearch(ObjectModel.builtin("soup_can"))
    assert symmetric.R.shape[0] == 120  # a body of revolution: a quarter as many
