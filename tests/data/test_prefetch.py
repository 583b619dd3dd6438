"""Prefetcher: order, bounded buffer, error propagation, early close."""

from __future__ import annotations

import threading

import pytest

from fl_dp_asr.data import Prefetcher


def test_yields_items_in_order():
    with Prefetcher(iter(range(10)), buffer_size=3) as items:
        assert list(items) == list(range(10))


def test_producer_error_reaches_consumer_after_earlier_items():
    def produce():
        yield 1
        yield 2
        raise RuntimeError("cohort 3 failed")

    items = Prefetcher(produce())
    assert next(items) == 1 and next(items) == 2
    with pytest.raises(RuntimeError, match="cohort 3 failed"):
        next(items)
    with pytest.raises(StopIteration):
        next(items)
    items.close()


def test_buffer_is_bounded_and_close_stops_the_producer():
    produced = []
    third_requested = threading.Event()

    def produce():
        for i in range(1000):
            if i == 3:
                third_requested.set()
            produced.append(i)
            yield i

    items = Prefetcher(produce(), buffer_size=2)
    assert next(items) == 0
    third_requested.wait(timeout=5)
    items.close()
    assert len(produced) <= 5
    with pytest.raises(StopIteration):
        next(items)


def test_rejects_empty_buffer():
    with pytest.raises(ValueError, match="buffer_size=0 must be >= 1"):
        Prefetcher([], buffer_size=0)
