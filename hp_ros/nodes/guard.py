"""No message may kill a node or silently stop its work.

* :class:`~hp_ros.nodes.logs.ProblemLog` (in ``logs``) counts and logs what is refused.
* :class:`GuardedNode` - a ``rclpy`` ``Node`` whose subscription, service, timer and guard
  condition callbacks all go through :class:`CallbackGuard`: an exception that escapes a
  callback is logged (one line, no traceback), counted, and the node keeps running. A service
  callback that fails still answers (``success = False`` when the response has that field).
* :class:`SupervisedWorker` - a worker thread that is restarted when it dies; the node reports it
  (``/diagnostics`` ERROR) for ``ERROR_HOLD`` seconds after the restart.

Start-up errors are not caught here: they happen in the node's constructor, before any callback,
and ``run_node`` turns them into one line and exit code 2.
"""
from __future__ import annotations

import inspect
import threading
import time
from typing import Callable, Optional

from rclpy.node import Node

from hp_ros.nodes.logs import FastLogger, ProblemLog

def _takes_two(callback: Callable) -> bool:
    """True when ``callback`` cannot be called with one argument but can with two (an rclpy
    subscription callback that wants the message info), as rclpy decides it."""
    try:
        sig = inspect.signature(callback)
    except (TypeError, ValueError):
        return False
    try:
        sig.bind(object())
        return False
    except TypeError:
        pass
    try:
        sig.bind(object(), object())
        return True
    except TypeError:
        return False


class CallbackGuard:
    """Wraps callbacks so that an exception is logged once per site (throttled), counted under
    ``callback_errors.<site>`` and swallowed."""

    def __init__(self, problems: ProblemLog):
        self.problems = problems
        self.failures = 0

    def failed(self, site: str, e: BaseException) -> None:
        self.failures += 1
        tb = e.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = f" at {tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}" if tb is not None else ""
        self.problems.warn(f"callback_errors.{site}", f"{site}: {type(e).__name__}: {str(e)[:300]}{where}; "
                           "skipped, the node keeps running", value=type(e).__name__)

    def wrap(self, callback: Callable, site: str, message_callback: bool = False) -> Callable:
        """``callback`` guarded. ``message_callback``: keep rclpy's one/two-argument distinction
        (subscriptions look at the signature to decide whether to pass the message info)."""
        if getattr(callback, "_hp_ros_guarded", False):
            return callback
        guard = self

        if message_callback and _takes_two(callback):
            def guarded(msg, info):
                try:
                    return callback(msg, info)
                except Exception as e:  # noqa: BLE001 - the point of the guard
                    guard.failed(site, e)
        elif message_callback:
            def guarded(msg):
                try:
                    return callback(msg)
                except Exception as e:  # noqa: BLE001
                    guard.failed(site, e)
        else:
            def guarded(*args):
                try:
                    return callback(*args)
                except Exception as e:  # noqa: BLE001
                    guard.failed(site, e)
        guarded._hp_ros_guarded = True
        return guarded

    def wrap_service(self, callback: Callable, site: str) -> Callable:
        """A service callback that always answers: on an exception, the response it was given with
        ``success = False`` and ``message`` saying what failed (when the response has them)."""
        guard = self

        def guarded(request, response):
            try:
                return callback(request, response)
            except Exception as e:  # noqa: BLE001
                guard.failed(site, e)
                if hasattr(response, "success"):
                    response.success = False
                if hasattr(response, "message"):
                    response.message = f"internal error: {type(e).__name__}: {str(e)[:200]}"
                return response
        guarded._hp_ros_guarded = True
        return guarded


def _site(topic: str) -> str:
    return topic.strip("/").replace("/", ".") or "root"


class GuardedNode(Node):
    """A ``Node`` whose callbacks cannot take it down (see the module docstring).

    ``self.problems`` (:class:`ProblemLog`) counts refused input and callback failures; the node
    reports ``self.problem_values()`` in its /diagnostics."""

    def __init__(self, node_name: str, **kwargs):
        super().__init__(node_name, **kwargs)
        self._logger = FastLogger(self._logger.name)  # same logger, without rclpy's inspect-based caller lookup
        self.problems = ProblemLog(self)
        self.guard = CallbackGuard(self.problems)

    # rclpy's own Node.__init__ creates the parameter services before ``guard`` exists: those stay as they are
    def _wrap(self, callback, site: str, message_callback: bool = False):
        guard = self.__dict__.get("guard")
        return callback if guard is None else guard.wrap(callback, site, message_callback)

    def create_subscription(self, msg_type, topic, callback, qos_profile, **kwargs):
        return super().create_subscription(msg_type, topic, self._wrap(callback, f"sub.{_site(topic)}", True),
                                           qos_profile, **kwargs)

    def create_publisher(self, msg_type, topic, qos_profile, **kwargs):
        """As rclpy's, without its default QoS event handlers (incompatible QoS / type), unless
        ``event_callbacks`` is given. Each handler is a waitable that the executor puts into its wait
        set on every wake: with two per publisher, a wake of a node with 12 publishers cost 0.44 ms
        of CPU, without them 0.23 ms (rclpy 7.1), and the tracker wakes a few times per frame. A
        subscriber whose QoS does not match still logs it on its side (requested incompatible QoS);
        our own subscriptions keep their handlers, so a driver's mismatch is reported here."""
        if "event_callbacks" not in kwargs:
            from rclpy.event_handler import PublisherEventCallbacks

            kwargs["event_callbacks"] = PublisherEventCallbacks(use_default_callbacks=False)
        return super().create_publisher(msg_type, topic, qos_profile, **kwargs)

    def create_service(self, srv_type, srv_name, callback, **kwargs):
        guard = self.__dict__.get("guard")
        if guard is not None:
            callback = guard.wrap_service(callback, f"srv.{_site(srv_name)}")
        return super().create_service(srv_type, srv_name, callback, **kwargs)

    def create_timer(self, timer_period_sec, callback, *args, **kwargs):
        name = getattr(callback, "__name__", "timer")
        return super().create_timer(timer_period_sec, self._wrap(callback, f"timer.{name}"), *args, **kwargs)

    def create_guard_condition(self, callback, *args, **kwargs):
        return super().create_guard_condition(self._wrap(callback, "guard_condition"), *args, **kwargs)

    def problem_values(self) -> dict:
        """/diagnostics values of the refused input and callback failures."""
        return self.problems.diagnostics()


class SupervisedWorker:
    """A daemon thread running ``target`` that is started again when ``target`` raises (after
    ``backoff`` s) while ``running()`` is true; :meth:`check` also restarts it if the thread is gone
    for any other reason. ``restarts``, ``last_error`` and ``error_active()`` feed /diagnostics."""

    ERROR_HOLD = 30.0  # [s] /diagnostics stays ERROR this long after a restart

    def __init__(self, target: Callable[[], None], name: str, problems: ProblemLog,
                 running: Callable[[], bool], backoff: float = 0.05):
        self._target, self.name, self._problems, self._running = target, name, problems, running
        self.backoff = backoff
        self.restarts = 0
        self.last_error: Optional[str] = None
        self._last_restart = -1e9
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        with self._lock:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            self._target()
            return
        except Exception as e:  # noqa: BLE001 - reported and restarted
            self.last_error = f"{type(e).__name__}: {str(e)[:200]}"
        if not self._running():
            return
        self._problems.warn(f"worker_died.{self.name}", f"worker thread {self.name!r} died ({self.last_error}): "
                            "restarted")
        time.sleep(self.backoff)
        self._restart()

    def _restart(self) -> None:
        if self._running():
            self.restarts += 1
            self._last_restart = time.monotonic()
            self.start()

    def check(self) -> None:
        """Restart the thread if it is gone while it should run (call periodically)."""
        if self._running() and not self.is_alive():
            self.last_error = self.last_error or "thread ended"
            self._restart()

    def error_active(self) -> bool:
        return time.monotonic() - self._last_restart < self.ERROR_HOLD

    def is_alive(self) -> bool:
        t = self._thread
        return t is not None and t.is_alive()

    def join(self, timeout: Optional[float] = None) -> None:
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
