"""LocalBus: in-process delivery between the nodes of one process (single_process:=true)."""
from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.ros


def _spin_until(executor, cond, timeout=5.0):
    t0 = time.monotonic()
    while not cond() and time.monotonic() - t0 < timeout:
        executor.spin_once(timeout_sec=0.05)
    return cond()


@pytest.fixture
def context(ros_env):
    rclpy = pytest.importorskip("rclpy")
    ctx = rclpy.Context()
    rclpy.init(context=ctx, args=["--ros-args", "-r", "__ns:=/hp_ros", "-r", "/cam/image:=/remapped/image"])
    yield ctx
    rclpy.shutdown(context=ctx)


def test_produced_topic_is_delivered_as_the_object_itself_without_dds(context):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import String

    from hp_ros.nodes.local_bus import LocalBus, publisher, subscribe

    bus = LocalBus(["/hp_ros/out"])
    a = rclpy.create_node("producer", context=context)
    b = rclpy.create_node("consumer", context=context)
    got = []
    subscribe(b, bus, String, "/hp_ros/out", lambda m: got.append(m), 10)
    pub = publisher(a, bus, String, "/hp_ros/out", 10)
    ex = SingleThreadedExecutor(context=context)
    ex.add_node(a)
    ex.add_node(b)
    sent = [String(data=str(i)) for i in range(5)]
    for m in sent:
        pub.publish(m)
    assert _spin_until(ex, lambda: len(got) == 5)
    assert all(g is s for g, s in zip(got, sent))  # the objects themselves, in order: nothing serialised
    # no DDS reader was made for the produced topic, and the publisher reports the local one
    assert a.count_subscribers("/hp_ros/out") == 0
    assert pub.get_subscription_count() == 1
    ex.shutdown()
    a.destroy_node()
    b.destroy_node()


def test_external_topic_is_subscribed_once_and_fanned_out_with_message_info(context):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import String

    from hp_ros.nodes.local_bus import LocalBus, subscribe

    bus = LocalBus([])
    a = rclpy.create_node("first", context=context)
    b = rclpy.create_node("second", context=context)
    outside = rclpy.create_node("camera", namespace="/", context=context)
    got_a, got_b = [], []
    # the topic name is remapped (/cam/image -> /remapped/image) like a node's own subscription
    subscribe(a, bus, String, "/cam/image", lambda m, info: got_a.append((m, info)), 10)
    subscribe(b, bus, String, "/cam/image", lambda m: got_b.append(m), 10)
    ex = SingleThreadedExecutor(context=context)
    for n in (a, b, outside):
        ex.add_node(n)
    pub = outside.create_publisher(String, "/remapped/image", 10)
    assert _spin_until(ex, lambda: pub.get_subscription_count() >= 1)
    assert outside.count_subscribers("/remapped/image") == 1  # one DDS reader for both nodes
    for i in range(3):
        pub.publish(String(data=f"frame {i}"))
    assert _spin_until(ex, lambda: len(got_a) == 3 and len(got_b) == 3)
    assert [m.data for m, _ in got_a] == [m.data for m in got_b] == ["frame 0", "frame 1", "frame 2"]
    assert all(m is n for (m, _), n in zip(got_a, got_b))  # deserialised once
    assert all(info["source_timestamp"] > 0 for _, info in got_a)
    ex.shutdown()
    for n in (a, b, outside):
        n.destroy_node()


def test_delivery_runs_on_the_subscribing_nodes_executor(context):
    """A local delivery is a callback of the receiving node's executor (its thread), not of the
    publisher's: nodes on separate executors need no extra locking."""
    import threading

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import String

    from hp_ros.nodes.local_bus import LocalBus, publisher, subscribe

    bus = LocalBus(["/hp_ros/out"])
    a = rclpy.create_node("producer2", context=context)
    b = rclpy.create_node("consumer2", context=context)
    threads = []
    subscribe(b, bus, String, "/hp_ros/out", lambda m: threads.append(threading.current_thread().name), 10)
    pub = publisher(a, bus, String, "/hp_ros/out", 10)
    ex_b = SingleThreadedExecutor(context=context)
    ex_b.add_node(b)
    stop = threading.Event()

    def spin_b():
        while not stop.is_set():
            ex_b.spin_once(timeout_sec=0.05)

    t = threading.Thread(target=spin_b, name="executor-b")
    t.start()
    try:
        pub.publish(String(data="x"))  # from the test's thread
        t0 = time.monotonic()
        while not threads and time.monotonic() - t0 < 5.0:
            time.sleep(0.01)
    finally:
        stop.set()
        t.join()
    assert threads == ["executor-b"]
    ex_b.shutdown()
    a.destroy_node()
    b.destroy_node()
