"""nodes.executor.PoolExecutor: rclpy's MultiThreadedExecutor semantics without its resubmission spin."""
from __future__ import annotations

import threading
import time

import pytest

pytestmark = pytest.mark.ros


@pytest.fixture
def context(ros_env):
    rclpy = pytest.importorskip("rclpy")
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.shutdown(context=ctx)


def _busy(seconds: float) -> None:
    """Python work holding the GIL (as message decoding does), unlike time.sleep."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        pass


def _run(executor, node, n_calls: int, long_call: float = 0.0):
    """Spin ``executor`` until a 200 Hz timer's callback ran ``n_calls`` times; returns (calls,
    submissions to the pool, timer calls while a ``long_call`` s callback of another group ran)."""
    from rclpy.callback_groups import MutuallyExclusiveCallbackGroup

    calls, during_long = [0], [0]
    long_running = threading.Event()

    def tick():
        _busy(0.001)
        calls[0] += 1
        if long_running.is_set():
            during_long[0] += 1

    def long():
        long_running.set()
        time.sleep(long_call)
        long_running.clear()
        long_timer.cancel()

    node.create_timer(0.005, tick, callback_group=MutuallyExclusiveCallbackGroup())
    if long_call:
        long_timer = node.create_timer(0.01, long, callback_group=MutuallyExclusiveCallbackGroup())
    submitted = [0]
    pool = executor._executor
    submit = pool.submit

    def counting_submit(*a, **k):
        submitted[0] += 1
        return submit(*a, **k)

    pool.submit = counting_submit
    executor.add_node(node)
    t0 = time.monotonic()
    while calls[0] < n_calls and time.monotonic() - t0 < 10.0:
        executor.spin_once(timeout_sec=0.05)
    executor.shutdown()
    return calls[0], submitted[0], during_long[0]


def test_each_callback_is_handed_to_the_pool_once(context):
    import rclpy

    from hp_ros.nodes.executor import PoolExecutor

    node = rclpy.create_node("pool_test", context=context)
    calls, submitted, _ = _run(PoolExecutor(num_threads=3, context=context), node, 60)
    node.destroy_node()
    assert calls >= 60
    # rclpy's own MultiThreadedExecutor submits the same pending task again until a pool thread
    # starts it (measured here: 120 submissions for 60 calls)
    assert submitted <= calls + 5, (submitted, calls)


def test_a_long_callback_does_not_stop_the_other_groups(context):
    """What the refinement node relies on: buffering goes on during a long refinement."""
    import rclpy

    from hp_ros.nodes.executor import PoolExecutor

    node = rclpy.create_node("pool_test_long", context=context)
    calls, _, during_long = _run(PoolExecutor(num_threads=3, context=context), node, 80, long_call=0.3)
    node.destroy_node()
    assert calls >= 80
    assert during_long >= 20, during_long  # 0.3 s of a 200 Hz timer: ~60 calls, none if serialised
