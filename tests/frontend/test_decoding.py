"""The throttle that keeps a client sending garbage from flooding the log."""

from __future__ import annotations

from frontend.decoding import Throttle


def test_one_line_per_interval_and_the_count_of_the_rest() -> None:
    now = [100.0]
    throttle = Throttle(60.0, clock=lambda: now[0])
    assert throttle.allow() == 0  # the first is logged
    for step in (1.0, 10.0, 59.0):
        now[0] = 100.0 + step
        assert throttle.allow() is None
    now[0] = 160.0
    assert throttle.allow() == 3  # logged, naming the 3 it kept quiet
    now[0] = 161.0
    assert throttle.allow() is None
    now[0] = 400.0
    assert throttle.allow() == 1
