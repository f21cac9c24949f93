import math
import random
import threading

import pytest

from rivbulk_pipeline.core.rules.ratelimit import (
    RateLimiter,
    backoff_delay,
    max_calls_in_any_window,
    whole_seconds_for_whole_calls,
)


class FakeClock:
    """A deterministic clock: sleeping advances time, so the limiter's arithmetic is tested exactly."""

    def __init__(self) -> None:
        self.now = 100.0

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize("rate", [0.25, 0.5, 1, 1.5, 2.5, 10, 20, 37.5])
def test_the_rate_holds_in_every_window_and_fractions_are_not_rounded_down(rate):
    clock = FakeClock()
    limiter = RateLimiter(rate, clock=clock.time, sleep=clock.sleep)
    starts = [limiter.acquire() for _ in range(200)]
    seconds = whole_seconds_for_whole_calls(rate)
    assert max_calls_in_any_window(starts, seconds) <= round(rate * seconds)
    assert max_calls_in_any_window(starts) <= math.ceil(rate)
    if rate == int(rate):
        assert max_calls_in_any_window(starts) <= rate
    achieved = (len(starts) - 1) / (starts[-1] - starts[0])
    # 1.5/s runs at 1.5/s less the 50 ms margin per window (3 calls in 2.05 s), not at 1/s
    assert 0.99 * round(rate * seconds) / (seconds + 0.05) <= achieved <= rate


def test_a_limiter_that_follows_another_waits_out_the_window_before_it():
    """Two runs one after the other (the gateway pool): their calls together keep the rate."""
    clock = FakeClock()
    first = RateLimiter(5, clock=clock.time, sleep=clock.sleep)
    starts = [first.acquire() for _ in range(12)]
    second = RateLimiter(5, clock=clock.time, sleep=clock.sleep, follows_another=True)  # takes over at once
    starts += [second.acquire() for _ in range(12)]
    assert max_calls_in_any_window(starts) <= 5
    assert starts[12] - starts[11] >= 1.0  # the price: one window's pause at the hand-over


def test_whole_seconds_for_whole_calls():
    assert [whole_seconds_for_whole_calls(r) for r in (5, 1.5, 0.25, 2.5, 0.3)] == [1, 2, 4, 2, 10]


def test_limiter_is_thread_safe_on_real_time():
    limiter = RateLimiter(200, margin_seconds=0.0)
    starts: list[float] = []
    lock = threading.Lock()

    def worker():
        for _ in range(25):
            t = limiter.acquire()
            with lock:
                starts.append(t)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(starts) == 200
    assert max_calls_in_any_window(starts) <= 200
    gaps = [b - a for a, b in zip(sorted(starts), sorted(starts)[1:])]
    assert min(gaps) >= 1 / 200 - 1e-9


def test_rate_must_be_positive():
    with pytest.raises(ValueError, match="rate_per_second"):
        RateLimiter(0)


def test_backoff_grows_and_is_capped():
    rng = random.Random(7)
    assert all(0 <= backoff_delay(1, 0.5, 30, rng) <= 0.5 for _ in range(100))
    assert all(0 <= backoff_delay(4, 0.5, 30, rng) <= 4.0 for _ in range(100))
    assert all(backoff_delay(20, 0.5, 3.0, rng) <= 3.0 for _ in range(100))
    assert max(backoff_delay(4, 0.5, 30, rng) for _ in range(200)) > 2.0  # jitter spans the range


def test_window_counter():
    assert max_calls_in_any_window([0, 0.5, 0.99, 1.0, 1.5]) == 3
    assert max_calls_in_any_window([]) == 0
