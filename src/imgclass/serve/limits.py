"""Memory budgets of the server: decoded pixels and request bodies in flight are reserved before they
are allocated, and a request that cannot get its share in time is shed with 503 + ``Retry-After``.

The budget is a weighted semaphore written by hand because asyncio has none, and because it must be
usable from every event loop a test client opens (asyncio primitives bind to the first loop).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass, field

from ..limits import SERVE_MAX_PIXELS
from .uploads import ApiError

#: Peak bytes per decoded pixel: Pillow keeps RGB in 4 bytes, a mode conversion or EXIF rotation makes a
#: second copy and pre-processing reads the full image once more.
BYTES_PER_PIXEL = 12

#: Default memory for decoded images in flight (every decode, queued image and prediction holds its share):
#: one image at the 40 MP limit, or several smaller ones, on top of the ~0.9 GB a loaded model process holds.
DECODE_BUDGET_BYTES = 512 * 2**20

#: Default memory for request bodies being received at once.
BODY_BUDGET_BYTES = 256 * 2**20

#: How long a request may wait for its share before it is shed.
BUDGET_WAIT_S = 10.0


class Overloaded(Exception):
    """A budget could not be reserved in time (answered with 503 and ``Retry-After``)."""


def overloaded(what: str, retry_after: int = 1) -> ApiError:
    """The 503 answer of load shedding."""
    return ApiError(503, "overloaded", f"the server is busy ({what}); retry shortly",
                    headers={"Retry-After": str(retry_after)})


@dataclass
class _Waiter:
    amount: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    granted: bool = field(default=False)


class MemoryBudget:
    """A weighted semaphore over ``total`` bytes: ``await acquire(n)`` ... ``release(n)``, first come first served.

    A request larger than the whole budget is charged the whole budget (it runs alone). At most
    ``max_waiters`` requests wait; more are refused at once.
    """

    def __init__(self, total: int, *, max_waiters: int = 256):
        if total < 1:
            raise ValueError("a memory budget must be positive")
        self.total, self.max_waiters = int(total), int(max_waiters)
        self.used = 0
        self._lock = threading.Lock()
        self._waiters: deque[_Waiter] = deque()

    def charge(self, amount: int) -> int:
        """What a request of ``amount`` bytes is charged (at least 1, at most the whole budget)."""
        return max(1, min(int(amount), self.total))

    def try_acquire(self, amount: int) -> bool:
        """Reserve at once if there is room and nobody is waiting; never waits."""
        n = self.charge(amount)
        with self._lock:
            if not self._waiters and self.used + n <= self.total:
                self.used += n
                return True
        return False

    async def acquire(self, amount: int, timeout: float = BUDGET_WAIT_S) -> int:
        """Reserve ``amount`` bytes, waiting up to ``timeout`` seconds; returns the charge to release.
        Raises ``Overloaded`` when the wait is over or too many are waiting already."""
        n = self.charge(amount)
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self._waiters and self.used + n <= self.total:
                self.used += n
                return n
            if len(self._waiters) >= self.max_waiters:
                raise Overloaded(f"{len(self._waiters)} requests are waiting for memory")
            w = _Waiter(n, loop, loop.create_future())
            self._waiters.append(w)
        try:
            await asyncio.wait_for(asyncio.shield(w.future), timeout)
            return n
        except BaseException as exc:
            with self._lock:
                if w.granted:  # granted just as the wait ended: keep it only when nothing went wrong
                    if isinstance(exc, asyncio.TimeoutError):
                        return n
                    self._release_locked(n)
                else:
                    self._waiters.remove(w)
                    self._wake_locked()  # a large request leaving the head may let smaller ones in
            if isinstance(exc, asyncio.TimeoutError):
                raise Overloaded(f"no memory for this image within {timeout:g} s") from None
            raise

    def release(self, amount: int) -> None:
        with self._lock:
            self._release_locked(amount)

    def _release_locked(self, amount: int) -> None:
        self.used = max(0, self.used - amount)
        self._wake_locked()

    def _wake_locked(self) -> None:
        while self._waiters and self.used + self._waiters[0].amount <= self.total:
            w = self._waiters.popleft()
            self.used += w.amount
            try:
                w.loop.call_soon_threadsafe(_resolve, w.future)
            except RuntimeError:  # its event loop is gone (a test client's): nobody is waiting there
                self.used -= w.amount
                continue
            w.granted = True


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


def return_large_blocks_to_the_os(threshold: int = 2**20) -> bool:
    """Make glibc serve every allocation of ``threshold`` bytes or more with its own mmap, unmapped when freed.

    By default glibc raises that threshold after the first large free, so decoded images then come from
    per-thread arenas that keep the memory after the image is gone: with four decode threads, RSS grows by
    up to four images' worth even though the budget lets one decode at a time. A no-op where the C library
    is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_mmap_threshold = -3
        return bool(libc.mallopt(m_mmap_threshold, int(threshold)))
    except (OSError, AttributeError):
        return False


def decoded_bytes(width: int, height: int) -> int:
    """The memory a decode of ``width`` x ``height`` pixels is charged."""
    return int(width) * int(height) * BYTES_PER_PIXEL


__all__ = ["BODY_BUDGET_BYTES", "BUDGET_WAIT_S", "BYTES_PER_PIXEL", "DECODE_BUDGET_BYTES", "MemoryBudget",
           "Overloaded", "SERVE_MAX_PIXELS", "decoded_bytes", "overloaded", "return_large_blocks_to_the_os"]
