"""``hp-ros eval BAG`` without ``--est``: the pipeline offline through the core, scored against the
bag's ground truth (hp_ros.tools.offline). The live graph against the offline run on the same bag
is compared in test_end_to_end."""
from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    from hp_ros.core import synth

    path = tmp_path_factory.mktemp("offline") / "bag"
    synth.write_sequence_bag(synth.generate_sequence(synth.SynthConfig(duration_s=3.0, seed=2)), path)
    return path


def _adds_cm(points, T_a, T_b):
    a, b = points @ T_a[:3, :3].T + T_a[:3, 3], points @ T_b[:3, :3].T + T_b[:3, 3]
    return 100 * float(np.mean(np.min(np.linalg.norm(a[:, None] - b[None], axis=2), axis=1)))


def test_eval_without_estimates_runs_the_pipeline_and_beats_holding_the_start(bag, tmp_path):
    from hp_ros import cli
    from hp_ros.core.objects import ObjectModel
    from hp_ros.tools.evaluate import read_pose_topic
    from hp_ros.tools.offline import _initial_pose

    assert cli.main(["eval", str(bag), "--out", str(tmp_path / "rep"), "--initial-offset", "0.01", "5"]) == 0
    m = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert m["n_matched"] == m["n_frames"] == 90
    assert m["offline"]["posed"] == 90 and m["offline"]["segmented"] == 90
    assert m["adds_mean_cm"] <= 0.4 and m["rot_err_mean_deg"] <= 2.0
    # against doing nothing: the start pose (1 cm / 5 deg off the first frame) held for every frame
    gt = read_pose_topic(bag, "/hp_ros/ground_truth/object_pose")
    T0 = _initial_pose(bag, "/hp_ros/ground_truth/object_pose", (0.01, 5.0))
    pts = ObjectModel.builtin("cracker_box").surface_points(500, seed=0).double().numpy()
    frozen = np.mean([_adds_cm(pts, T0, T) for T in gt.values()])
    assert frozen >= 0.6 and m["adds_mean_cm"] <= 0.4 * frozen, (frozen, m["adds_mean_cm"])


def test_offline_run_is_deterministic_and_reports_its_cost(bag):
    from hp_ros.tools.offline import run_offline

    a = run_offline(bag, initial_offset=(0.01, 5.0), log=lambda *x: None)
    b = run_offline(bag, initial_offset=(0.01, 5.0), log=lambda *x: None)
    assert sorted(a.poses) == sorted(b.poses) and len(a.poses) == 90
    assert all(np.array_equal(a.poses[s], b.poses[s]) for s in a.poses)
    assert a.frames == 90 and a.cpu_s > 0 and abs(a.bag_s - 3.0) < 0.1
    assert a.model_points.shape == (2000, 3)


def test_eval_of_several_bags_and_bad_input(bag, tmp_path):
    from hp_ros import cli

    out = tmp_path / "many"
    assert cli.main(["eval", str(bag), str(bag), "--out", str(out), "--initial-offset", "0.01", "5",
                     "--set", "object_backend=model"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary) == 2 and (out / "summary.png").stat().st_size > 1000
    runs = list(summary.values())
    assert runs[0]["adds_mean_cm"] == runs[1]["adds_mean_cm"] <= 0.4   # the same bag twice: the same answer
    assert all((out / name / "metrics.json").is_file() for name in summary)
    # readable errors, no traceback: a missing bag, a malformed --set, an unknown bag with --est
    assert cli.main(["eval", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) != 0
    assert cli.main(["eval", str(bag), "--out", str(tmp_path / "y"), "--set", "no_equals_sign"]) != 0
    assert cli.main(["eval", str(bag), str(bag), "--out", str(tmp_path / "z"), "--est", str(bag)]) != 0


def test_offline_run_follows_a_moving_hand_base_through_tf(tmp_path):
    """A `lab` bag: camera->hand exists only through /tf (world->hand base, moving with the arm), so an
    offline run that ignored /tf would pose nothing; with it, the posed frames follow the ground truth."""
    from hp_ros.core import synth
    from hp_ros.tools.evaluate import read_pose_topic
    from hp_ros.tools.offline import run_offline

    bag = tmp_path / "lab"
    seq = synth.generate_sequence(synth.SynthConfig(duration_s=3.0, seed=0, motion="lab"))
    assert seq.T_world_hand_tf is not None
    synth.write_sequence_bag(seq, bag)
    r = run_offline(bag, initial_offset=(0.01, 5.0), log=lambda *a: None)
    gt = read_pose_topic(bag, "/hp_ros/ground_truth/object_pose")
    err_mm = [1000 * np.linalg.norm(gt[s][:3, 3] - T[:3, 3]) for s, T in r.poses.items() if s in gt]
    assert len(err_mm) >= 30, len(err_mm)
    assert np.median(err_mm) <= 5.0, np.median(err_mm)
