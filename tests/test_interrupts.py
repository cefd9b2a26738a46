"""SIGTERM and SIGHUP end a run as Ctrl-C does (whisperfarm/interrupts.py), in-process:
the test sends the signal to itself (pytest runs tests in the main thread)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from whisperfarm.interrupts import StopSignal, as_stop_signal, held, stop_signals


def send(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(0.2)  # the handler runs in the main thread at the next bytecode


@pytest.mark.parametrize(
    ("signum", "code", "label"),
    [
        (signal.SIGTERM, 143, "SIGTERM"),
        (signal.SIGHUP, 129, "SIGHUP"),
        (signal.SIGINT, 130, "Ctrl-C"),
    ],
)
def test_a_stop_signal_raises_a_keyboard_interrupt_with_the_shells_exit_code(
    signum: int, code: int, label: str
) -> None:
    with pytest.raises(KeyboardInterrupt) as raised, stop_signals():
        send(signum)
    assert isinstance(raised.value, StopSignal)
    assert (raised.value.exit_code, raised.value.label) == (code, label)


def test_the_handlers_are_put_back_afterwards() -> None:
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGHUP)}
    with stop_signals():
        assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_second_signal_while_cleaning_up_does_not_cut_the_cleanup_short(
    capfd: pytest.CaptureFixture[str],
) -> None:
    cleaned = False
    with pytest.raises(StopSignal) as raised, stop_signals():
        try:
            send(signal.SIGTERM)
        finally:
            send(signal.SIGTERM)  # a service manager's second SIGTERM
            send(signal.SIGINT)  # an impatient Ctrl-C
            cleaned = True
    assert cleaned and raised.value.signum == signal.SIGTERM
    assert capfd.readouterr().err.count("still stopping") == 2


def test_a_signal_during_held_cleanup_of_a_finished_run_is_noted_not_raised() -> None:
    with stop_signals():
        with held():
            send(signal.SIGHUP)
            finished = True
        assert finished


def test_a_plain_ctrl_c_counts_as_sigint() -> None:
    assert as_stop_signal(KeyboardInterrupt()).exit_code == 130
    stop = StopSignal(signal.SIGTERM)
    assert as_stop_signal(stop) is stop
