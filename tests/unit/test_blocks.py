"""The hand-over of prediction blocks from the pool's thread to Spark's writer (``_pipeline._Blocks``).

Plain Python objects stand in for Ray object refs: the queue only counts and
passes them. Threads synchronise on events and joins, never on sleeps.
"""

from __future__ import annotations

import threading

import pytest

from rayscore._errors import InputError, PredictError
from rayscore._pipeline import _Blocks


def test_a_take_gets_every_block_put_since_the_last_and_nothing_once_the_pool_is_done() -> None:
    blocks = _Blocks(max_bytes=100)
    blocks.put("a", rows=3, nbytes=10)
    blocks.put("b", rows=4, nbytes=10)
    assert blocks.take() == ["a", "b"]
    blocks.put("c", rows=5, nbytes=10)
    blocks.end()
    assert blocks.take() == ["c"]  # what was put before the end is still handed over
    assert blocks.take() == []
    assert blocks.take() == []
    assert blocks.rows == 12


def test_the_pool_waits_once_max_bytes_wait_unwritten_and_goes_on_when_the_writer_takes_them() -> None:
    blocks = _Blocks(max_bytes=15)
    blocks.put("a", rows=1, nbytes=10)
    blocks.put("b", rows=1, nbytes=10)  # over the bound now: the next put waits
    third_put = threading.Event()

    def pool() -> None:
        blocks.put("c", rows=1, nbytes=10)
        third_put.set()

    thread = threading.Thread(target=pool)
    thread.start()
    assert not third_put.wait(timeout=0.5)  # still waiting: nothing was taken
    assert blocks.take() == ["a", "b"]
    thread.join(timeout=10)
    assert third_put.is_set()
    assert blocks.take() == ["c"]


def test_one_block_larger_than_the_bound_still_goes_through() -> None:
    blocks = _Blocks(max_bytes=1)
    blocks.put("big", rows=1, nbytes=10**9)  # an empty queue always takes a block
    assert blocks.take() == ["big"]


def test_a_take_waits_for_the_first_block() -> None:
    blocks = _Blocks(max_bytes=100)
    taken: list[list[str]] = []
    thread = threading.Thread(target=lambda: taken.append(blocks.take()))
    thread.start()
    blocks.put("a", rows=1, nbytes=1)
    thread.join(timeout=10)
    assert taken == [["a"]]


def test_the_pools_error_reaches_the_writer_before_blocks_left_unwritten() -> None:
    blocks = _Blocks(max_bytes=100)
    blocks.put("a", rows=1, nbytes=1)
    blocks.end(InputError("input: column 'title' has 19 values in row 5000, the model wants 20"))
    with pytest.raises(InputError, match="row 5000"):
        blocks.take()


def test_when_the_writer_gives_up_the_pools_next_put_fails_and_a_waiting_one_wakes() -> None:
    blocks = _Blocks(max_bytes=1)
    blocks.put("a", rows=1, nbytes=1)
    errors: list[BaseException] = []

    def pool() -> None:
        try:
            blocks.put("b", rows=1, nbytes=1)  # waits: the bound is reached
        except PredictError as exc:
            errors.append(exc)

    thread = threading.Thread(target=pool)
    thread.start()
    blocks.end()  # the writer failed: cancel
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert [str(e) for e in errors] == ["the predictions' writer stopped; scoring stopped with it"]
    with pytest.raises(PredictError, match="writer stopped"):
        blocks.put("c", rows=1, nbytes=1)
