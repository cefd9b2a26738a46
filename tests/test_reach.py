"""Reachability first, then scale (whisperfarm/fly/reach.py): pure, driven by hand-set times."""

from __future__ import annotations

from whisperfarm.fly.reach import Reachability, ReachLimits, unreachable_message

LIMITS = ReachLimits(timeout=90.0, limit=3, give_up=50.0)


def test_probing_until_a_worker_reaches_the_coordinator() -> None:
    reach = Reachability(LIMITS)
    assert reach.probing and not reach.failed
    assert not reach.observe("m1", state="starting", reached=False, now=0.0)
    assert not reach.observe("m1", state="started", reached=False, now=5.0)
    assert reach.probing
    assert not reach.observe("m1", state="started", reached=True, now=20.0)
    assert not reach.probing and reach.reached_any and not reach.failed


def test_a_machine_running_past_the_timeout_unreached_is_to_be_ended_once() -> None:
    reach = Reachability(LIMITS)
    assert not reach.observe("m1", state="started", reached=False, now=100.0)
    assert not reach.observe("m1", state="started", reached=False, now=189.9)
    assert reach.observe("m1", state="started", reached=False, now=190.0)
    assert reach.failed  # the first machine: nothing has reached us
    assert not reach.observe("m1", state="started", reached=False, now=200.0)  # judged
    assert not reach.observe("m1", state="destroyed", reached=False, now=201.0)
    assert reach.unreached == 1 and reach.streak == 1


def test_a_timeout_runs_from_when_the_machine_was_first_seen_running() -> None:
    reach = Reachability(LIMITS)
    reach.observe("m1", state="starting", reached=False, now=0.0)
    reach.observe("m1", state="starting", reached=False, now=80.0)  # a slow cold start
    assert not reach.observe("m1", state="started", reached=False, now=85.0)
    assert not reach.observe("m1", state="started", reached=False, now=170.0)
    assert reach.observe("m1", state="started", reached=False, now=175.0)


def test_a_first_machine_whose_worker_gave_up_on_us_stops_the_run_one_that_never_ran_not() -> None:
    reach = Reachability(LIMITS)
    reach.observe("ran", state="started", reached=False, now=0.0)
    reach.observe("never", state="starting", reached=False, now=0.0)
    reach.observe("never", state="destroyed", reached=False, now=10.0)
    assert not reach.failed and reach.unreached == 0
    reach.observe("ran", state="destroyed", reached=False, now=50.0)  # ran its give-up
    assert reach.failed and reach.unreached == 1


def test_first_machines_that_crash_early_count_in_a_row_but_do_not_stop_the_run_at_once() -> None:
    reach = Reachability(LIMITS)
    for n, machine in enumerate(["a", "b"], start=1):
        reach.observe(machine, state="started", reached=False, now=100.0 * n)
        reach.observe(machine, state="destroyed", reached=False, now=100.0 * n + 5)  # OOM
        assert reach.streak == n and reach.probing and not reach.failed
    reach.observe("c", state="started", reached=False, now=300.0)
    reach.observe("c", state="destroyed", reached=False, now=303.0)
    assert reach.failed  # three in a row: an image that crashes is no better


def test_after_a_crash_a_machine_that_reaches_us_resets_the_row() -> None:
    reach = Reachability(LIMITS)
    reach.observe("a", state="started", reached=False, now=0.0)
    reach.observe("a", state="destroyed", reached=False, now=2.0)
    reach.observe("b", state="started", reached=True, now=10.0)
    assert reach.streak == 0 and not reach.probing and not reach.failed


def test_after_a_reach_it_takes_limit_unreached_in_a_row_and_a_reach_resets_the_row() -> None:
    reach = Reachability(LIMITS)
    reach.observe("ok1", state="started", reached=True, now=0.0)
    for n, machine in enumerate(["a", "b"], start=1):
        reach.observe(machine, state="started", reached=False, now=0.0)
        reach.observe(machine, state="destroyed", reached=False, now=60.0)
        assert reach.streak == n and reach.probing and not reach.failed
    reach.observe("ok2", state="started", reached=True, now=70.0)
    assert reach.streak == 0 and not reach.probing
    for machine in ["c", "d", "e"]:
        reach.observe(machine, state="started", reached=False, now=100.0)
        reach.observe(machine, state="stopped", reached=False, now=160.0)
    assert reach.failed and reach.unreached == 5


def test_a_machine_judged_reached_stays_so_when_it_ends() -> None:
    reach = Reachability(LIMITS)
    reach.observe("m1", state="started", reached=True, now=0.0)
    reach.observe("m1", state="destroyed", reached=True, now=600.0)
    reach.observe("m1", state="destroyed", reached=False, now=601.0)
    assert reach.streak == 0 and not reach.failed


def test_the_message_names_the_url_and_the_fixes() -> None:
    first = unreachable_message("http://10.0.0.5:8765", app="wf", unreached=1, reached_before=False)
    assert "first Fly machine never reached this coordinator at http://10.0.0.5:8765" in first
    for fix in (
        "WireGuard",
        "--host ::",
        "--advertise-url",
        "tunnel",
        "machines check",
        "fly logs -a wf",
    ):
        assert fix in first
    later = unreachable_message("http://x:1", app="wf", unreached=3, reached_before=True)
    assert "3 Fly machines in a row never reached this coordinator at http://x:1" in later
    assert "\n" not in first + later
