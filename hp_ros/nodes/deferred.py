"""Subscriptions read on demand: messages wait in the DDS reader's history, not in Python.

An rclpy subscription costs a trip through the executor per message (wait-set rebuild, task,
callback: ~0.1-0.3 ms of Python each), whether or not the node needs the message now. The
refinement node buffers every camera frame in case it is asked for one, and the tracker and
segmentation node read 100 Hz joint states that only matter when a frame is processed: at 30 Hz
that executor work alone was several ms of CPU per frame.

A :class:`DeferredReader` is a DDS reader that no executor waits on (its callback group never
lets one run it): Fast DDS keeps the newest ``depth`` samples in the reader's history (keep-last,
in its own C++ threads), and the node takes them with :meth:`DeferredReader.take` when it needs
them - for a refinement request, for a frame. Nothing is deserialised that nobody asked for
(``raw=True`` keeps even the taken ones serialised).

In one process with other hp_ros nodes (:class:`hp_ros.nodes.local_bus.LocalBus`) the messages
are handed over as objects: they go into a bounded deque of the same depth, without the inbox
(no executor either).
"""
from __future__ import annotations

import collections
import threading

from rclpy.callback_groups import CallbackGroup
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy


class _NeverExecuted(CallbackGroup):
    """A callback group whose entities no executor waits on or runs."""

    def can_execute(self, entity) -> bool:
        return False

    def beginning_execution(self, entity) -> bool:
        return False

    def ending_execution(self, entity) -> None:
        pass


def _unused(*_args) -> None:  # pragma: no cover - never called (see _NeverExecuted)
    raise AssertionError("a deferred reader's callback ran")


class DeferredReader:
    """Keep-last reader of ``topic`` whose messages are taken on demand.

    Args:
        node: the rclpy node; bus: its :class:`LocalBus` or None.
        msg_type, topic: as for ``create_subscription``.
        depth: samples kept (the oldest is dropped when a new one arrives and it is full).
        reliable: RELIABLE (default) or BEST_EFFORT; transient_local: TRANSIENT_LOCAL durability.
        raw: take serialised ``bytes`` (not with a bus: there they are message objects).
        count_lost: keep the middleware's count of samples lost before they reached the reader
            (:meth:`lost`; not with a bus).

    :meth:`take` returns ``[(msg or bytes, info dict), ...]`` oldest first and empties the reader.
    """

    def __init__(self, node, bus, msg_type, topic: str, depth: int, reliable: bool = True,
                 transient_local: bool = False, raw: bool = False, count_lost: bool = False):
        self.topic = topic
        self.depth = int(depth)
        qos = QoSProfile(depth=self.depth, history=HistoryPolicy.KEEP_LAST,
                         reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL if transient_local
                         else DurabilityPolicy.VOLATILE)
        self._queue = None
        self._sub = None
        self._wait_set = None  # made by the first wait()
        self._lost_event = None
        self._context = node.context
        if bus is None:
            self._sub = node.create_subscription(msg_type, topic, _unused, qos, callback_group=_NeverExecuted(),
                                                 raw=raw)
            if count_lost:  # read by lost(), not waited on: as an executor waitable beside this reader
                # the event cost the segmentation node's executor 18.8 ms of CPU per frame (live graph)
                from rclpy.event_handler import QoSSubscriptionEventType

                with self._sub.handle:
                    self._lost_event = _rclpy.EventHandle(self._sub.handle,
                                                          QoSSubscriptionEventType.RCL_SUBSCRIPTION_MESSAGE_LOST)
        else:
            self._queue = collections.deque(maxlen=self.depth)
            self._lock = threading.Lock()
            bus.create_subscription(node, msg_type, topic, self._put, qos, inline=True)

    def _put(self, msg, info) -> None:
        with self._lock:
            self._queue.append((msg, info))

    def wait(self, timeout_s: float) -> bool:
        """Block until a message is there to take (True) or ``timeout_s`` passed (False), on this
        reader alone: no executor wakes for it (a node that needs one input before it can go on
        waits for it inside its callback instead of arming a timer - each arming and each timer
        call is a wake of the executor, 0.2-0.4 ms of CPU). Nothing is taken. With a bus: whether
        a message is there, without waiting."""
        timeout_s = max(float(timeout_s), 0.0)
        if self._queue is not None:
            # with a bus the messages may be delivered by this very thread's executor (the node that
            # subscribed first over DDS): waiting here could only time out, so it does not wait
            with self._lock:
                return len(self._queue) > 0
        sub = self._sub
        if sub is None:  # closed
            return False
        with self._context.handle, sub.handle:
            if self._wait_set is None:
                self._wait_set = _rclpy.WaitSet(1, 0, 0, 0, 0, 0, self._context.handle)
            ws = self._wait_set
            ws.clear_entities()
            ws.add_subscription(sub.handle)
            ws.wait(int(timeout_s * 1e9))
            return sub.handle.pointer in ws.get_ready_entities("subscription")

    def close(self, node) -> None:
        """Stop receiving: the DDS reader is deleted with what it still holds (with a bus: it
        keeps its place on the bus, which cannot unsubscribe; in one process that costs nothing)."""
        self._wait_set = None
        if self._lost_event is not None:
            self._lost_event.destroy_when_not_in_use()
            self._lost_event = None
        if self._sub is not None:
            node.destroy_subscription(self._sub)
            self._sub = None

    def lost(self) -> int:
        """Samples the middleware reports lost before they reached the reader since the last call
        (0 without ``count_lost``, with a bus, or once closed)."""
        ev = self._lost_event
        if ev is None:
            return 0
        with ev:
            info = ev.take_event()
        return int(info.total_count_change) if info is not None else 0

    def take(self) -> list:
        """Every message received since the last call (at most ``depth``), oldest first."""
        if self._queue is not None:
            with self._lock:
                out = list(self._queue)
                self._queue.clear()
            return out
        out = []
        sub = self._sub
        if sub is None:  # closed
            return out
        with sub.handle:
            while True:
                got = sub.handle.take_message(sub.msg_type, sub.raw)
                if got is None:
                    return out
                out.append(got)
