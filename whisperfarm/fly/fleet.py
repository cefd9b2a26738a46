"""The Fly fleet: worker machines started through the Machines API, within a budget.

A controller thread ticks every ``poll_seconds``:

1. list the run's machines (found by metadata, destroyed ones included) and record what
   it sees in the ledger. Fly's List is eventually consistent (it may lag, or answer
   empty), so absence is not destruction: a machine the list leaves out, or shows ended
   but not destroyed, is asked about by Get, and counts as gone only when Fly says so for
   that machine (Get answers 404 or ``destroyed``, or the list shows it ``destroyed``).
   Until then it bills, counts against ``max_machines`` and is destroyed at the end. A
   machine whose metadata Fly can't show (its host is not ``ok``) is never destroyed or
   adopted for that. One stuck starting past ``start_timeout`` is destroyed and not
   counted; one listed for the run but not in the ledger (a create that failed
   ambiguously yet made it) is adopted, so it is counted, billed and destroyed like the
   others. The list goes out at most once a second (Fly allows List 1/s, burst 3, per
   app); Gets are limited per machine (5/s), so one per machine per tick is well within;
2. if the spend so far plus what the running machines bill while stopping reaches the
   budget, destroy them all and report BudgetReached;
3. reachability first (reach.py): a machine whose worker has not reached the coordinator
   within ``reach.timeout`` of running is destroyed; the run stops when its first machine
   never reaches the coordinator, or ``reach.limit`` in a row don't; until a worker has
   reached it (and again after one that didn't) one unproven machine runs at a time;
4. ask ``policy.machines_to_start`` how many more it wants; start that many from the warm
   pool first (stopped machines made by ``whisperfarm machines warm``, see pool.py:
   updated to this run's worker config and started, many at once, since Fly limits
   start and update per machine), then create the rest at Fly's create rate (1/s,
   burst 3), each with a unique name so a retried create never makes two.

Capacity errors and API outages on create are not fatal: the controller backs off and
tries again, and fails the run only when no machine at all could be had for
``give_up_seconds`` while it wanted one. A bad token, a GPU request or a bad config fail
at once.

``stop()`` destroys, by id from the ledger, every machine the run created that is not gone
yet, including any that Fly lists for the run but the ledger missed, and confirms each
destroyed by Get (never by the list); it stops every pool machine it started and waits,
with Get and per-machine ``/wait``, until Fly says each is stopped: pool machines go back
to the pool, never destroyed and never left running.

Spend: a created machine bills from its create request, a pool machine from its update
request (the update may start it), both until first seen stopped or destroyed; a pool
machine that did not start bills until seen stopped too (Fly may start it yet), and one
seen running for the run again bills again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from weakref import WeakKeyDictionary

from whisperfarm.errors import (
    BudgetReached,
    FlyCapacityError,
    FlyError,
    FlyUnavailable,
    MachinesCantReach,
    WhisperfarmError,
)
from whisperfarm.fly.client import (
    MAX_WAIT_REQUEST_S,
    Machine,
    MachinesClient,
    build_worker_config,
)
from whisperfarm.fly.config import FlyConfig
from whisperfarm.fly.policy import CreateRate, FleetState, machines_to_start, must_stop
from whisperfarm.fly.pool import (
    POOL_KEY,
    POOL_VALUE,
    Launched,
    as_pool_config,
    held_by_live_runs,
    is_pool,
    launch,
    live_runs,
    pool_worker_id,
    usable,
)
from whisperfarm.fly.reach import Reachability, unreachable_message
from whisperfarm.fly.store import MachineRecord, MachineStore, from_pool, machine_done
from whisperfarm.ledger import Ledger
from whisperfarm.states import MACHINE_ENDED, MachineState

log = logging.getLogger("whisperfarm.fly")

STARTING = (
    MachineState.CREATED,
    MachineState.CREATING,
    MachineState.STARTING,
    MachineState.LAUNCH_FAILED,
    MachineState.REPLACING,
    MachineState.UPDATING,
)
CREATE_BACKOFF_SECONDS = 15.0  # after a create failed for capacity or an outage
LIST_EVERY_SECONDS = 1.0  # Fly allows List 1/s per app (burst 3, left to other callers)
CONFIRM_SECONDS = 30.0  # how long stop() tries to see each destroyed machine gone


class FlyFleet:
    def __init__(
        self,
        client: MachinesClient,
        config: FlyConfig,
        *,
        ledger_path: Path,
        run_id: str,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.client = client
        self.config = config
        self.ledger_path = ledger_path
        self.run_id = run_id
        self.clock = clock
        self._sleep = sleep
        budget = f", budget ${config.limits.budget:.2f}" if config.limits.budget is not None else ""
        self.description = (
            f"Fly app {config.app}: up to {config.limits.max_machines} × {config.size.name}"
            f"{f' in {config.region}' if config.region else ''}{budget}"
        )
        self.error: WhisperfarmError | None = None
        self.leftovers: list[str] = []
        self._env: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._created = 0
        self._create_rate = CreateRate(clock())
        self._backoff_until = 0.0
        self._no_machine_since: float | None = None
        self._create_asked_at: dict[str, float] = {}  # machine name → when created
        self._last_tick_seconds = 0.0
        self._capped = False
        self._gone: list[str] = []
        self._pool: list[Machine] | None = None  # pool machines this run may still start
        self._listed_at: float | None = None
        self._unconfirmed: set[str] = set()  # destroyed by us, not yet seen gone by Get
        self._reach = Reachability(config.reach) if config.reach is not None else None
        self._stop_began: float | None = None
        # The Fly store over each ledger the fleet is handed (the controller thread's,
        # stop()'s): made once per ledger, as SQLite connections are not shared.
        self._stores: WeakKeyDictionary[Ledger, MachineStore] = WeakKeyDictionary()
        self._stores_lock = threading.Lock()

    # Fleet protocol ------------------------------------------------------------------

    def start(self, url: str, token: str, model: str) -> None:
        del url, model  # machines reach the coordinator by the advertised URL, load by name
        self._env = self.config.worker_env(token)
        ledger = Ledger(self.ledger_path, clock=self.clock)
        try:
            ledger.set_run_limits(
                self.run_id,
                budget=self.config.limits.budget,
                max_machines=self.config.limits.max_machines,
            )
        finally:
            ledger.close()
        self._thread = threading.Thread(target=self._run, daemon=True, name="fly-fleet")
        self._thread.start()

    def check(self, ledger: Ledger, work_left: bool) -> None:
        del ledger, work_left
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self._stop_began = self.clock()  # for stopped()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)
        ledger = Ledger(self.ledger_path, clock=self.clock)
        try:
            listed: list[Machine] | None = None
            if self._listed_at is not None:  # keep to Fly's List rate, 1/s
                self._sleep(max(0.0, self._listed_at + LIST_EVERY_SECONDS - self.clock()))
            try:
                listed = self._list()
                self._adopt_strays(ledger, listed)
            except FlyError as error:  # end what the ledger knows all the same
                log.warning("could not list machines before destroying them: %s", error)
            self._retire_all(ledger, listed)
            self._confirm_destroyed(ledger)
            self._await_pool_stopped(ledger)
            # From what is still open now: a stop that failed because the machine was
            # gone or stopped already is not a leftover.
            rows = self._machines(ledger).machines(self.run_id)
            gone = [row for row in rows if machine_done(row) and row["id"] not in self._unconfirmed]
            self._gone = [_worker_id(row) for row in gone]
            self.leftovers = [str(row["id"]) for row in rows if row not in gone]
        finally:
            ledger.close()

    def gone_workers(self) -> list[str]:
        """Workers of destroyed machines and of stopped pool machines."""
        return list(self._gone)

    def stopped(self) -> str:
        """What ``stop`` ended: machines destroyed, pool machines stopped, since it began."""
        if self._stop_began is None:
            return ""
        ledger = Ledger(self.ledger_path, clock=self.clock)
        try:
            rows = self._machines(ledger).machines(self.run_id)
        finally:
            ledger.close()
        since = self._stop_began
        created = [r for r in rows if not from_pool(r)]
        pooled = [r for r in rows if from_pool(r)]
        destroyed = sum(1 for r in created if (r["destroyed_at"] or 0) >= since)
        stopped = sum(1 for r in pooled if (r["stopped_at"] or 0) >= since)
        parts = []
        if destroyed:
            parts.append(f"destroyed {destroyed} Fly machine{'s' if destroyed != 1 else ''}")
        if stopped:
            parts.append(f"stopped {stopped} pool machine{'s' if stopped != 1 else ''}")
        if self.leftovers:
            parts.append(f"{len(self.leftovers)} could not be ended ('whisperfarm machines reap')")
        return ", ".join(parts) or "no Fly machine was running"

    # The controller ------------------------------------------------------------------

    def _run(self) -> None:
        ledger = Ledger(self.ledger_path, clock=self.clock)
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    self.tick(ledger)
                except WhisperfarmError as error:
                    self.error = error
                    return
                self._last_tick_seconds = time.monotonic() - started
                self._stop.wait(self.config.poll_seconds)
        except Exception as error:  # a bug must not leave machines running unnoticed
            log.exception("fleet controller crashed")
            self.error = FlyError(f"the fleet controller failed: {error}")
        finally:
            ledger.close()

    def tick(self, ledger: Ledger) -> None:
        """One round of observe → budget check → scale. Public for tests."""
        now = self.clock()
        listed = self._observe(ledger, now)
        room = self._check_reach(ledger, now)
        machines = self._machines(ledger)
        active = [m for m in machines.machines(self.run_id) if m["state"] not in MACHINE_ENDED]
        remaining, chunks_left = ledger.work_left(ledger.run_episodes(self.run_id))
        state = FleetState(remaining, chunks_left, len(active), machines.spend(self.run_id))
        # Until the next check: one poll, plus as long as the last tick took (API retries
        # can block a tick while the machines go on billing).
        lookahead = self.config.poll_seconds + self._last_tick_seconds
        if must_stop(state, self.config.limits, lookahead=lookahead):
            self._retire_all(ledger, listed)
            if not self.config.with_local_workers:
                raise BudgetReached(self._budget_message(ledger, remaining))
            # Local workers finish the rest for free; no more machines this run.
            log.warning("budget reached: machines stopped, local workers carry on")
            self._capped = True
        wanted = 0 if self._capped else machines_to_start(state, self.config.limits)
        if room is not None:
            wanted = min(wanted, room)
        if (
            not wanted
            and not active
            and chunks_left
            and self.config.limits.budget is not None
            and not self.config.with_local_workers
            and self._only_fly_workers(ledger, now)
        ):
            # Nothing runs, work is left, and the budget can't start a machine.
            raise BudgetReached(self._budget_message(ledger, remaining))
        # The give-up clock runs only while machines are wanted and none could be had: not
        # while the budget holds them back and another worker does the work.
        if active or not wanted:
            self._no_machine_since = None
        elif self._no_machine_since is None:
            self._no_machine_since = now
        if (
            self._no_machine_since is not None
            and now - self._no_machine_since > self.config.give_up_seconds
        ):
            raise FlyUnavailable(
                f"no Fly machine could be started for {self.config.give_up_seconds:.0f}s "
                "(capacity or API errors); try another --region or later; the episode is "
                "kept, rerun to resume"
            )
        if wanted and not self._stop.is_set():
            wanted -= self._start_pooled(ledger, wanted)
        if now < self._backoff_until:
            return
        for _ in range(wanted):
            if self._stop.is_set() or not self._take_create_token(now):
                break
            if not self._create(ledger):
                break

    def _check_reach(self, ledger: Ledger, now: float) -> int | None:
        """Reachability first (reach.py): end machines whose worker never reached the
        coordinator, stop the run when too many didn't; how many more machines may start
        while probing (None: as many as the policy wants)."""
        if self._reach is None:
            return None
        rows = self._machines(ledger).machines(self.run_id)
        seen = ledger.workers_seen(_worker_id(row) for row in rows)
        for row in rows:
            reached = _worker_id(row) in seen
            if self._reach.observe(row["id"], state=row["state"], reached=reached, now=now):
                reason = "its worker never reached the coordinator"
                log.warning("machine %s: %s; ending it", row["id"], reason)
                self._end(ledger, row, reason=reason)
        if self._reach.failed and not self._capped:
            message = unreachable_message(
                self.config.advertise_url,
                app=self.config.app,
                unreached=self._reach.streak,
                reached_before=self._reach.reached_any,
            )
            if not self.config.with_local_workers:
                raise MachinesCantReach(message)
            self._retire_all(ledger)
            log.warning("%s; local workers carry on", message)
            self._capped = True
        if not self._reach.probing:
            return None
        unproven = [
            row
            for row in self._machines(ledger).machines(self.run_id)
            if row["state"] not in MACHINE_ENDED and _worker_id(row) not in seen
        ]
        return max(0, 1 - len(unproven))

    def _only_fly_workers(self, ledger: Ledger, now: float) -> bool:
        """No other worker (local, remote) has been active in the last half minute."""
        return not any(w["kind"] != "fly" and w["last_seen"] > now - 30 for w in ledger.workers())

    def _list(self) -> list[Machine]:
        """The run's machines as Fly's List has them: maybe lagging, maybe empty."""
        self._listed_at = self.clock()
        return self.client.list(metadata={"whisperfarm_run": self.run_id}, include_deleted=True)

    def _look_up(self, machine_id: str) -> Machine | None:
        """Fly's current word on one machine (Get, not the list): ``destroyed`` when Fly
        says there is no such machine; None when Fly could not be asked."""
        try:
            machine = self.client.find(machine_id)
        except FlyError as error:  # stop() goes on with the others all the same
            log.warning("could not look machine %s up: %s", machine_id, error)
            return None
        if machine is None:
            return Machine(id=machine_id, state=MachineState.DESTROYED)
        return machine

    def _machines(self, ledger: Ledger) -> MachineStore:
        """The Fly store over ``ledger`` (its machine rows), made on first use."""
        with self._stores_lock:
            machines = self._stores.get(ledger)
            if machines is None:
                machines = self._stores[ledger] = MachineStore(ledger)
            return machines

    def _state_for_run(self, row: MachineRecord, machine: Machine) -> str | None:
        """The machine's state as far as this run goes; None when it can't be told."""
        if not from_pool(row):
            return machine.state
        owner = machine.metadata.get("whisperfarm_run")
        if owner == self.run_id:
            return _pool_state(machine)
        if machine.state == MachineState.DESTROYED:
            return MachineState.DESTROYED
        if not machine.metadata_known:
            return None  # its host can't show its metadata: it may run for us, or not
        # Another run's now, or the update that would have made it ours never took.
        return MachineState.STOPPED

    def _observe(self, ledger: Ledger, now: float) -> list[Machine] | None:
        """Bring the ledger up to what Fly says of the run's machines; the listing, or
        None when Fly's List was not asked (paced to once a second) or failed.

        The list only ever adds knowledge: a machine it leaves out, or shows ended but not
        destroyed, is looked up by Get before the ledger believes it."""
        if self._listed_at is not None and now - self._listed_at < LIST_EVERY_SECONDS:
            return None
        try:
            listed: list[Machine] | None = self._list()
        except FlyUnavailable as error:
            log.warning("could not list machines: %s", error)
            listed = None
        if listed is not None:
            self._adopt_strays(ledger, listed)
        seen = {m.id: m for m in listed or []}
        for row in self._machines(ledger).machines(self.run_id):
            if row["state"] == MachineState.DESTROYED:
                continue
            machine = seen.get(row["id"])
            if from_pool(row) and row["state"] in MACHINE_ENDED:
                # Back in the pool, unless Fly runs it for this run all the same (a start
                # that took after all): then it bills again and counts. A lagging list
                # may show a start long over: Get says whether it runs now.
                if machine is not None and _pool_state(machine) not in MACHINE_ENDED:
                    current = self._look_up(row["id"])
                    state = self._state_for_run(row, current) if current else None
                    if state is not None and state not in MACHINE_ENDED:
                        self._reopen(ledger, row, state)
                continue
            if listed is None:
                continue  # nothing new from Fly this tick
            if machine is None or (
                machine.state in MACHINE_ENDED and machine.state != MachineState.DESTROYED
            ):
                # Left out of the list (it lags, or answered empty) or shown ended (maybe
                # an old answer): Fly's word for this machine decides.
                machine = self._look_up(row["id"])
                if machine is None:
                    continue
            state = self._state_for_run(row, machine)
            if state is None:
                continue
            if state != row["state"]:
                self._saw(ledger, row, state)
            if state in STARTING and now - row["created_at"] > self.config.start_timeout:
                log.warning("machine %s stuck %s; ending it", row["id"], state)
                self._end(ledger, row, reason=f"stuck {state}")
        return listed

    def _reopen(self, ledger: Ledger, row: MachineRecord, state: str) -> None:
        """A pool machine this run was done with runs for it again: hold it and bill it."""
        machine_id = row["id"]
        log.warning("pool machine %s runs again for this run (%s); billing it", machine_id, state)
        machines = self._machines(ledger)
        machines.reopen_machine(machine_id, self.run_id, state=state)
        if not machines.hold_pool_machine(
            machine_id, self.run_id, live_runs=live_runs(ledger) - {self.run_id}
        ):
            log.warning("pool machine %s is held by another run too", machine_id)

    def _saw(
        self, ledger: Ledger, row: MachineRecord, state: str, error: str | None = None
    ) -> None:
        machine_id = row["id"]
        machines = self._machines(ledger)
        machines.update_machine(machine_id, state=state, error=error, run_id=self.run_id)
        if state in MACHINE_ENDED:
            # Its worker is gone with it: hand its chunk back now, not at expiry.
            ledger.release_leases([_worker_id(row)], count_attempt=True)
            if from_pool(row):
                machines.release_pool_machine(machine_id, self.run_id, state=state)

    def _take_create_token(self, now: float) -> bool:
        return self._create_rate.take(now)

    def _adopt_strays(self, ledger: Ledger, listed: list[Machine]) -> None:
        """Record machines Fly lists for this run that the ledger lacks: a create that
        timed out may have made its machine after all. They bill from when their create
        was asked for, so the spend stays conservative."""
        known = {row["id"] for row in self._machines(ledger).machines(self.run_id)}
        for machine in listed:
            if machine.id in known or machine.state == MachineState.DESTROYED:
                continue
            if machine.metadata.get("whisperfarm_run") != self.run_id:
                continue  # listed without the run's metadata in sight: not known to be ours
            log.warning(
                "adopting machine %s (%s): its create looked failed", machine.id, machine.name
            )
            self._record(
                ledger, machine, self._create_asked_at.get(machine.name), pool=is_pool(machine)
            )

    def _record(
        self, ledger: Ledger, machine: Machine, created_at: float | None, *, pool: bool = False
    ) -> None:
        self._machines(ledger).record_machine(
            machine_id=machine.id,
            run_id=self.run_id,
            name=machine.name or machine.id,
            app=self.config.app,
            region=machine.region or self.config.region,
            size=self.config.size.name,
            cpus=self.config.size.cpus,
            memory_mb=self.config.size.memory_mb,
            usd_per_second=self.config.size.usd_per_second,
            state=machine.state or MachineState.CREATED,
            created_at=created_at,
            pool=pool,
        )

    # The warm pool -------------------------------------------------------------------

    def _pool_candidates(self, ledger: Ledger) -> list[Machine]:
        """The pool machines fit for this run, listed once, on the first tick that wants
        machines (a run without a pool pays one list request)."""
        if self._pool is None:
            try:
                listed = self.client.list(metadata={POOL_KEY: POOL_VALUE})
            except FlyUnavailable as error:
                log.warning("could not list the warm pool: %s", error)
                return []
            live = live_runs(ledger) - {self.run_id}
            held = held_by_live_runs(self._machines(ledger), self.config.app, live)
            config = self.config
            self._pool = usable(
                listed, image=config.image, size=config.size, region=config.region, held=held
            )
            if self._pool:
                log.info("warm pool: %d stopped machine(s) to start first", len(self._pool))
        return self._pool

    def _start_pooled(self, ledger: Ledger, wanted: int) -> int:
        """Start up to ``wanted`` pool machines; how many it took: each counts against
        ``max_machines`` until seen stopped, started by this run or not."""
        candidates = self._pool_candidates(ledger)
        if not candidates:
            return 0
        live = live_runs(ledger) - {self.run_id}
        machines = self._machines(ledger)
        chosen: list[tuple[Machine, dict[str, object]]] = []
        while candidates and len(chosen) < wanted:
            machine = candidates.pop(0)
            machines.record_pool_machine(
                machine_id=machine.id,
                app=self.config.app,
                name=machine.name or machine.id,
                region=machine.region or None,
                size=self.config.size.name,
                image=self.config.image,
                state=machine.state,
            )
            if not machines.hold_pool_machine(machine.id, self.run_id, live_runs=live):
                continue  # another run on this ledger took it first
            config = as_pool_config(
                build_worker_config(
                    image=self.config.image,
                    size=self.config.size,
                    env=self._env,
                    run_id=self.run_id,
                    machine_name=machine.name or machine.id,
                    model=self.config.model,
                ),
                worker_id=pool_worker_id(machine.id, self.run_id),
            )
            # It bills from now: the update may start it (Fly's docs leave that open).
            self._record(
                ledger,
                machine.model_copy(update={"state": MachineState.STARTING}),
                self.clock(),
                pool=True,
            )
            chosen.append((machine, config))
        if not chosen:
            return 0
        outcomes = self._launch_all(chosen)
        for outcome in outcomes:
            if outcome.going:
                machines.update_machine(outcome.machine_id, state=outcome.state, run_id=self.run_id)
            elif outcome.state == "unknown":
                # Maybe started, maybe not: it keeps billing until the controller sees it.
                log.warning("pool machine %s: %s", outcome.machine_id, outcome.error)
            else:
                # Not started by us, but Fly may yet start it (an update still applying):
                # it keeps billing and counting until the controller sees it stopped.
                log.warning("pool machine %s not started: %s", outcome.machine_id, outcome.error)
                machines.update_machine(
                    outcome.machine_id,
                    state=MachineState.STARTING,
                    error=outcome.error,
                    run_id=self.run_id,
                )
        if self._stop.is_set():
            # stop() gave up waiting for this thread: these must not outlive the run.
            for outcome in outcomes:
                if outcome.state not in (*MACHINE_ENDED, MachineState.CREATED):
                    self._stop_pooled(ledger, outcome.machine_id, reason="started while stopping")
        return len(outcomes)

    def _launch_all(self, chosen: list[tuple[Machine, dict[str, object]]]) -> list[Launched]:
        """Update and start each, several at once: Fly limits these per machine. A GPU
        config or a bad token fails the run, once every launch has come back."""
        parallel = max(1, min(self.config.pool_parallel, len(chosen)))
        with ThreadPoolExecutor(parallel, thread_name_prefix="fly-pool") as threads:
            futures = [
                threads.submit(launch, self.client, machine.id, config, sleep=self._sleep)
                for machine, config in chosen
            ]
        outcomes, fatal = [], None
        for (machine, _), future in zip(chosen, futures, strict=True):
            try:
                outcomes.append(future.result())
            except WhisperfarmError as error:
                fatal = fatal or error
                outcomes.append(Launched(machine.id, "unknown", str(error)))
        if fatal is not None:
            raise fatal
        return outcomes

    def _stop_pooled(self, ledger: Ledger, machine_id: str, *, reason: str | None = None) -> bool:
        """Ask a pool machine to stop; it bills until it is seen stopped."""
        try:
            self.client.stop(machine_id, signal="SIGTERM")
        except FlyError as error:
            log.warning("could not stop pool machine %s: %s", machine_id, error)
            return False
        self._machines(ledger).update_machine(
            machine_id, state=MachineState.STOPPING, error=reason, run_id=self.run_id
        )
        return True

    def _await_pool_stopped(self, ledger: Ledger) -> None:
        """Wait until Fly says each pool machine of the run is stopped, for at most
        ``pool_stop_wait`` in all: Get, then ``/wait`` for ``stopped`` on that machine
        (both limited per machine, so a hundred machines cost no more than one; the list,
        limited per app, is not polled). ``stop()`` counts those still running as
        leftovers."""
        deadline = self.clock() + self.config.pool_stop_wait
        rows = self._machines(ledger).machines(self.run_id)
        for row in [r for r in rows if from_pool(r) and r["state"] not in MACHINE_ENDED]:
            while True:
                machine = self._look_up(row["id"])
                state = self._state_for_run(row, machine) if machine is not None else None
                if state in MACHINE_ENDED:
                    self._saw(ledger, row, str(state))
                    break
                if state in STARTING or state == MachineState.STARTED:
                    self._stop_pooled(ledger, row["id"])  # started after our stop
                remaining = deadline - self.clock()
                if remaining <= 0:
                    break
                if machine is None or state is None:
                    self._sleep(min(1.0, remaining))  # Fly could not tell: ask again
                    continue
                try:
                    self.client.wait(
                        row["id"],
                        MachineState.STOPPED,
                        timeout=min(remaining, MAX_WAIT_REQUEST_S),
                        version=machine.instance_id,
                    )
                except FlyError as error:
                    log.info("pool machine %s not stopped yet: %s", row["id"], error)

    def _create(self, ledger: Ledger) -> bool:
        self._created += 1
        name = f"wf-{self.run_id}-{self._created:03d}"
        config = build_worker_config(
            image=self.config.image,
            size=self.config.size,
            env=self._env,
            run_id=self.run_id,
            machine_name=name,
            model=self.config.model,
        )
        # The machine bills from when it was asked for: a retried create may have made it
        # on its first attempt, long before the answer came.
        asked_at = self._create_asked_at[name] = self.clock()
        try:
            machine = self.client.create(config, name=name, region=self.config.region)
        except (FlyCapacityError, FlyUnavailable) as error:
            self._create_rate.settle(self.clock())
            log.warning("could not create a machine now (%s); backing off", error)
            # From when the failure came, not when the tick began: the client's own
            # retries may have taken longer than the backoff.
            self._backoff_until = self.clock() + CREATE_BACKOFF_SECONDS
            return False
        self._create_rate.settle(self.clock())
        self._record(ledger, machine.model_copy(update={"name": name}), asked_at)
        if self._stop.is_set():
            # stop() gave up waiting for this thread and may have destroyed the others
            # already: this machine must not outlive the run.
            self._destroy(ledger, machine.id, reason="created while stopping")
            return False
        return True

    def _destroy(self, ledger: Ledger, machine_id: str, *, reason: str | None = None) -> bool:
        try:
            self.client.destroy(machine_id, force=True)
        except FlyError as error:
            log.warning("could not destroy machine %s: %s", machine_id, error)
            return False
        self._machines(ledger).update_machine(
            machine_id, state=MachineState.DESTROYED, error=reason, run_id=self.run_id
        )
        self._unconfirmed.add(machine_id)
        return True

    def _confirm_destroyed(self, ledger: Ledger) -> None:
        """See every machine this run destroyed gone by Get (the list may lag by seconds
        and show it, or have never shown it); destroy again any that still runs, for at
        most CONFIRM_SECONDS. Those never seen gone stay in ``_unconfirmed``: leftovers."""
        deadline = self.clock() + CONFIRM_SECONDS
        while self._unconfirmed:
            for machine_id in sorted(self._unconfirmed):
                if self.clock() >= deadline:
                    return
                machine = self._look_up(machine_id)
                if machine is None:
                    continue
                if machine.state == MachineState.DESTROYED:
                    self._unconfirmed.discard(machine_id)
                elif machine.state != MachineState.DESTROYING:
                    log.warning("machine %s still %s after its destroy", machine_id, machine.state)
                    self._destroy(ledger, machine_id, reason="destroyed again at the end")
            if not self._unconfirmed or self.clock() >= deadline:
                return
            self._sleep(1.0)

    def _retire_all(self, ledger: Ledger, listed: list[Machine] | None = None) -> None:
        """Destroy every machine the run created; stop every pool machine it started.
        ``listed`` (Fly's view, when at hand) catches a pool machine the ledger thinks
        stopped that runs all the same."""
        running = {m.id for m in listed or [] if _pool_state(m) not in MACHINE_ENDED}
        for row in self._machines(ledger).machines(self.run_id):
            if row["state"] == MachineState.DESTROYED:
                continue
            stopped_or_asked = row["state"] in (*MACHINE_ENDED, MachineState.STOPPING)
            if from_pool(row) and stopped_or_asked and row["id"] not in running:
                continue  # back in the pool, or asked to stop already
            self._end(ledger, row)

    def _end(self, ledger: Ledger, row: MachineRecord, *, reason: str | None = None) -> None:
        """End a machine of the run: destroy one it created; stop a pool machine, which
        goes back to the pool (never destroyed)."""
        if from_pool(row):
            self._stop_pooled(ledger, row["id"], reason=reason)
        else:
            self._destroy(ledger, row["id"], reason=reason)

    def _budget_message(self, ledger: Ledger, remaining: float) -> str:
        limits = self.config.limits
        done, total = ledger.chunk_counts(ledger.run_episodes(self.run_id))
        finish = (limits.start_latency + remaining / limits.speed + limits.stop_margin) * (
            limits.price_per_second
        )
        spent = self._machines(ledger).spend(self.run_id)
        return (
            f"budget ${limits.budget:.2f} reached (${spent:.2f} spent): {done} of {total} chunks "
            f"done, {remaining / 60:.1f} min of audio left, every machine stopped. Finishing "
            f"costs about ${finish:.2f} more: rerun the same command with a larger --budget"
        )


def _pool_state(machine: Machine) -> str:
    """A pool machine's state for the run: ``created`` (updated, never started) is idle."""
    return MachineState.STOPPED if machine.state == MachineState.CREATED else machine.state


def _worker_id(row: MachineRecord) -> str:
    """A created machine's worker is named by its machine id; a pool machine's, which
    serves many runs, by its machine id and the run."""
    if from_pool(row):
        return pool_worker_id(row["id"], row["run_id"])
    return row["id"]
