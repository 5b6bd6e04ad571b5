"""iotp.periodic.Every: when a chore is due, on a clock that starts at boot."""

from __future__ import annotations

from iotp.periodic import Every


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_chore_is_due_at_once_even_on_a_machine_just_booted() -> None:
    clock = Clock(0.5)  # monotonic time counts from boot
    chore = Every(600, clock)
    assert chore.due() and chore.due()  # asking is not doing
    chore.done()
    assert not chore.due()
    clock.now = 600.4
    assert not chore.due()
    clock.now = 600.5
    assert chore.due()


def test_take_counts_as_done_and_again_makes_it_due() -> None:
    clock = Clock(3.0)
    chore = Every(10, clock)
    assert chore.take()
    assert not chore.take()
    clock.now = 12.5
    assert not chore.take()
    chore.again()
    assert chore.take()
    clock.now = 22.5
    assert chore.take()


def test_without_a_clock_it_reads_the_monotonic_clock_at_each_call(fresh_boot: None) -> None:
    chore = Every(30)  # made after the fixture played a young machine: due at once all the same
    assert chore.take() and not chore.due()
