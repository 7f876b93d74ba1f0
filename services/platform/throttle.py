"""A token bucket: the per-connection message budget of the API's Socket.IO and of the UI's websocket.

Kept apart from both (no Flask, no Streamlit, no torch) so that either may import it cheaply.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """``capacity`` tokens, refilled at ``rate`` tokens a second; each message or packet takes one."""

    capacity: float
    rate: float
    tokens: float = field(init=False)
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self):
        self.tokens = self.capacity

    def take(self) -> bool:
        """Spend a token; False when none is left."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True
