"""End-to-end fuzz (issue 28): the live graph (one process per node, started from hp_ros.graph as
the launch file does) tracks a replayed synthetic bag while a burst of at least 2,000 generated
malformed messages per input (camera images, camera_info, joint states, /tf_static, the
observations, masks and poses between the nodes, and refine_pose requests) is published into it.
All nodes stay alive, no traceback appears in their logs, the run ends TRACKING, the frames after
the burst are posed, and the nodes' memory stays bounded."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]

PER_INPUT = 2000


class MalformedBurst:
    """``during_replay`` hook: once ``after_frames`` frames were seen, a thread publishes
    ``per_input`` malformed messages on every input of ``fuzz_messages.INPUTS`` (interleaved, as
    fast as it can, stamps drawn around the stream's current stamp) and ``requests`` malformed
    refine_pose requests in batches of 20 concurrent ones."""

    def __init__(self, after_frames: int, per_input: int = PER_INPUT, requests: int = 100, seed: int = 0):
        self.after_frames, self.per_input, self.requests, self.seed = after_frames, per_input, requests, seed
        self.sent: dict = {}
        self.answered = 0
        self.thread = None
        self.t_start = self.t_end = None  # replay seconds
        self.stamp_end = None              # the stream's stamp when the burst ended
        self.error = None

    def __call__(self, elapsed: float, collector) -> None:
        with collector._lock:
            seen = len(collector.images)
        if self.thread is not None or seen < self.after_frames:
            return
        with collector._lock:
            base = max(collector.images)
        self.t_start = elapsed
        self.thread = threading.Thread(target=self._run, args=(collector, base, elapsed), daemon=True)
        self.thread.start()

    def _run(self, collector, base_stamp: int, t0: float) -> None:
        try:
            self._publish(collector, base_stamp)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = repr(e)
        self.t_end = t0 + (time.monotonic() - self._wall0)

    def _publish(self, collector, base_stamp: int) -> None:
        import fuzz_messages as F
        from hp_ros_msgs.srv import RefinePose
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

        from hp_ros import graph

        self._wall0 = wall0 = time.monotonic()
        node = collector.node
        rng = np.random.default_rng(self.seed)
        pick = F.rng_pick(rng)
        pubs = {}
        for topic, build in F.INPUTS.items():
            msg_type = type(build(pick, base_stamp))
            qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL if topic == "/tf_static"
                             else DurabilityPolicy.VOLATILE)
            pubs[topic] = node.create_publisher(msg_type, topic, qos)
        client = node.create_client(RefinePose, graph.SERVICES["refine_pose"])
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and not (client.service_is_ready() and all(
                p.get_subscription_count() > 0 for p in pubs.values())):
            time.sleep(0.05)
        futures = []
        for i in range(self.per_input):
            now = base_stamp + int((time.monotonic() - wall0) * 1e9)
            for topic, build in F.INPUTS.items():
                pubs[topic].publish(build(pick, now))
                self.sent[topic] = self.sent.get(topic, 0) + 1
            if i % (self.per_input // max(1, self.requests // 20)) == 0 and len(futures) < self.requests:
                futures += [client.call_async(F.bad_refine_request(pick, now)) for _ in range(20)]
            time.sleep(0.001)
        self.stamp_end = base_stamp + int((time.monotonic() - wall0) * 1e9)
        t = time.monotonic()
        while not all(f.done() for f in futures) and time.monotonic() - t < 30.0:
            time.sleep(0.05)
        self.answered = sum(1 for f in futures if f.done() and f.result() is not None)
        self.requested = len(futures)


def test_live_graph_survives_a_burst_of_malformed_messages_on_every_input(tmp_path, ros_env):
    from hp_ros.tools.demo import run_pipeline

    burst = MalformedBurst(after_frames=45)
    r = run_pipeline(tmp_path / "run", object_spec="builtin:cracker_box", duration=16.0, seed=2,
                     log=lambda *a: None, during_replay=burst)
    burst.thread.join(60.0)
    summary = {k: v for k, v in r.items() if k not in ("per_frame", "frames", "latencies_ms", "rss_mb")}
    print(summary)
    print({"sent": burst.sent, "answered": burst.answered, "burst_s": (burst.t_start, burst.t_end)})
    logs = {p.stem: p.read_text() for p in Path(r["logs"]).glob("*.log")}
    assert burst.error is None, burst.error
    assert not burst.thread.is_alive(), "the burst did not finish during the replay"
    assert min(burst.sent.values()) >= PER_INPUT and len(burst.sent) >= 12, burst.sent
    assert burst.answered == burst.requested, f"{burst.requested - burst.answered} refine_pose requests unanswered"
    # all nodes alive, no traceback, still tracking
    assert all(r["alive_at_end"].values()), r["alive_at_end"]
    for name, text in logs.items():
        assert "Traceback" not in text, f"{name}:\n{text[-3000:]}"
    assert r["final_state"] == "TRACKING", r["states"]
    # the frames after the burst (and 1 s for the queues to drain) are all posed
    after = [f for f in r["per_frame"] if f["stamp_ns"] > burst.stamp_end + 1_000_000_000]
    assert len(after) >= 30 and all(f["matched"] for f in after), [f["stamp_ns"] for f in after if not f["matched"]]
    posed = r["n_matched"] / r["n_frames"]
    assert posed >= 0.8, posed
    # memory: resident size at the end against just before the burst, per node
    before = [s for t, s in r["rss_mb"] if t <= burst.t_start]
    growth = {k: r["rss_mb"][-1][1][k] - before[-1][k] for k in before[-1]}
    print({"rss_growth_mb": growth, "posed_fraction": posed})
    assert all(g < 40.0 for g in growth.values()), growth
