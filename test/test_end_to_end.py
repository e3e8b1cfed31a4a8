"""End to end: the whole node graph (separate processes over loopback DDS, started from
hp_ros.graph exactly as the launch file would) tracks a replayed synthetic bag."""
from __future__ import annotations

import re
import time

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def test_full_graph_tracks_synthetic_sequence(tmp_path, ros_env):
    from hp_ros.tools.demo import run_pipeline

    r = run_pipeline(tmp_path / "run", object_spec="builtin:cracker_box", duration=6.0, seed=2,
                     log=lambda *a: None, initial_offset=(0.01, 5.0))
    print({k: v for k, v in r.items() if k not in ("per_frame", "frames", "estimates", "rss_mb")})
    # accuracy against ground truth (the tracker starts 1 cm / 5 deg off)
    assert r["n_matched"] >= 0.3 * r["n_frames"], "too few frames produced a pose"
    assert r["adds_mean_cm"] <= 1.5
    assert r["adds_max_cm"] <= 3.0
    # output rate and latency of the whole graph (loose bounds: tests do not time anything; the
    # measured figures are bench_graph.py's, see README)
    assert r["output_rate_hz"] >= 4.0
    assert r["latency_ms_p95"] < 1500.0
    assert r["tf_messages"] >= 0.3 * r["n_frames"]
    assert r["final_state"] == "TRACKING"
    # the depth fit (model backend) segments every frame once the tracker has a pose: only the
    # frames before its first pose go to the fallback (color|depth)
    seg = next(v for k, v in r["diagnostics"].items() if k.endswith("segmentation_node"))
    by = {k.split(".", 1)[1]: int(v) for k, v in seg.items() if k.startswith("frames_by_backend.")}
    assert by.get("model", 0) >= 0.9 * int(seg["frames"]) and by.get("color|depth", 0) <= 10, seg
    # a static base: the filter estimates the camera->hand correction, the fingertips observe it
    assert int(seg["marker_frames"]) == int(seg["frames"]), seg
    # the same bag offline (hp-ros eval without --est: the core in one process) poses the same
    # frames alike, up to what depends on arrival times in the live graph (frames the segmentation
    # skipped, observations that missed the next frame)
    import numpy as np

    from hp_ros.core.ekf.geometry import pose_error
    from hp_ros.tools.offline import run_offline

    off = run_offline(tmp_path / "run" / "synthetic_bag", initial_offset=(0.01, 5.0), log=lambda *a: None)
    both = sorted(set(off.poses) & set(r["estimates"]))
    assert len(both) >= 0.9 * len(r["estimates"])
    # from 2 s on: a loaded machine's live graph poses its first frames from the start pose before
    # the segmentation's first observations arrive (the offline run has them from the first frame)
    both = [s for s in both if s >= both[0] + 2_000_000_000]
    err = np.array([pose_error(off.poses[s], r["estimates"][s]) for s in both])
    dt_mm, dr_deg = 1000 * np.linalg.norm(err[:, :3], axis=1), np.degrees(np.linalg.norm(err[:, 3:], axis=1))
    print(f"live vs offline over {len(both)} frames: {np.median(dt_mm):.2f} mm / {np.median(dr_deg):.2f} deg "
          f"median, {np.percentile(dt_mm, 90):.2f} mm / {np.percentile(dr_deg, 90):.2f} deg p90, "
          f"{dt_mm.max():.2f} mm / {dr_deg.max():.2f} deg max")
    # (a loaded machine's live graph skips more frames: the tail differs with the load, the bulk not)
    assert np.median(dt_mm) <= 1.0 and np.median(dr_deg) <= 0.5
    assert np.percentile(dt_mm, 90) <= 5.0 and np.percentile(dr_deg, 90) <= 2.5


@pytest.mark.parametrize("single_process", [False, True], ids=["processes", "single_process"])
def test_full_graph_tracks_a_hand_carried_by_an_arm(tmp_path, ros_env, single_process):
    """The `lab` motion (the demo's default): camera->hand comes from /tf and moves with the arm.
    The tracker beats both baselines (the start pose held; the object rigidly in the hand), and on
    a moving base, where its filter estimates no camera->hand correction, it stops reading the
    fingertips - and the segmentation node then looks for no markers (on the static base of the
    test above it does, every frame; in one process the bus cannot unsubscribe: it still does)."""
    from pathlib import Path

    from hp_ros.tools.demo import run_pipeline

    r = run_pipeline(tmp_path / "run", object_spec="builtin:cracker_box", duration=5.0, seed=1, motion="lab",
                     log=lambda *a: None, initial_offset=(0.01, 5.0), single_process=single_process)
    print({k: v for k, v in r.items() if k not in ("per_frame", "frames", "estimates", "rss_mb")})
    logs = {p.stem: p.read_text() for p in Path(r["logs"]).glob("*.log")}
    assert r["final_state"] == "TRACKING" and r["n_matched"] >= 0.5 * r["n_frames"]
    bl = r["baselines"]
    for metric in ("adds_mean_cm", "rot_err_mean_deg"):
        better = min(b[metric] for b in bl.values())
        assert r["tracker_compared"][metric] <= 0.5 * better, (metric, r["tracker_compared"], bl)
    trk_log = next(text for name, text in logs.items() if "tracking" in name or "graph" in name)
    seg = next(v for k, v in r["diagnostics"].items() if k.endswith("segmentation_node"))
    if not single_process:
        assert "not reading /hp_ros/fingertips" in trk_log, trk_log[-2000:]
        # only frames before the tracker knew its base moves (its first /tf) may have looked for markers
        assert int(seg["marker_frames"]) <= 0.2 * int(seg["frames"]), seg
    # /tf corrected by the segmentation's hand alignment to depth: the correction found is the size
    # of the generator's mount error (hand frame, constant)
    import numpy as np

    from hp_ros.core import synth
    from hp_ros.core.ekf.geometry import pose_error

    seq = synth.generate_sequence(synth.SynthConfig(object="builtin:cracker_box", duration_s=5.0, seed=1,
                                                    motion="lab", render=False))
    k = seq.num_frames // 2
    mount = pose_error(np.linalg.inv(seq.cam_hand_frames(published=True)[k]) @ seq.cam_hand_frames()[k], np.eye(4))
    trk = next(v for k, v in r["diagnostics"].items() if k.endswith("tracking_node: tracking"))
    if not single_process:
        assert "reading /hp_ros/hand_alignment" in trk_log
    assert int(trk["hand_alignments"]) >= 0.5 * r["n_frames"], trk
    assert abs(float(trk["hand_correction_mm"]) - 1e3 * np.linalg.norm(mount[:3])) < 1.0, (trk, mount)


def test_full_graph_finds_the_object_without_an_initial_pose(tmp_path, ros_env):
    """Cold start (the default: no initial pose): INITIALIZING, a global estimate by the refinement
    node, then TRACKING. The replay holds from the first status until that answer arrived, so the
    order of states is tested, not the machine's speed (bench_init.py and make demo time it)."""
    from pathlib import Path

    from hp_ros.tools.demo import run_pipeline

    def until_the_first_answer(c) -> bool:
        with c._lock:
            return bool(c.status) and not c.refined

    r = run_pipeline(tmp_path / "run", object_spec="builtin:cracker_box", duration=4.0, seed=2,
                     log=lambda *a: None, pause_while=until_the_first_answer)
    print({k: v for k, v in r.items() if k not in ("per_frame", "frames", "estimates", "rss_mb")})
    logs = {p.stem: p.read_text() for p in Path(r["logs"]).glob("*.log")}
    assert r["states"][0] == "INITIALIZING" and "TRACKING" in r["states"], r["states"]
    assert "refine_pose: global estimate" in logs["refinement_node"], logs["refinement_node"][-2000:]
    assert "INITIALIZING -> TRACKING" in logs["tracking_node"]
    assert r["final_state"] == "TRACKING"
    # the tracker found the object itself, and tracks it (ground truth)
    assert r["n_matched"] >= 0.5 * r["n_frames"], "too few frames produced a pose"
    assert r["adds_mean_cm"] <= 1.5 and r["adds_max_cm"] <= 3.0


@pytest.mark.parametrize("single_process", [False, True], ids=["processes", "single_process"])
def test_bad_initial_pose_is_recovered_through_refinement(tmp_path, ros_env, single_process):
    """LOST -> refinement -> re-initialised, with the real nodes: the tracker starts 6 cm / 10 deg off
    (outside its 1 cm prior), rejects the object observations until it declares the track LOST
    (publishing no pose meanwhile), asks /hp_ros/refine_pose with its estimate re-centred on the
    latest object observation, and tracks again from the refinement node's answer.

    The slip prior (issue 29) is off here (``slip_pos_sigma`` 0): with it, the depth fits pull the
    track back from this start without a LOST (measured: 300 of 300 frames posed, ADD-S 0.16 cm),
    and this test is about the path that must work when they cannot."""
    from pathlib import Path

    import numpy as np

    from hp_ros.tools.demo import run_pipeline

    lost_at = []

    def waiting_for_the_answer(c) -> bool:
        """Hold the replay from LOST until a refinement answer arrived: the sequence cannot run out
        before a slow machine answers (the test asserts the order of states, not how fast)."""
        with c._lock:
            if not lost_at and c.status and c.status[-1][1] == "LOST":
                lost_at.append(c.status[-1][0])
            return bool(lost_at) and not any(t > lost_at[0] for t in c.refined)

    r = run_pipeline(tmp_path / "run", object_spec="builtin:cracker_box", duration=10.0, seed=2,
                     log=lambda *a: None, initial_offset=(0.06, 10.0), single_process=single_process,
                     pause_while=waiting_for_the_answer, node_params={"slip_pos_sigma": 0.0})
    print({k: v for k, v in r.items() if k not in ("per_frame", "frames")})
    logs = {p.stem: p.read_text() for p in Path(r["logs"]).glob("*.log")}
    log = logs["graph_process"] if single_process else logs["tracking_node"]
    refine_log = logs["graph_process"] if single_process else logs["refinement_node"]
    # the tracker's state timeline (state, stamp, reason: one INFO line per transition) and the
    # refinement answers, printed by any failing assertion below
    timeline = "\n".join(ln for ln in log.splitlines() if "state " in ln and " -> " in ln
                         or "re-initialising" in ln) + "\n" + "\n".join(
        ln for ln in refine_log.splitlines() if "refine_pose:" in ln)
    assert "LOST" in r["states"] and r["final_state"] == "TRACKING", f"{r['states']}\n{timeline}"
    assert r["states"].index("LOST") < len(r["states"]) - 1, timeline  # tracking again after LOST
    assert "re-initialising from the refinement result" in log, timeline
    assert "-> LOST at stamp" in log and "LOST -> TRACKING at stamp" in log, timeline
    # while LOST the tracker publishes no pose: the segmentation falls back from the model backend
    # to color|depth (its masks feed the refinement) when that lasts, and returns to it once tracking
    seg_log = logs["graph_process"] if single_process else logs["segmentation_node"]
    lost_at = int(re.search(r"-> LOST at stamp (\d+)", log).group(1))
    switches = [(m.group(1), int(m.group(2))) for m in re.finditer(
        r"object backend '[^']+' -> '([^']+)' at stamp (\d+)", seg_log)]
    # (the replay holds while LOST: when the answer comes within prior_max_age of stream time the
    # segmentation never needs its fallback). Before the tracker's first pose it is the fallback's
    # anyway (the first images can beat the first pose): only the switches after the first to the
    # model backend count.
    first_model = next((i for i, (b, _) in enumerate(switches) if b == "model"), len(switches))
    switches = switches[first_model:]
    assert all(t >= lost_at for b, t in switches if b == "color|depth"), (switches, lost_at)
    back = [t for b, t in switches if b == "model" and t > lost_at]
    fell_back = any(b == "color|depth" for b, _ in switches)
    assert not fell_back or back, switches  # (a loaded machine may fall back again for a frame whose pose came late)
    # poses published after the recovery follow the ground truth (the replay held until the answer)
    late = [f["adds_cm"] for f in r["per_frame"][len(r["per_frame"]) // 2:] if f["matched"]]
    assert len(late) >= 10, late
    assert np.mean(late) <= 1.5 and np.max(late) <= 3.0, late


class _BadImageBurst:
    """``during_replay`` hook: 100 malformed images in the middle of the replay, published from the
    demo's listener node on the camera topics: wrong encoding (yuv422), wrong size (320x240 rgb8)
    and depth that is all NaN (32FC1), each stamped between two real frames."""

    def __init__(self, after_frames: int, count: int = 100):
        self.after_frames, self.count, self.sent = after_frames, count, 0

    def __call__(self, elapsed: float, collector) -> None:
        with collector._lock:
            seen = len(collector.images)
        if self.sent or seen < self.after_frames:
            return
        import numpy as np
        from sensor_msgs.msg import Image

        from hp_ros import graph
        from hp_ros.io import msgs
        from hp_ros.nodes.qos import IMAGE_QOS

        node = collector.node
        color = node.create_publisher(Image, graph.CAMERA_TOPICS["color_image"], IMAGE_QOS)
        depth = node.create_publisher(Image, graph.CAMERA_TOPICS["depth_image"], IMAGE_QOS)
        t0 = time.monotonic()
        while (color.get_subscription_count() < 1 or depth.get_subscription_count() < 1) \
                and time.monotonic() - t0 < 5.0:
            time.sleep(0.05)
        with collector._lock:
            base = max(collector.images)
        for i in range(self.count):
            stamp = base + 5_000_000 + i * 100_000  # between two frames (33 ms apart), after the newest
            kind = i % 3
            if kind == 0:
                m = msgs.numpy_to_image(np.zeros((480, 1280), np.uint8), "mono8", stamp, graph.CAMERA_FRAME, Image)
                m.encoding, m.width = "yuv422", 640  # 2 bytes per pixel
                color.publish(m)
            elif kind == 1:
                color.publish(msgs.numpy_to_image(np.zeros((240, 320, 3), np.uint8), "rgb8", stamp,
                                                  graph.CAMERA_FRAME, Image))
            else:
                depth.publish(msgs.numpy_to_image(np.full((480, 640), np.nan, np.float32), "32FC1", stamp,
                                                  graph.CAMERA_FRAME, Image))
            time.sleep(0.005)  # 200 images/s: a burst
        self.sent = self.count


@pytest.mark.parametrize("single_process", [False, True], ids=["processes", "single_process"])
def test_every_frame_posed_at_half_rate_through_a_bad_image_burst(tmp_path, ros_env, single_process):
    """At half rate, every replayed frame gets a pose, also through a burst of 100 malformed
    images in the middle of the replay, and the run ends TRACKING; the burst is reported, not
    fatal: the segmentation node counts each kind of bad input in /diagnostics."""
    import numpy as np

    from hp_ros.tools.demo import run_pipeline

    burst = _BadImageBurst(after_frames=50)  # of 120
    r = run_pipeline(tmp_path / "run", object_spec="builtin:cracker_box", duration=4.0, seed=2, rate=0.5,
                     log=lambda *a: None, single_process=single_process, during_replay=burst,
                     initial_offset=(0.01, 5.0))
    print({k: v for k, v in r.items() if k not in ("per_frame", "frames", "latencies_ms")})
    assert burst.sent == 100
    missing = [f["stamp_ns"] for f in r["per_frame"] if not f["matched"]]
    assert r["n_matched"] == r["n_frames"], f"{len(missing)} of {r['n_frames']} frames without a pose: {missing}"
    assert r["final_state"] == "TRACKING", r["states"]
    assert r["adds_mean_cm"] <= 1.5
    seg = next(v for k, v in r["diagnostics"].items() if "segmentation" in k)
    errors = {k.split(".", 1)[1] for k, v in seg.items()
              if k.startswith("input_errors.") and not k.endswith(".last") and int(v) > 0}
    assert "colour_encoding" in errors and "colour_size" in errors, seg
    # the real frames were segmented: a malformed image is turned away by the node at once, but
    # DDS keeps only image_queue_depth (5) per reader, so a 200 Hz burst can displace a few good
    # frames before they reach the node (their poses still come, from the joint states)
    assert int(seg["frames"]) >= r["n_frames"] - 8, seg
    assert np.isfinite(r["latency_ms_p95"])
