"""Pieces every hp_ros node shares: parameters, QoS, hand/object loading, joint-state and
camera->hand bookkeeping, and "log once" error reporting.

Nothing here does estimation math: that lives in ``hp_ros.core``. This module only turns
messages and parameters into core objects and back.
"""
from __future__ import annotations

import bisect
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.executors import (ConditionReachedException, ExternalShutdownException, MultiThreadedExecutor,
                             ShutdownException, TimeoutException)
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from hp_ros.io import msgs

# Images of 640x480 over Fast DDS: RELIABLE delivers all, BEST_EFFORT lost ~60% (DESIGN.md).
IMAGE_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
STATE_QOS = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
OUTPUT_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
TF_STATIC_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)


# --- parameters -------------------------------------------------------------------------------

@dataclass
class Param:
    """A declared parameter: default, description and an optional validator.

    ``check(value)`` returns an error text (or None when the value is valid).
    """

    default: Any
    description: str
    check: Optional[Callable[[Any], Optional[str]]] = None
    read_only: bool = True


def one_of(*choices) -> Callable[[Any], Optional[str]]:
    return lambda v: None if v in choices else f"must be one of {list(choices)}, got {v!r}"


def positive(v) -> Optional[str]:
    return None if v > 0 else f"must be > 0, got {v!r}"


def non_negative(v) -> Optional[str]:
    return None if v >= 0 else f"must be >= 0, got {v!r}"


def length_in(*lengths) -> Callable[[Any], Optional[str]]:
    return lambda v: None if len(v) in lengths else f"must have {' or '.join(map(str, lengths))} values, got {len(v)}"


COMMON_PARAMS = {
    "camera_frame": Param("camera_color_optical_frame", "camera optical frame (REP-103) of the colour stream"),
    "hand_base_frame": Param("ah_palm_link", "hand base frame the camera->hand transform refers to"),
    "joint_naming": Param("wonik", "joint names of the driver: wonik (ah_joint00..33) or simlab (joint_0.0..15.0)",
                          one_of("wonik", "simlab")),
    "hand_urdf": Param("", "hand description (.urdf/.xacro); empty = the project's URDF (primitive geometry)"),
    "mesh_search_path": Param([""], "folders to resolve package:// mesh URIs when ament_index cannot"),
    "object_mesh": Param("builtin:cracker_box", "object mesh (OBJ/PLY/STL/GLB) or builtin:cracker_box|soup_can"),
    "object_units": Param("auto", "object mesh units", one_of("m", "mm", "auto")),
    "object_frame": Param("object", "TF child frame of the object pose"),
    "camera_to_hand": Param([0.0], "camera->hand-base transform [x y z qx qy qz qw]; [0.0] = take it from /tf_static",
                            length_in(1, 7)),
    "max_stamp_jump": Param(0.5, "a message stamped this far [s] from its own stream's newest accepted stamp is "
                            "refused, unless stamp_jump_confirm messages in a row on two streams confirm a jump of "
                            "the timeline (a looping bag, a restarted driver): then the node resets", positive),
    "stamp_jump_confirm": Param(5, "consecutive advancing messages per stream that confirm a jump of the timeline",
                                positive),
}


def stamp_detector(params: dict):
    """The node's :class:`hp_ros.io.stamps.StampJumpDetector` from ``max_stamp_jump`` / ``stamp_jump_confirm``."""
    from hp_ros.io.stamps import StampJumpDetector

    return StampJumpDetector(int(params["max_stamp_jump"] * 1e9), int(params["stamp_jump_confirm"]))


class ParameterError(ValueError):
    """A parameter value failed validation (the node refuses to start / to change it)."""


def declare_parameters(node: Node, spec: dict) -> dict:
    """Declare ``spec`` (name -> Param) with descriptors, validate, return ``{name: value}``.

    Invalid start-up values raise :class:`ParameterError` with every problem listed. Later
    changes through ``ros2 param set`` are validated by the same checks and refused when
    invalid or read-only.
    """
    values, problems = {}, []
    for name, p in spec.items():
        node.declare_parameter(name, p.default, ParameterDescriptor(description=p.description, read_only=p.read_only))
        v = node.get_parameter(name).value
        if isinstance(p.default, list) and isinstance(v, (tuple, np.ndarray)):
            v = list(v)
        err = p.check(v) if p.check else None
        if err:
            problems.append(f"{name}: {err}")
        values[name] = v

    def on_set(params):
        for prm in params:
            p = spec.get(prm.name)
            if p is not None and p.check is not None:
                err = p.check(prm.value)
                if err:
                    return SetParametersResult(successful=False, reason=f"{prm.name}: {err}")
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(on_set)
    if problems:
        raise ParameterError("invalid parameters: " + "; ".join(problems))
    return values


def load_hand(params: dict):
    """HandModel from the ``hand_urdf`` / ``joint_naming`` / ``mesh_search_path`` parameters."""
    from hp_ros.core.hand import HandModel

    if params.get("hand_urdf"):
        search = [p for p in params.get("mesh_search_path", []) if p]
        return HandModel.from_urdf(params["hand_urdf"], naming=params["joint_naming"], mesh_search_path=search)
    return HandModel.default(naming=params["joint_naming"])


def load_object(params: dict):
    """ObjectModel from the ``object_mesh`` / ``object_units`` parameters."""
    from hp_ros.core.objects import ObjectModel

    return ObjectModel.from_spec(params["object_mesh"], units=params["object_units"])


def camera_to_hand_from_param(value) -> Optional[np.ndarray]:
    """``[x y z qx qy qz qw]`` -> (4,4) T_cam_hand; ``[0.0]`` (unset) -> None."""
    if len(value) != 7:
        return None
    import torch

    from hp_ros.core import se3

    T = se3.pose_from_xyz_quat(torch.tensor(value[:3], dtype=torch.float64),
                               torch.tensor(value[3:], dtype=torch.float64), dtype=torch.float64)
    return T.numpy()


# --- errors: one clear line per problem, not one per message ------------------------------------

class OnceLogger:
    """Log each distinct problem once (then count repeats), so bad streams don't flood logs."""

    def __init__(self, node: Node):
        self._node = node
        self.counts: dict = {}

    def warn(self, key: str, text: str) -> None:
        n = self.counts.get(key, 0)
        self.counts[key] = n + 1
        if n == 0:
            self._node.get_logger().warning(f"{text} (further occurrences counted in diagnostics, not logged)")

    def total(self) -> int:
        return sum(self.counts.values())


def diagnostics_message(node: Node, name: str, level: int, message: str, values: dict, hardware_id: str = "hp_ros"):
    """A one-status diagnostic_msgs/DiagnosticArray stamped now (values become string KeyValues)."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    st = DiagnosticStatus(name=name, hardware_id=hardware_id, level=level, message=message,
                          values=[KeyValue(key=str(k), value=str(v)) for k, v in values.items()])
    arr = DiagnosticArray(status=[st])
    arr.header.stamp = node.get_clock().now().to_msg()
    return arr


def stage_medians_ms(frames: list, stages) -> dict:
    """``{"stage_ms.<name>": median ms}`` over ``frames`` (dicts of wall-clock ns stamps) for each
    ``(name, from_key, to_key)`` of ``stages`` (reported in /diagnostics: where a frame's time goes)."""
    out = {}
    for name, a, b in stages:
        d = [f[b] - f[a] for f in frames if a in f and b in f]
        if d:
            out[f"stage_ms.{name}"] = round(float(np.median(d)) * 1e-6, 2)
    return out


# --- joint states -----------------------------------------------------------------------------

class JointStateBuffer:
    """Time-ordered joint vectors from JointState messages, interpolated to any stamp.

    ``add`` validates a message completely before it changes anything: names, finite positions
    (:mod:`hp_ros.io.validate`) and, with a ``stamps`` detector (:class:`hp_ros.io.stamps.
    StampJumpDetector`, shared with the node's other streams), its stamp against the stream's own
    recent stamps. Refused messages raise :class:`~hp_ros.io.validate.InvalidMessage` (a
    ValueError with a ``kind``): a stray stamp, a message older than the newest by more than
    ``reorder_ns`` (late); messages slightly out of order are inserted in place. A sustained jump
    of the timeline (the detector's RESET: a looping bag, a restarted driver) clears the buffer and
    sets :attr:`reset_pending`, so the owner can reset its estimate. Without a detector a jump back
    by more than ``reset_ns`` does that (one message suffices then).
    """

    def __init__(self, mapper, capacity: int = 400, reorder_ns: int = 50_000_000, reset_ns: int = 1_000_000_000,
                 stamps=None, stream: str = "joint_states"):
        self.mapper = mapper
        self.capacity = capacity
        self.reorder_ns = reorder_ns
        self.reset_ns = reset_ns
        self.stamps_check, self.stream = stamps, stream
        self.stamps: list = []
        self.values: list = []
        self.reset_pending = False

    def clear(self) -> None:
        self.stamps.clear()
        self.values.clear()

    def add(self, msg) -> bool:
        """Store one sensor_msgs/JointState; ValueError (nothing changed) for a refused message.
        False when it is stored but the joint vector is not complete yet."""
        from hp_ros.io.validate import InvalidMessage

        names, positions, stamp_ns = msgs.joint_state_to_numpy(msg)
        self.mapper.update(names, positions, require_complete=False, dry_run=True)  # names known
        if self.stamps_check is not None:
            v = self.stamps_check.check(self.stream, stamp_ns)
            if not v.accepted:
                raise InvalidMessage(f"joint_states_{v.kind}", f"joint state refused: {v.text}")
            jumped = v.verdict == "reset"
        else:
            if stamp_ns <= 0:
                raise InvalidMessage("joint_states_stamp_zero", "joint state with a zero stamp refused")
            jumped = bool(self.stamps) and stamp_ns < self.stamps[-1] - self.reset_ns
        if not jumped and self.stamps and stamp_ns < self.stamps[-1] - self.reorder_ns:
            raise InvalidMessage("joint_states_late", f"joint state {(self.stamps[-1] - stamp_ns) * 1e-9:.3f} s "
                                 f"older than the newest (more than {self.reorder_ns * 1e-9:.3f} s late): dropped")
        if jumped:
            self.clear()
            self.reset_pending = True
        q = self.mapper.update(names, positions, require_complete=False)
        if not self.mapper.is_complete:
            return False
        i = bisect.bisect_right(self.stamps, stamp_ns)
        if i > 0 and self.stamps[i - 1] == stamp_ns:
            self.values[i - 1] = q
            return True
        self.stamps.insert(i, stamp_ns)
        self.values.insert(i, q)
        if len(self.stamps) > self.capacity:
            del self.stamps[0], self.values[0]
        return True

    def latest(self):
        """``(stamp_ns, q (J,))`` of the newest message, or None."""
        return (self.stamps[-1], self.values[-1]) if self.stamps else None

    def at(self, stamp_ns: int, max_gap_ns: int = 100_000_000) -> Optional[np.ndarray]:
        """Joint vector linearly interpolated at ``stamp_ns``; None when the stamp is outside
        the buffer by more than ``max_gap_ns`` (then the caller waits or skips)."""
        if not self.stamps:
            return None
        i = bisect.bisect_left(self.stamps, stamp_ns)
        if i < len(self.stamps) and self.stamps[i] == stamp_ns:
            return self.values[i].copy()
        if i == 0:
            return self.values[0].copy() if self.stamps[0] - stamp_ns <= max_gap_ns else None
        if i == len(self.stamps):
            return self.values[-1].copy() if stamp_ns - self.stamps[-1] <= max_gap_ns else None
        t0, t1 = self.stamps[i - 1], self.stamps[i]
        w = (stamp_ns - t0) / (t1 - t0)
        return (1 - w) * self.values[i - 1] + w * self.values[i]


# --- camera -> hand-base calibration ------------------------------------------------------------

class CameraToHand:
    """The camera->hand-base transform ``T_cam_hand`` (4,4): from a parameter when given,
    else from ``/tf_static`` (chaining static transforms from ``camera_frame`` to
    ``hand_base_frame`` in either direction)."""

    MAX_FRAMES = 256  # static frames kept (a robot has tens)

    def __init__(self, node: Node, camera_frame: str, hand_frame: str, fixed: Optional[np.ndarray] = None):
        self.camera_frame, self.hand_frame = camera_frame, hand_frame
        self.fixed = fixed
        self._logger = node.get_logger()
        self._problems = getattr(node, "problems", None)  # guard.ProblemLog of a GuardedNode
        self._edges: dict = {}  # child -> (parent, T_parent_child)
        self._value = fixed
        if fixed is None:
            try:
                from tf2_msgs.msg import TFMessage
            except ImportError as e:  # a real ROS install has tf2_msgs; the venv builds a stand-in
                raise RuntimeError("tf2_msgs is not importable: set the camera_to_hand parameter") from e
            node.create_subscription(TFMessage, "/tf_static", self._on_tf_static, TF_STATIC_QOS)

    @property
    def T_cam_hand(self) -> Optional[np.ndarray]:
        return self._value

    def _on_tf_static(self, msg) -> None:
        # each transform validated on its own (finite translation, normalisable quaternion): a bad
        # one is refused and changes nothing, the good ones of the same message are kept
        for t in msg.transforms:
            try:
                T, parent, child, _ = msgs.transform_stamped_to_matrix(t)
            except ValueError as e:
                self._refuse(e, f"/tf_static {str(t.header.frame_id)[:40]!r} -> {str(t.child_frame_id)[:40]!r}")
                continue
            if parent == child or not child:
                continue
            if child not in self._edges and len(self._edges) >= self.MAX_FRAMES:
                self._refuse(ValueError(f"more than {self.MAX_FRAMES} frames"), f"/tf_static frame {child[:40]!r}")
                continue
            self._edges[child] = (parent, T)
        value = self._resolve()
        if value is not None and (self._value is None or not np.allclose(value, self._value)):
            t = value[:3, 3]
            self._logger.info(f"camera->hand from /tf_static: {self.camera_frame} -> {self.hand_frame} "
                              f"t = [{t[0]:.4f}, {t[1]:.4f}, {t[2]:.4f}] m")
        self._value = value if value is not None else self._value

    def _refuse(self, error: Exception, what: str) -> None:
        if self._problems is not None:
            self._problems.reject(error, "tf_static", f"{what} refused: ")
        else:
            self._logger.warning(f"{what} refused: {error}", throttle_duration_sec=60.0)

    def _chain_to_root(self, frame):
        T, chain = np.eye(4), [frame]
        while frame in self._edges:
            parent, T_pc = self._edges[frame]
            T = T_pc @ T
            frame = parent
            chain.append(frame)
            if len(chain) > 64:
                break
        return chain, T  # T = T_root_frame

    def _resolve(self) -> Optional[np.ndarray]:
        chain_h, T_root_h = self._chain_to_root(self.hand_frame)
        chain_c, T_root_c = self._chain_to_root(self.camera_frame)
        if chain_h[-1] != chain_c[-1]:
            return None
        return np.linalg.inv(T_root_c) @ T_root_h


# --- process entry point ------------------------------------------------------------------------

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


def run_nodes(nodes: list, name: str, args=None, shutdown_timeout: float = 1.0) -> int:
    """:func:`run_node` for several nodes in one process: ``nodes`` is a list of
    ``(make_node, make_executor or None)``; each node gets its own executor. One node spins on
    the main thread; several spin on one thread each (the main thread waits for the signal), so
    every node keeps the threading it has as a process of its own."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    stop = threading.Event()
    starting = True
    failures = []

    def on_signal(signum, frame):
        _ignore_stop_signals()
        if stop.is_set():
            return
        stop.set()
        if starting:
            raise KeyboardInterrupt  # abort start-up (node construction, warm-up); caught below

    def spin(executor):
        # the Python handler runs between bytecodes of the main thread: the timeout lets it run
        # (and this loop see ``stop``) within 0.1 s also when no callback is due
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)

    def spin_thread(executor):
        try:
            spin(executor)
        except ExternalShutdownException:
            pass
        except BaseException as e:  # noqa: BLE001 - reported, and the whole process stops
            import traceback
            failures.append(e)
            traceback.print_exc()
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for sig in _STOP_SIGNALS:
            signal.signal(sig, on_signal)
    built, executors, threads = [], [], []
    code = 0
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
        for make_node, make_executor in nodes:
            built.append(make_node())
        for node, (_, make_executor) in zip(built, nodes):
            executor = make_executor() if make_executor is not None else SingleThreadedExecutor()
            executor.add_node(node)
            executors.append(executor)
        freeze_startup_objects()
        starting = False
        if len(executors) == 1:
            spin(executors[0])
        else:
            threads = [threading.Thread(target=spin_thread, args=(e,), name=f"spin-{n.get_name()}", daemon=True)
                       for n, e in zip(built, executors)]
            for t in threads:
                t.start()
            while not stop.is_set() and rclpy.ok():
                stop.wait(0.1)
            code = 1 if failures else 0
    except (KeyboardInterrupt, ExternalShutdownException):
        starting = False
    except (FileNotFoundError, ValueError, RuntimeError) as e:  # ParameterError is a ValueError
        starting = False
        _ignore_stop_signals()
        print(f"{name}: {e}", flush=True)
        code = 2
    finally:
        starting = False
        stop.set()
        _ignore_stop_signals()
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
        for node in built:
            node.destroy_node()
        rclpy.try_shutdown()
        if abandoned:  # the interpreter's exit would wait for them (concurrent.futures joins its threads)
            _exit_now(code if sys.exc_info()[0] is None else 1)  # 1: an exception is propagating
    return code


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
