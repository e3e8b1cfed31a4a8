"""In-process delivery between hp_ros nodes that share one process (``single_process:=true``).

rclpy has no intra-process communication (rclcpp has): two rclpy nodes in one process still
serialise every message, hand it to DDS and deserialise it again, once per subscribing node. For
the graph's 1 MB images that is most of what the refinement node does all day (it buffers every
frame in case it is asked). :class:`LocalBus` removes that for the nodes of one process:

* a topic **produced** by one of the process's nodes (masks, observations, poses) is delivered
  to the other nodes as the Python message object itself, never serialised; it goes out over
  DDS as well, but only while something outside the process subscribes to it;
* a topic coming **from outside** (camera, joint states) is subscribed over DDS once, by the
  first node that asks, and fanned out to the others as the same message object.

Delivery to another node goes through a queue drained by a guard condition of *that* node, so
its callback runs on the node's own executor, in the node's default callback group (or the one
given), exactly like a subscription callback: the nodes need no extra locking. Messages are
shared, not copied: subscribers must not modify what they receive (none of hp_ros's nodes do).

Resolved (remapped) topic names are the keys, so remapping works as it does between processes.
"""
from __future__ import annotations

import collections
import inspect
import threading
from typing import Callable, Iterable


def _wants_info(callback: Callable) -> bool:
    """True when ``callback`` takes ``(msg, message_info)`` like an rclpy subscription callback can."""
    try:
        params = [p for p in inspect.signature(callback).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return False
    return len(params) >= 2


class _Inbox:
    """A node's queue of local deliveries, drained on the node's executor by a guard condition."""

    def __init__(self, node, callback_group=None):
        self._queue = collections.deque()
        self._lock = threading.Lock()
        self._guard = node.create_guard_condition(self._drain, callback_group=callback_group)

    def put(self, callback: Callable, args: tuple) -> None:
        with self._lock:
            self._queue.append((callback, args))
        self._guard.trigger()

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    return
                callback, args = self._queue.popleft()
            callback(*args)


class LocalPublisher:
    """Publishes to the process's local subscribers (directly) and to DDS (when someone outside
    subscribes). Same ``publish`` / ``get_subscription_count`` as an rclpy publisher."""

    def __init__(self, bus: "LocalBus", topic: str, dds_publisher):
        self._bus, self.topic, self._dds = bus, topic, dds_publisher

    def publish(self, msg) -> None:
        if self._dds.get_subscription_count() > 0:
            self._dds.publish(msg)
        self._bus.deliver(self.topic, msg, None)

    def get_subscription_count(self) -> int:
        return self._dds.get_subscription_count() + len(self._bus.subscribers(self.topic))

    @property
    def topic_name(self) -> str:
        return self._dds.topic_name


class LocalBus:
    """Intra-process topics of the nodes of one process (see the module docstring).

    ``produced``: the topics the process's nodes publish (they are never subscribed to over DDS
    by those nodes); resolved (namespace, remappings) by the first node that uses the bus, as the
    nodes of one process share the command line's remappings.
    """

    def __init__(self, produced: Iterable[str]):
        self._produced_names = list(produced)
        self.produced = None
        self._subs: dict = collections.defaultdict(list)   # topic -> [(inbox or None, callback, wants_info)]
        self._dds_owner: dict = {}                          # external topic -> node that subscribed over DDS
        self._inboxes: dict = {}                            # (node id, group id) -> _Inbox
        self._lock = threading.Lock()

    def subscribers(self, topic: str) -> list:
        with self._lock:
            return list(self._subs.get(topic, ()))

    def _inbox(self, node, callback_group) -> _Inbox:
        key = (id(node), id(callback_group))
        if key not in self._inboxes:
            self._inboxes[key] = _Inbox(node, callback_group)
        return self._inboxes[key]

    def create_subscription(self, node, msg_type, topic: str, callback: Callable, qos, callback_group=None,
                            inline: bool = False, **kwargs):
        """Subscribe ``node`` to ``topic`` through the bus; returns the DDS subscription when one
        was created for it (the first subscriber of an external topic), else None.

        ``inline``: call ``callback`` in the delivering thread instead of on the node's executor
        (for a callback that only stores the message under its own lock, e.g.
        :class:`hp_ros.nodes.deferred.DeferredReader`). ``raw=True`` is not supported (local
        deliveries are message objects)."""
        if kwargs.get("raw"):
            raise ValueError("LocalBus: raw subscriptions are not supported")
        name = node.resolve_topic_name(topic)
        wants_info = _wants_info(callback)
        self._resolve_produced(node)
        with self._lock:
            first_external = name not in self.produced and name not in self._dds_owner
            if first_external:
                self._dds_owner[name] = node
            # the DDS owner's callback runs directly in its subscription callback; the others get
            # the message on their own executor through their inbox
            inbox = None if first_external or inline else self._inbox(node, callback_group)
            self._subs[name].append((inbox, callback, wants_info))
        if not first_external:
            return None
        return node.create_subscription(msg_type, topic, lambda msg, info: self.deliver(name, msg, info), qos,
                                        callback_group=callback_group, **kwargs)

    def _resolve_produced(self, node) -> None:
        if self.produced is None:
            self.produced = {node.resolve_topic_name(t) for t in self._produced_names}

    def create_publisher(self, node, msg_type, topic: str, qos, **kwargs) -> LocalPublisher:
        dds = node.create_publisher(msg_type, topic, qos, **kwargs)
        return LocalPublisher(self, node.resolve_topic_name(topic), dds)

    def deliver(self, topic: str, msg, info) -> None:
        """Hand ``msg`` to every local subscriber of ``topic`` (``info``: the DDS message info of
        an external message, None for a local one)."""
        if info is None:
            info = {}
        for inbox, callback, wants_info in self.subscribers(topic):
            args = (msg, info) if wants_info else (msg,)
            if inbox is None:
                callback(*args)
            else:
                inbox.put(callback, args)


def subscribe(node, bus, msg_type, topic, callback, qos, **kwargs):
    """``node.create_subscription`` or, with a bus, the bus's (see :meth:`LocalBus.create_subscription`)."""
    if bus is None:
        return node.create_subscription(msg_type, topic, callback, qos, **kwargs)
    return bus.create_subscription(node, msg_type, topic, callback, qos, **kwargs)


def publisher(node, bus, msg_type, topic, qos, **kwargs):
    """``node.create_publisher`` or, with a bus, a :class:`LocalPublisher`."""
    if bus is None:
        return node.create_publisher(msg_type, topic, qos, **kwargs)
    return bus.create_publisher(node, msg_type, topic, qos, **kwargs)
