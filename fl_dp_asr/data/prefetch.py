"""Host-side prefetching: build the next cohort in a background thread while the device trains.

>>> with Prefetcher(range(3), buffer_size=2) as items:
...     list(items)
[0, 1, 2]
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class _End:
    """Marks the end of the producer's iterable."""


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher(Generic[T]):
    """Iterates ``iterable`` in a daemon thread, keeping at most ``buffer_size`` items ready.

    An exception raised by the producer is re-raised by ``next()`` in the consumer, after the
    items produced before it. Use as a context manager (or call :meth:`close`) so that an
    abandoned producer stops at its next item.

    Args:
        iterable: the items, e.g. a generator that samples and packs one cohort per round.
        buffer_size: queue bound (2 = one item in use, one being built).
    """

    def __init__(self, iterable: Iterable[T], buffer_size: int = 2):
        if buffer_size < 1:
            raise ValueError(f"buffer_size={buffer_size} must be >= 1")
        self._queue: queue.Queue = queue.Queue(maxsize=buffer_size)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(
            target=self._produce, args=(iter(iterable),), name="fl_dp_asr-prefetch", daemon=True
        )
        self._thread.start()

    def _offer(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, iterator: Iterator[T]) -> None:
        try:
            for item in iterator:
                if not self._offer(item):
                    return
        except BaseException as error:  # noqa: BLE001 -- re-raised in the consumer's thread
            self._offer(_Failure(error))
            return
        self._offer(_End())

    def __iter__(self) -> Prefetcher[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if isinstance(item, _End):
            self._done = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._done = True
            raise item.error
        return item

    def close(self) -> None:
        """Stops the producer (after its current item) and waits for the thread."""
        self._done = True
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
