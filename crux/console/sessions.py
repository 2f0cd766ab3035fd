"""Console logins: a random session value per login (revoked by logout, expired after a while) and a limit on failed
logins per client. In memory: a restart of the console signs everyone out, which is the safe direction."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


def _digest(value: str) -> str:
    # Only digests are kept: a memory dump of the console does not hand out live session values.
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass
class Sessions:
    """Live session values. A value proves one login; it is not derived from the admin token, so logging out (or the
    session expiring) ends that login while the token and other logins stay valid."""

    ttl_s: float = 12 * 3600.0
    max_sessions: int = 1000  # the oldest are dropped first: a login loop cannot grow memory without bound
    clock: Callable[[], float] = time.monotonic
    _expiry: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self) -> str:
        value = secrets.token_urlsafe(32)
        with self._lock:
            self._prune()
            while len(self._expiry) >= self.max_sessions:
                self._expiry.pop(next(iter(self._expiry)))
            self._expiry[_digest(value)] = self.clock() + self.ttl_s
        return value

    def valid(self, value: str) -> bool:
        if not value:
            return False
        with self._lock:
            expiry = self._expiry.get(_digest(value))
            return expiry is not None and expiry > self.clock()

    def revoke(self, value: str) -> None:
        with self._lock:
            self._expiry.pop(_digest(value), None)

    def _prune(self) -> None:
        now = self.clock()
        for key in [k for k, t in self._expiry.items() if t <= now]:
            del self._expiry[key]


@dataclass
class LoginLimiter:
    """At most `max_failures` failed logins per client in `window_s` seconds; then every attempt from it (a right
    token too) waits until the window has passed: guessing the token costs a window per few tries."""

    max_failures: int = 5
    window_s: float = 60.0
    max_clients: int = 10_000
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def retry_after(self, client: str) -> float | None:
        """Seconds this client must wait before its next attempt, or None when it may try now."""
        now = self.clock()
        with self._lock:
            times = self._failures.get(client)
            if not times:
                return None
            while times and times[0] <= now - self.window_s:
                times.popleft()
            if len(times) < self.max_failures:
                return None
            return max(0.0, times[0] + self.window_s - now)

    def failed(self, client: str) -> None:
        with self._lock:
            if client not in self._failures and len(self._failures) >= self.max_clients:
                self._failures.pop(next(iter(self._failures)))
            self._failures.setdefault(client, deque(maxlen=self.max_failures)).append(self.clock())

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)
