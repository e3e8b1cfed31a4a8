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
