"""The thread-pool executor of nodes whose callbacks run concurrently (the refinement node)."""
from __future__ import annotations

import threading

from rclpy.executors import (ConditionReachedException, ExternalShutdownException, MultiThreadedExecutor,
                             ShutdownException, TimeoutException)


class PoolExecutor(MultiThreadedExecutor):
    """A ``MultiThreadedExecutor`` that waits, after handing a callback to its thread pool, until a
    pool thread has started it (at most ``START_WAIT`` s) before looking for the next one.

    rclpy 7.1's own loops straight back: until a pool thread picks the task up it is neither
    executing nor done, so the executor yields it again - another submission, another entry in
    its futures list, which it scans after every submission. An idle refinement node spent 55 %
    of a core this way (py-spy: ``Future.done`` and the wait-set set-up), and in the single
    process it took the GIL from the segmentation. Semantics are unchanged: callbacks still run on
    the pool, concurrently where their callback groups allow."""

    START_WAIT = 0.05  # [s] a full pool (a long refinement on every thread) cannot hold dispatch for longer

    def _spin_once_impl(self, timeout_sec=None, wait_condition=lambda: False) -> None:
        try:
            handler, _, _ = self.wait_for_ready_callbacks(timeout_sec, None, wait_condition)
        except (ExternalShutdownException, ShutdownException, TimeoutException, ConditionReachedException):
            return
        started = threading.Event()

        def run():
            started.set()
            handler()

        self._executor.submit(run)
        self._futures.append(handler)
        started.wait(self.START_WAIT)
        for task in self._futures[:]:
            if task.done():
                self._futures.remove(task)
                task.result()  # raise any exception of the callback, as rclpy does
