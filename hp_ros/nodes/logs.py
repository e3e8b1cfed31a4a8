"""Error reporting for nodes: one clear line per problem, not one per message."""
from __future__ import annotations

from rclpy.node import Node


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
