"""``hp-ros replay BAG``: publish a rosbag2 into a live ROS 2 graph at the recorded rate.

Messages go out as their recorded CDR bytes (``Publisher.publish(bytes)``), so nothing is
re-encoded; rclpy only needs the message class to create the publisher, imported as
``<pkg>.msg.<Name>``. Topics whose type is not importable in this environment are skipped
with a warning. Header stamps are kept as recorded (like ``ros2 bag play``); with ``--clock``
``/clock`` carries the bag time so nodes with ``use_sim_time`` follow it.

QoS: RELIABLE / KEEP_LAST (depth 50, enough for 640x480 images at 30 Hz over loopback, where
BEST_EFFORT loses large frames); ``/tf_static`` is RELIABLE + TRANSIENT_LOCAL so late joiners
still receive the calibration.
"""
from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import time
from pathlib import Path

QOS_DEPTH = 50
TRANSIENT_TOPICS = ("/tf_static",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", help="rosbag2 directory (or a .mcap / .db3 file)")
    parser.add_argument("--rate", type=float, default=1.0, help="playback rate factor (default 1.0)")
    parser.add_argument("--loop", action="store_true", help="start again at the end, until interrupted")
    parser.add_argument("--start-offset", type=float, default=0.0, metavar="S",
                        help="skip the first S seconds of the bag")
    parser.add_argument("--clock", type=float, nargs="?", const=100.0, default=None, metavar="HZ",
                        help="publish /clock (rosgraph_msgs/Clock) with the bag time at HZ (default 100)")
    parser.add_argument("--topics", nargs="+", default=None, metavar="TOPIC",
                        help="publish only these topics (default: all)")
    parser.add_argument("--wait-subscribers", type=int, default=1, metavar="N",
                        help="before playing, wait until the published topics (including /clock) have N "
                             "subscriptions in total (0 = do not wait; default 1)")
    parser.add_argument("--wait-timeout", type=float, default=10.0, metavar="S",
                        help="give up waiting for subscribers after S seconds and play anyway (default 10)")
    parser.add_argument("--static-period", type=float, default=1.0, metavar="S",
                        help="re-publish the bag's latest /tf_static every S seconds of replay (0 = only as "
                             "recorded): a node whose transient-local late-joiner delivery fails still gets the "
                             "calibration within S (default 1)")
    parser.add_argument("--participants", choices=("per-topic", "one"), default="per-topic",
                        help="DDS participants of the replay: one per topic (default; joint states, /tf_static "
                             "and /clock share one) or one for everything (for comparison: see README)")
    parser.add_argument("--pause-file", default=None, metavar="PATH",
                        help="while this file exists the replay holds (the bag's time stands still, and goes on "
                             "where it stopped): a test waits for a slow node without racing the clock")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")


def _msg_class(msgtype: str):
    """``pkg/msg/Name`` -> rclpy message class, or None when the package is not importable."""
    pkg, kind, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ImportError, AttributeError):
        return None


def _qos(topic: str):
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    durability = DurabilityPolicy.TRANSIENT_LOCAL if topic in TRANSIENT_TOPICS else DurabilityPolicy.VOLATILE
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=QOS_DEPTH,
                      reliability=ReliabilityPolicy.RELIABLE, durability=durability)


def _check_args(args) -> None:
    if not args.rate > 0:
        raise ValueError(f"--rate must be > 0, got {args.rate}")
    if args.start_offset < 0:
        raise ValueError(f"--start-offset must be >= 0, got {args.start_offset}")
    if args.clock is not None and not args.clock > 0:
        raise ValueError(f"--clock rate must be > 0 Hz, got {args.clock}")
    if not Path(args.bag).exists():
        raise FileNotFoundError(f"bag not found: {args.bag}")


def run(args) -> int:
    _check_args(args)
    from hp_ros.io.bag import bag_summary, read_bag

    summary = bag_summary(args.bag)
    topics = dict(summary.topics)
    if args.topics:
        missing = sorted(set(args.topics) - set(topics))
        if missing:
            raise ValueError(f"topic(s) {missing} not in bag {args.bag}")
        topics = {t: topics[t] for t in args.topics}
    classes = {}
    for topic, msgtype in topics.items():
        cls = _msg_class(msgtype)
        if cls is None:
            print(f"hp-ros replay: warning: {msgtype} is not importable here; skipping {topic}",
                  file=sys.stderr)
        else:
            classes[topic] = cls
    if not classes:
        raise ValueError(f"nothing to publish from {args.bag}")
    if summary.message_count == 0:
        raise ValueError(f"bag {args.bag} has no messages")
    start_ns = summary.start_ns + int(round(args.start_offset * 1e9))
    if start_ns > summary.end_ns:
        raise ValueError(f"--start-offset {args.start_offset} s is past the end of the bag "
                         f"({summary.duration_s:.3f} s)")

    import rclpy
    from rclpy.signals import SignalHandlerOptions

    # One DDS participant (rclpy context) per topic, as far as the drivers go: measured with one
    # reader (Fast DDS of Jazzy, synchronous publishing, shm or udp alike), a participant that
    # writes 1 MB images next to small reliable topics delivers those in batches: joint states
    # up to 0.5 s late (p95 0.36 s), camera_info 0.5-1.5 s; written from participants of their
    # own, p95 0.9 ms and 1.4 ms (and the colour image p50 0.7 ms). A real camera driver holds
    # its topics in one participant: the nodes must not depend on camera_info arriving promptly.
    contexts, nodes = [], {}
    device_of = _device if getattr(args, "participants", "per-topic") == "per-topic" else (lambda t: "robot")
    for device in sorted({device_of(t) for t in classes} | {"robot"}):
        ctx = rclpy.Context()
        rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
        contexts.append(ctx)
        nodes[device] = rclpy.create_node(f"hp_ros_replay_{device}", context=ctx)
    try:
        pubs = {t: nodes[device_of(t)].create_publisher(c, t, _qos(t)) for t, c in classes.items()}
        clock_pub = None
        if args.clock is not None:
            from rosgraph_msgs.msg import Clock
            clock_pub = nodes["robot"].create_publisher(Clock, "/clock", _qos("/clock"))
        from hp_ros.nodes.process import freeze_startup_objects

        freeze_startup_objects()  # no full garbage collection walking the imports mid-stream
        _wait_for_subscribers([*pubs.values(), *([clock_pub] if clock_pub else [])], args)
        loops = 0
        while True:
            n, wall = _play_once(args, pubs, clock_pub, start_ns, read_bag)
            loops += 1
            if not args.quiet:
                print(f"hp-ros replay: published {n} messages in {wall:.2f} s (pass {loops})", flush=True)
            if not args.loop:
                break
        from rclpy.duration import Duration
        for p in [*pubs.values(), *([clock_pub] if clock_pub else [])]:
            # RELIABLE: let the last messages reach their readers before the writers go away
            p.wait_for_all_acked(Duration(seconds=2.0))
    finally:
        for node in nodes.values():
            node.destroy_node()
        for ctx in contexts:
            rclpy.shutdown(context=ctx)
    return 0


def _device(topic: str) -> str:
    """Participant name of a topic: one per topic (``/a/b`` -> ``a_b``); /tf_static and /clock go
    with the joint states as ``robot`` (a robot's driver and state publisher)."""
    if topic in ("/tf_static", "/clock", "/tf") or topic.endswith("joint_states"):
        return "robot"
    return topic.strip("/").replace("/", "_") or "robot"


def _wait_for_subscribers(pubs: list, args) -> None:
    if args.wait_subscribers <= 0:
        return
    deadline = time.monotonic() + args.wait_timeout
    while time.monotonic() < deadline:
        if sum(p.get_subscription_count() for p in pubs) >= args.wait_subscribers:
            return
        time.sleep(0.02)
    if not args.quiet:
        counts = ", ".join(f"{p.topic_name} {p.get_subscription_count()}" for p in pubs)
        print(f"hp-ros replay: warning: fewer than {args.wait_subscribers} subscription(s) after "
              f"{args.wait_timeout:.1f} s ({counts}); playing anyway", file=sys.stderr)


def _sleep_until(t_wall: float) -> None:
    """Sleep until ``time.monotonic() >= t_wall`` (coarse sleep, then a short busy wait)."""
    while True:
        left = t_wall - time.monotonic()
        if left <= 0:
            return
        time.sleep(left - 0.001 if left > 0.002 else 0)


def _play_once(args, pubs: dict, clock_pub, start_ns: int, read_bag) -> tuple[int, float]:
    """One pass over the bag; returns (messages published, wall seconds)."""
    clock_msg = None
    if clock_pub is not None:
        from rosgraph_msgs.msg import Clock
        clock_msg = Clock()
        clock_period = 1.0 / args.clock
    wall0 = time.monotonic()
    next_clock = wall0

    def publish_clock(now: float) -> None:
        bag_ns = start_ns + int((now - wall0) * args.rate * 1e9)
        clock_msg.clock.sec, clock_msg.clock.nanosec = divmod(bag_ns, 1_000_000_000)
        clock_pub.publish(clock_msg)

    n = 0
    # the bag holds /tf_static once, at its start; a reader that misses that sample (seen: one node of
    # three received it 6 s late, on a loaded machine) would hold its frames without a calibration
    static, next_static = None, math.inf
    static_period = getattr(args, "static_period", 0.0)
    pause_file = getattr(args, "pause_file", None)
    for topic, _, t_ns, data in read_bag(args.bag, topics=list(pubs), raw=True, start_ns=start_ns):
        if pause_file and os.path.exists(pause_file):
            held = time.monotonic()
            while os.path.exists(pause_file):
                time.sleep(0.02)
            wall0 += time.monotonic() - held  # the bag's time stood still meanwhile
            next_clock += time.monotonic() - held
        due = wall0 + (t_ns - start_ns) * 1e-9 / args.rate
        while clock_msg is not None and next_clock <= due:
            _sleep_until(next_clock)
            publish_clock(next_clock)
            next_clock += clock_period
        _sleep_until(due)
        pubs[topic].publish(data)
        n += 1
        if topic == "/tf_static" and static_period > 0:
            static, next_static = data, due + static_period
        elif static is not None and due >= next_static:
            pubs["/tf_static"].publish(static)
            next_static = due + static_period
    return n, time.monotonic() - wall0


def main(argv=None) -> int:
    """``python -m hp_ros.tools.replay BAG ...`` (same as ``hp-ros replay``)."""
    from hp_ros.cli import main as cli_main
    return cli_main(["replay", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
