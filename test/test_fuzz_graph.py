"""End-to-end fuzz (issue 28): the live graph (one process per node, started from hp_ros.graph as
the launch file does) tracks a replayed synthetic bag while a burst of at least 2,000 generated
malformed messages per input (camera images, camera_info, joint states, /tf_static, the
observations, masks and poses between the nodes, and refine_pose requests) is published into it.
All nodes stay alive, no traceback appears in their logs, the run ends TRACKING, the frames after
the burst are posed, and the nodes' memory stays bounded.

The burst takes 20 s of wall time when the machine keeps its pace, longer when it does not; the
replay holds at a late frame until the burst (and the answers to its requests) finished, so the
same stretch of the sequence always follows it, however slow the machine."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]

PER_INPUT = 2000
DURATION = 14.0  # [s] of the synthetic sequence (30 frames/s)
TAIL_S = 4.0  # [s] of the sequence the replay keeps for after the burst: 1 s to drain, the rest asserted posed


class MalformedBurst:
    """``during_replay`` hook: once ``after_frames`` frames were seen, a thread publishes
    ``per_input`` malformed messages on every input of ``fuzz_messages.INPUTS`` (interleaved, as
    fast as it can, stamps drawn around the stream's current stamp) and ``requests`` malformed
    refine_pose requests in batches of 20 concurrent ones."""

    P = 1_800_000_000_000_000_000  # stream time the messages are built at; shifted to the stream's when sent

    def __init__(self, after_frames: int, per_input: int = PER_INPUT, requests: int = 100, seed: int = 0,
                 rate: float = 100.0):
        import fuzz_messages as F

        self.after_frames, self.per_input, self.requests, self.seed = after_frames, per_input, requests, seed
        self.period = 1.0 / rate  # [s] between batches (one message per input each)
        # built before the replay (a few seconds of Python): the burst itself only re-stamps and sends
        pick = F.rng_pick(np.random.default_rng(seed))
        self.messages, big = [], {}
        for _ in range(per_input):
            batch = []
            for topic, build in F.INPUTS.items():
                msg = build(pick, self.P)
                if hasattr(msg, "encoding") and msg.width * msg.height == 640 * 480 and len(msg.data) > 0:
                    # full-size images (a bad stamp only) share one message per topic: 1 MB each
                    stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
                    msg = (big.setdefault(topic, msg), stamp)
                batch.append((topic, msg))
            self.messages.append(batch)
        self.refine_requests = [F.bad_refine_request(pick, self.P) for _ in range(requests)]
        self.sent: dict = {}
        self.answered = 0
        self.thread = None
        self.requested = 0
        self.t_start = self.t_sent = self.t_end = None  # replay seconds: began, all sent, all answered
        self.held_s = 0.0  # [s] the replay held for the burst (``pause_while``)
        self.stamp_start = self.stamp_end = None  # the stream's stamps when the burst began / ended
        self.stamp_first = None  # the first stamp the listener saw (before the burst)
        self.mine = set()  # the camera_info stamps the burst sent (the listener records them too)
        self.error = None

    def __call__(self, elapsed: float, collector) -> None:
        with collector._lock:
            seen = len(collector.images)
        if self.thread is not None or seen < self.after_frames:
            return
        with collector._lock:
            base, self.stamp_first = max(collector.images), min(collector.images)
        self.t_start = elapsed
        self.thread = threading.Thread(target=self._run, args=(collector, base, elapsed), daemon=True)
        self.thread.start()

    def hold(self, at_s: float):
        """``pause_while`` callback: hold the replay from the stream's stamp ``at_s`` seconds after
        its first until the burst thread finished (sent everything, its requests answered or timed
        out). By stamp, not by a count of frames: the listener misses frames under load, and the
        burst's own camera_info stamps are among the ones it records."""

        def holding(collector) -> bool:
            if self.thread is None or not self.thread.is_alive():
                return False
            with collector._lock:
                newest = max((k for k in collector.images if k not in self.mine and k < 2 ** 61), default=0)
            held = newest - self.stamp_first >= at_s * 1e9
            self.held_s += 0.2 if held else 0.0  # pause_while is checked every 0.2 s
            return held

        return holding

    def _run(self, collector, base_stamp: int, t0: float) -> None:
        self._t0 = t0
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
        pubs = {}
        for topic, msg in self.messages[0]:
            msg_type = type(msg[0] if isinstance(msg, tuple) else msg)
            qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL if topic == "/tf_static"
                             else DurabilityPolicy.VOLATILE)
            pubs[topic] = node.create_publisher(msg_type, topic, qos)
        from hp_ros.nodes.refinement_node import SERVICE_QOS

        # responses to 20 requests at once: the client's own response queue must hold them too
        # (the rmw default of 10 would lose half of every batch while this busy listener is behind)
        client = node.create_client(RefinePose, graph.SERVICES["refine_pose"], qos_profile=SERVICE_QOS)
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and not (client.service_is_ready() and all(
                p.get_subscription_count() > 0 for p in pubs.values())):
            time.sleep(0.05)
        futures = []
        now, mine = base_stamp, self.mine
        self.stamp_start = base_stamp
        for i, batch in enumerate(self.messages):
            # the stream's current stamp: the newest camera_info the listener got from the replay
            # (not a clock of our own: one that ran ahead of a slowed replay would be a second,
            # consistent timeline on every topic - a jump the nodes must believe)
            with collector._lock:
                now = max([now] + [k for k in list(collector.images)[-20:] if k not in mine and k < 2 ** 61])
            for topic, msg in batch:
                if isinstance(msg, tuple):  # a shared full-size image and the stamp it was built with
                    msg, stamp = msg
                    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
                t = _restamp(msg, now - self.P)
                if topic == graph.CAMERA_TOPICS["color_info"]:
                    mine.add(t)
                pubs[topic].publish(msg)
                self.sent[topic] = self.sent.get(topic, 0) + 1
            if i % (self.per_input // max(1, self.requests // 20)) == 0 and len(futures) < self.requests:
                futures += [client.call_async(r) for r in self.refine_requests[len(futures):len(futures) + 20]]
            lag = wall0 + (i + 1) * self.period - time.monotonic()  # paced: 12 inputs x 100/s
            if lag > 0:
                time.sleep(lag)
        self.stamp_end = now
        t = time.monotonic()
        self.t_sent = self._t0 + (t - wall0)
        while not all(f.done() for f in futures) and time.monotonic() - t < 60.0:
            time.sleep(0.05)
        self.answered = sum(1 for f in futures if f.done() and f.result() is not None)
        self.requested = len(futures)


def _restamp(msg, shift: int):
    """Move a stamp built around ``MalformedBurst.P`` by ``shift`` (absolute ones - zero, 2**62 -
    stay); returns the new stamp [ns]."""
    header = msg.transforms[0].header if hasattr(msg, "transforms") else getattr(msg, "header", None)
    if header is None:
        return 0
    t = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
    if abs(t - MalformedBurst.P) < 4000 * 1_000_000_000:
        t += shift
        header.stamp.sec, header.stamp.nanosec = int(t // 1_000_000_000), int(t % 1_000_000_000)
    return t


def test_live_graph_survives_a_burst_of_malformed_messages_on_every_input(tmp_path, ros_env):
    from hp_ros.tools.demo import run_pipeline

    burst = MalformedBurst(after_frames=45)
    # half rate, as the bad-image burst test of test_end_to_end: on this shared 2-core machine the
    # burst's own publisher takes most of a core (the full-rate figures are in the README).
    # The burst (2,000 batches at 100/s: 20 s of wall time, more on a loaded machine) must end
    # before the sequence does: the replay holds 4 s before the sequence's end until it has (at most
    # 120 s, run_pipeline's bound), so about 90 frames follow it (fewer by however far this
    # listener, which decides the hold, is behind the replay: seen 1.2 s), not whatever a slow burst
    # left over (seen: a loaded run's burst took 27 s and ended at the sequence's last frame)
    r = run_pipeline(tmp_path / "run", object_spec="builtin:cracker_box", duration=DURATION, seed=2, rate=0.5,
                     log=lambda *a: None, during_replay=burst, initial_offset=(0.01, 5.0),
                     pause_while=burst.hold(DURATION - TAIL_S))
    if burst.thread is not None:
        burst.thread.join(90.0)
    summary = {k: v for k, v in r.items() if k not in ("per_frame", "frames", "latencies_ms", "rss_mb", "diagnostics")}
    print(summary)
    for name, values in r["diagnostics"].items():
        print(name, {k: v for k, v in values.items() if not k.startswith("stage_ms")})
    print({"sent": burst.sent, "answered": burst.answered, "requested": burst.requested,
           "burst_s": (burst.t_start, burst.t_sent, burst.t_end), "replay_held_s": round(burst.held_s, 1)})
    assert burst.thread is not None, "the burst never started (fewer than 45 frames seen)"
    posed = r["n_matched"] / r["n_frames"]
    missing = [f["stamp_ns"] for f in r["per_frame"] if not f["matched"]]
    during = [s for s in missing if burst.stamp_start <= s <= burst.stamp_end]
    print({"unposed": len(missing), "unposed_during_burst": len(during), "cpu_percent": r["cpu_percent"]})
    # memory: resident size at the end against just before the burst, per node
    before = [s for t, s in r["rss_mb"] if t <= burst.t_start]
    growth = {k: r["rss_mb"][-1][1][k] - before[-1][k] for k in before[-1]}
    print({"rss_series": [(round(t, 1), {k: round(v) for k, v in m.items()}) for t, m in r["rss_mb"][::10]]})
    print({"rss_growth_mb": growth, "posed_fraction": posed, "rss_parts_end": r["rss_parts_mb"]})
    stamps = [f["stamp_ns"] for f in r["per_frame"]]
    after = [f for f in r["per_frame"] if burst.stamp_end is not None
             and f["stamp_ns"] > burst.stamp_end + 1_000_000_000]
    timing = {"burst_s": (burst.t_start, burst.t_sent, burst.t_end), "replay_held_s": round(burst.held_s, 1),
              "burst_stamps_s": tuple(None if s is None else round((s - stamps[0]) * 1e-9, 2)
                                      for s in (burst.stamp_start, burst.stamp_end)),
              "sequence_s": round((stamps[-1] - stamps[0]) * 1e-9, 2), "frames_after_burst": len(after),
              "unposed_after_burst": sum(1 for f in after if not f["matched"])}
    print(timing)
    logs = {p.stem: p.read_text() for p in Path(r["logs"]).glob("*.log")}
    assert burst.error is None, burst.error
    assert not burst.thread.is_alive(), f"the burst did not finish while the replay held for it: {timing}"
    assert min(burst.sent.values()) >= PER_INPUT and len(burst.sent) >= 12, burst.sent
    assert burst.answered == burst.requested, \
        f"{burst.requested - burst.answered} of {burst.requested} refine_pose requests unanswered: {timing}"
    # all nodes alive, no traceback, still tracking
    assert all(r["alive_at_end"].values()), r["alive_at_end"]
    for name, text in logs.items():
        assert "Traceback" not in text, f"{name}:\n{text[-3000:]}"
    assert r["final_state"] == "TRACKING", r["states"]
    # the frames after the burst (and 1 s for the queues to drain) are all posed; the hold leaves
    # about 90 of them (fewer by the listener's lag behind the replay, see above)
    assert len(after) >= 30, f"only {len(after)} frames after the burst: {timing}"
    assert all(f["matched"] for f in after), \
        f"frames after the burst not posed (s into the sequence): " \
        f"{[round((f['stamp_ns'] - stamps[0]) * 1e-9, 3) for f in after if not f['matched']]}, {timing}"
    # during the burst the nodes spend their CPU turning bad messages away and drop frames to stay
    # current (latest_only): how many depends on the machine's spare CPU (0.73-0.83 on a 2-core VM
    # shared with other jobs), so the share is bench_fuzz.py's figure (target 0.9 of a clean run,
    # measured quiet) and the test asserts only that most frames still went out
    assert posed >= 0.5, f"{r['n_matched']} of {r['n_frames']} frames posed: {timing}"
    # bounded, not small: the nodes' resident memory grew by 1-160 MB during such a burst (the
    # callbacks themselves allocate nothing that stays - test_fuzz_nodes; the growth is below
    # Python, in the rmw/DDS layer or the allocator: open, see the README)
    assert all(g < 250.0 for g in growth.values()), f"resident memory growth [MB]: {growth}"
