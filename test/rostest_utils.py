"""Helpers for tests that talk to ROS 2 processes: spin until a condition, wait for matching."""
from __future__ import annotations

import time

import rclpy


def spin_until(node, predicate, timeout: float, period: float = 0.02) -> bool:
    """Spin ``node`` until ``predicate()`` is true or ``timeout`` seconds pass; returns the result."""
    executor = rclpy.executors.SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            executor.spin_once(timeout_sec=period)
        return bool(predicate())
    finally:
        executor.remove_node(node)


def wait_for_publishers(node, topic: str, count: int = 1, timeout: float = 15.0) -> bool:
    """Wait until ``topic`` has at least ``count`` publishers (discovery takes 0.3-2.7 s)."""
    return spin_until(node, lambda: node.count_publishers(topic) >= count, timeout)


def wait_for_subscribers(node, topic: str, count: int = 1, timeout: float = 15.0) -> bool:
    """Wait until ``topic`` has at least ``count`` subscribers."""
    return spin_until(node, lambda: node.count_subscribers(topic) >= count, timeout)
