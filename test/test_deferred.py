"""DeferredReader: messages wait in the DDS reader until taken; ``wait`` blocks on that reader
alone until one is there (a real rclpy context on loopback; a publisher in another thread)."""
from __future__ import annotations

import threading
import time

import pytest

pytestmark = pytest.mark.ros
rclpy = pytest.importorskip("rclpy")
from std_msgs.msg import String  # noqa: E402


def _matched(pub, timeout=30.0):
    deadline = time.monotonic() + timeout
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pub.get_subscription_count() > 0


def test_wait_blocks_until_a_message_and_takes_nothing(ros_node):
    from hp_ros.nodes.deferred import DeferredReader

    node = ros_node
    reader = DeferredReader(node, None, String, "/hp_ros_test_deferred_a", depth=3)
    pub = node.create_publisher(String, "/hp_ros_test_deferred_a", 10)
    _matched(pub)
    assert reader.wait(0.05) is False and reader.take() == []      # nothing there: times out
    sent = threading.Event()

    def later():
        time.sleep(0.3)
        pub.publish(String(data="first"))
        sent.set()

    threading.Thread(target=later, daemon=True).start()
    assert reader.wait(30.0) is True and sent.is_set()                # woken by the message, not the timeout
    assert reader.wait(0.0) is True                                   # wait took nothing
    got = reader.take()
    assert [m.data for m, _ in got] == ["first"] and reader.wait(0.0) is False
    # keep-last depth 3: the oldest are dropped, the rest come oldest first
    for k in range(5):
        pub.publish(String(data=str(k)))
    deadline = time.monotonic() + 30.0
    out = []
    while len(out) < 3 and time.monotonic() < deadline:
        if reader.wait(0.5):
            time.sleep(0.05)  # let the burst land
            out = [m.data for m, _ in reader.take()]
    assert out == ["2", "3", "4"]
    reader.close(node)
    assert reader.wait(0.01) is False and reader.take() == []        # closed: nothing, no error
    node.destroy_publisher(pub)


def test_wait_with_a_bus_does_not_block(ros_node):
    """In one process the bus may deliver on the waiting thread's own executor: no blocking there."""
    from hp_ros.nodes.deferred import DeferredReader
    from hp_ros.nodes.local_bus import LocalBus

    node = ros_node
    bus = LocalBus(produced=["/hp_ros_test_deferred_b"])
    reader = DeferredReader(node, bus, String, "/hp_ros_test_deferred_b", depth=2)
    t = time.monotonic()
    assert reader.wait(5.0) is False and time.monotonic() - t < 1.0
    bus.deliver(node.resolve_topic_name("/hp_ros_test_deferred_b"), String(data="x"), None)
    assert reader.wait(5.0) is True and [m.data for m, _ in reader.take()] == ["x"]


def test_counting_lost_samples_leaves_the_executor_asleep(ros_node):
    """A reader that counts lost samples (the segmentation node's colour images) reads the count
    on demand, so with a sample waiting in the reader the node's executor still has nothing to do
    (the event as an executor waitable measured 18.8 ms of main-thread CPU per frame in the live
    graph); lost() counts from zero, and is 0 once closed."""
    from rclpy.executors import SingleThreadedExecutor

    from hp_ros.nodes.deferred import DeferredReader

    node = ros_node
    reader = DeferredReader(node, None, String, "/hp_ros_test_deferred_lost", depth=2, count_lost=True)
    pub = node.create_publisher(String, "/hp_ros_test_deferred_lost", 10)
    _matched(pub)
    pub.publish(String(data="waits"))
    assert reader.wait(30.0) is True
    ran = []
    node.create_timer(3600.0, lambda: ran.append(1))  # something for the executor to wait on
    ex = SingleThreadedExecutor(context=node.context)
    ex.add_node(node)
    try:
        t0 = time.monotonic()
        for _ in range(3):
            ex.spin_once(timeout_sec=0.2)
        assert time.monotonic() - t0 >= 0.55   # every spin slept its timeout: nothing became ready
    finally:
        ex.remove_node(node)
    assert reader.lost() == 0 and [m.data for m, _ in reader.take()] == ["waits"]
    reader.close(node)
    assert reader.lost() == 0
    node.destroy_publisher(pub)
