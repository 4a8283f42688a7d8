"""The simulator's calendar event queue (mesh/_simqueue.py) gives exactly a heap's order."""

from __future__ import annotations

import heapq
import math

from hypothesis import given, settings, strategies as st

from mesh._simqueue import BUCKET_S, EventQueue

# (delay after now, how many events it pushes when drained): delays from none (the same
# instant) through a fraction of a bucket to many buckets, and the far future.
delays = st.one_of(
    st.just(0.0),
    st.floats(0.0, BUCKET_S),
    st.floats(0.0, 50 * BUCKET_S),
    st.sampled_from([BUCKET_S, 2 * BUCKET_S, 1e6, math.inf]),
)
plans = st.lists(st.tuples(delays, st.integers(0, 3)), min_size=1, max_size=80)


@settings(max_examples=200, deadline=None)
@given(plan=plans, stops=st.lists(st.floats(0.0, 0.01), min_size=1, max_size=5))
def test_events_come_out_in_time_then_push_order_as_from_one_heap(
    plan: list[tuple[float, int]], stops: list[float]
) -> None:
    """Events pushed up front, and while draining (at the instant being run or later),
    come out of several drains to increasing times in the order of (time, push order)."""
    queue = EventQueue()
    reference: list[tuple[float, int, int]] = []
    counter = 0
    steps = iter(plan * 3)

    def push(when: float) -> None:
        nonlocal counter
        counter += 1
        children = next(steps, (0.0, 0))[1]
        queue.push(when, 0, (counter, children))
        heapq.heappush(reference, (when, counter, children))

    for delay, _ in plan:
        push(delay)
    out: list[tuple[float, int]] = []
    expected: list[tuple[float, int]] = []
    for t in [*sorted(stops), math.inf]:
        for when, _, _, (number, children) in queue.drain(t):
            out.append((when, number))
            for i in range(children):  # the event makes more, as a node's input does
                push(when + [0.0, BUCKET_S / 3, 7 * BUCKET_S][i % 3])
        while reference and reference[0][0] <= t:
            when, number, _ = heapq.heappop(reference)
            expected.append((when, number))
    assert out == expected
    assert len(queue) == 0


def test_an_event_pushed_earlier_than_a_loaded_bucket_still_comes_first() -> None:
    """A drain that stops short loads the next bucket; an event pushed afterwards for a time
    before that bucket (but not before now) still comes out first."""
    queue = EventQueue()
    queue.push(10 * BUCKET_S, 0, "late")
    assert list(queue.drain(BUCKET_S)) == []  # loaded the bucket of "late", ran nothing
    queue.push(2 * BUCKET_S, 0, "early")
    assert [data for *_, data in queue.drain(math.inf)] == ["early", "late"]
