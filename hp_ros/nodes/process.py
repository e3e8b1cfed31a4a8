"""A node process's entry point: rclpy set-up, spinning, signals (SIGINT/SIGTERM) and clean-up."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from rclpy.node import Node

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _ignore_stop_signals() -> None:
    """SIGINT/SIGTERM ignored from here on (the process is on its way out: a second Ctrl-C, or the
    one ``ros2 launch`` forwards after the terminal's, must not interrupt the clean-up)."""
    if threading.current_thread() is threading.main_thread():
        for sig in _STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def _join_callback_threads(executor, deadline: float) -> list:
    """Let the executor's in-flight callbacks finish until ``deadline`` (monotonic); the Python
    threads still running then (a long refinement), which would otherwise hold the interpreter's
    exit until they end."""
    pool = getattr(executor, "_executor", None)  # MultiThreadedExecutor's ThreadPoolExecutor
    if isinstance(pool, ThreadPoolExecutor):
        pool.shutdown(wait=False, cancel_futures=True)  # idle workers exit, queued callbacks are dropped
    busy = [t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
    for t in busy:
        t.join(max(0.0, deadline - time.monotonic()))
    return [t for t in busy if t.is_alive()]


def _one_compute_thread() -> None:
    """torch (and Warp's CPU kernels through it) and OpenCV on one thread per process: the nodes'
    tensors and images are small, and intra-op threads that spin-wait on a 2-core lab PC starve
    the other nodes (a refinement on two threads beside the graph took 12 s instead of 2-3).
    OpenCV's pool split a segmentation's small morphology, colour and component calls over a
    second thread: 10.7 ms of process CPU per frame instead of 8.9 on one (and no faster)."""
    import cv2

    cv2.setNumThreads(1)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a requirement
        return
    torch.set_num_threads(1)


def run_node(make_node: Callable[[], Node], name: str, args=None, make_executor=None,
             shutdown_timeout: float = 1.0) -> int:
    """Init rclpy, build the node, spin until SIGINT/SIGTERM or shutdown, clean up; the exit code.

    Start-up errors (invalid parameters, missing files, bad data in a parameter) end with one
    line ``<name>: <reason>`` and exit code 2 instead of a traceback. ``make_executor``: a
    factory for the executor (default: a single-threaded one).

    Signals: under ``ros2 launch`` a Ctrl-C reaches a node twice (the terminal signals the whole
    process group, launch forwards another SIGINT; then it escalates to SIGTERM). rclpy's own
    handlers are not installed: the first SIGINT/SIGTERM stops the spin loop (during start-up it
    aborts the start-up), every later one is ignored - also after this function returns, as the
    process is exiting - so clean-up is never interrupted and the exit code is 0. Callbacks still
    running on executor threads get ``shutdown_timeout`` seconds to finish; threads still busy then
    (a long refinement request) are abandoned: after destroying the node and shutting rclpy down
    the process ends with ``os._exit`` (waiting for them would keep it alive until they end).
    Installs signal handlers only when called from the main thread.
    """
    return run_nodes([(make_node, make_executor)], name, args, shutdown_timeout)


# longest wait of an executor for work: a signal is seen within it (the handler runs between the
# main thread's bytecodes). Each wake rebuilds rclpy's wait set: an idle node woken ten times a
# second spent ~9 ms of CPU per second on it; the nodes' callbacks come at 30 Hz or more anyway
SPIN_TIMEOUT = 0.5


def run_nodes(nodes: list, name: str, args=None, shutdown_timeout: float = 1.0) -> int:
    """:func:`run_node` for several nodes in one process: ``nodes`` is a list of
    ``(make_node, make_executor or None)``; each node gets its own executor. One node spins on
    the main thread; several spin on one thread each (the main thread waits for the signal), so
    every node keeps the threading it has as a process of its own."""
    _one_compute_thread()
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.signals import SignalHandlerOptions

    run = _NodeRun()
    if threading.current_thread() is threading.main_thread():
        for sig in _STOP_SIGNALS:
            signal.signal(sig, run.on_signal)
    built, executors, threads = [], [], []
    code = 0
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
        _build_nodes(nodes, built, executors)
        freeze_startup_objects()
        run.starting = False
        if len(executors) == 1:
            run.spin(executors[0])
        else:
            code = _spin_on_threads(run, built, executors, threads)
    except (KeyboardInterrupt, ExternalShutdownException):
        run.starting = False
    except (FileNotFoundError, ValueError, RuntimeError) as e:  # ParameterError is a ValueError
        run.starting = False
        _ignore_stop_signals()
        print(f"{name}: {e}", flush=True)
        code = 2
    finally:
        run.starting = False
        run.stop.set()
        _ignore_stop_signals()
        abandoned = _stop_executors(built, executors, threads, shutdown_timeout)
        for node in built:
            node.destroy_node()
        rclpy.try_shutdown()
        if abandoned:  # the interpreter's exit would wait for them (concurrent.futures joins its threads)
            _exit_now(code if sys.exc_info()[0] is None else 1)  # 1: an exception is propagating
    return code


class _NodeRun:
    """What a node process's signal handler and spin loops share: ``stop`` (set by the first
    SIGINT/SIGTERM, a failed spin thread, or the end of :func:`run_nodes`), ``starting`` (a signal
    then aborts the start-up) and the spin threads' ``failures``."""

    def __init__(self):
        self.stop = threading.Event()
        self.starting = True
        self.failures = []

    def on_signal(self, signum, frame):
        _ignore_stop_signals()
        if self.stop.is_set():
            return
        self.stop.set()
        if self.starting:
            raise KeyboardInterrupt  # abort start-up (node construction, warm-up); caught in run_nodes

    def spin(self, executor):
        import rclpy

        # the Python handler runs between bytecodes of the main thread: the timeout lets it run
        # (and this loop see ``stop``) within SPIN_TIMEOUT also when no callback is due
        while not self.stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=SPIN_TIMEOUT)

    def spin_thread(self, executor):
        from rclpy.executors import ExternalShutdownException

        try:
            self.spin(executor)
        except ExternalShutdownException:
            pass
        except BaseException as e:  # noqa: BLE001 - reported, and the whole process stops
            import traceback
            self.failures.append(e)
            traceback.print_exc()
        self.stop.set()


def _build_nodes(nodes: list, built: list, executors: list) -> None:
    """Build the nodes into ``built`` and an executor for each into ``executors`` (in place: what
    was built before a failure is cleaned up)."""
    from rclpy.executors import SingleThreadedExecutor

    for make_node, make_executor in nodes:
        built.append(make_node())
    for node, (_, make_executor) in zip(built, nodes):
        executor = make_executor() if make_executor is not None else SingleThreadedExecutor()
        executor.add_node(node)
        executors.append(executor)


def _spin_on_threads(run: _NodeRun, built: list, executors: list, threads: list) -> int:
    """Spin each executor on a thread of its own (added to ``threads``) while the main thread waits
    for ``run.stop`` or rclpy's shutdown; the exit code: 1 when a spin thread failed."""
    import rclpy

    threads.extend(threading.Thread(target=run.spin_thread, args=(e,), name=f"spin-{n.get_name()}", daemon=True)
                   for n, e in zip(built, executors))
    for t in threads:
        t.start()
    while not run.stop.is_set() and rclpy.ok():
        run.stop.wait(0.1)
    for executor in executors:  # out of their waits at once
        executor.wake()
    return 1 if run.failures else 0


def _stop_executors(built: list, executors: list, threads: list, shutdown_timeout: float) -> list:
    """Shut the executors down, their spin threads and in-flight callbacks given ``shutdown_timeout``
    seconds in all; the threads still running then (logged through the first node)."""
    abandoned = []
    if executors:
        deadline = time.monotonic() + shutdown_timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        for executor in executors:
            executor.shutdown(timeout_sec=shutdown_timeout)
            abandoned += _join_callback_threads(executor, deadline)
        abandoned = list(dict.fromkeys(abandoned + [t for t in threads if t.is_alive()]))
        if abandoned and built:
            built[0].get_logger().info(f"stopping with {len(abandoned)} callback(s) still running after "
                                       f"{shutdown_timeout:.1f} s: abandoned")
    return abandoned


def freeze_startup_objects() -> None:
    """Move everything allocated so far (imports: torch, trimesh, warp; models; warm-up) out of the
    garbage collector's reach (``gc.freeze``). A full collection then walks only what the node
    allocates while running: measured in the graph process, full collections took up to 245 ms
    each - every frame in flight waited for them."""
    import gc

    gc.collect()
    gc.freeze()


def _exit_now(code: int) -> None:
    """End the process at once with ``code`` (the propagating exception's traceback printed,
    output flushed: Python and C stdio)."""
    if sys.exc_info()[0] is not None:
        import traceback
        traceback.print_exc()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:
        import ctypes
        ctypes.CDLL(None).fflush(None)  # rcutils logs through C stdio
    except (OSError, AttributeError):
        pass
    os._exit(code)
