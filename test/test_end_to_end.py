"""End to end: the whole node graph (separate processes over loopback DDS, started from
hp_ros.graph exactly as the launch file would) tracks a replayed synthetic bag."""
from __future__ import annotations

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def test_full_graph_tracks_synthetic_sequence(tmp_path, ros_env):
    from hp_ros.tools.demo import run_pipeline

    r = run_pipeline(tmp_path / "run", object_spec="builtin:cracker_box", duration=6.0, seed=2,
                     log=lambda *a: None)
    print({k: v for k, v in r.items() if k not in ("per_frame", "frames")})
    # accuracy against ground truth (the tracker starts 1 cm / 5 deg off)
    assert r["n_matched"] >= 0.3 * r["n_frames"], "too few frames produced a pose"
    assert r["adds_mean_cm"] <= 1.5
    assert r["adds_max_cm"] <= 3.0
    # output rate and latency of the whole graph on a 2-core machine (7-17 Hz out of the 30 Hz
    # input measured; the segmentation node is the bottleneck, see README)
    assert r["output_rate_hz"] >= 4.0
    assert r["latency_ms_p95"] < 1500.0
    assert r["tf_messages"] >= 0.3 * r["n_frames"]
    assert r["final_state"] == "TRACKING"


def test_bad_initial_pose_is_recovered_through_refinement(tmp_path, ros_env):
    """LOST -> refinement -> re-initialised, with the real nodes: the tracker starts 6 cm / 10 deg off
    (outside its 1 cm prior), rejects the object observations until it declares the track LOST
    (publishing no pose meanwhile), asks /hp_ros/refine_pose with its estimate re-centred on the
    latest object observation, and tracks again from the refinement node's answer."""
    from pathlib import Path

    import numpy as np

    from hp_ros.tools.demo import run_pipeline

    r = run_pipeline(tmp_path / "run", object_spec="builtin:cracker_box", duration=10.0, seed=2,
                     log=lambda *a: None, initial_offset=(0.06, 10.0))
    print({k: v for k, v in r.items() if k not in ("per_frame", "frames")})
    log = (Path(r["logs"]) / "tracking_node.log").read_text()
    refine_log = (Path(r["logs"]) / "refinement_node.log").read_text()
    # the tracker's state timeline (state, stamp, reason: one INFO line per transition) and the
    # refinement answers, printed by any failing assertion below
    timeline = "\n".join(ln for ln in log.splitlines() if "state " in ln and " -> " in ln
                         or "re-initialising" in ln) + "\n" + "\n".join(
        ln for ln in refine_log.splitlines() if "refine_pose:" in ln)
    assert "LOST" in r["states"] and r["final_state"] == "TRACKING", f"{r['states']}\n{timeline}"
    assert r["states"].index("LOST") < len(r["states"]) - 1, timeline  # tracking again after LOST
    assert "re-initialising from the refinement result" in log, timeline
    assert "-> LOST at stamp" in log and "LOST -> TRACKING at stamp" in log, timeline
    # poses published after the recovery follow the ground truth (10 s: refinement takes 2-6 s here)
    late = [f["adds_cm"] for f in r["per_frame"][len(r["per_frame"]) // 2:] if f["matched"]]
    assert len(late) >= 10, late
    assert np.mean(late) <= 1.5 and np.max(late) <= 3.0, late
