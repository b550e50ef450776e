"""The model-checked scope fuzzer: plans, a reference model, a runner and a checker.

A *plan* (:class:`Plan`) describes one whole :class:`~stopscope.TaskScope`: its
parameters, its members and their behaviour, and what requests the stop.
:func:`predict` says, from the plan alone, what must happen (each member's outcome and
phase, the errors that come out of the ``async with`` and the report's reason);
:func:`run_plan` runs the plan for real on one backend; :func:`check` compares, and
also checks the invariants that hold for every plan (every ``finally`` ran once, no
hang, nothing leaked, the report is frozen after exit).

Ordering is by events and ``anyio.wait_all_tasks_blocked()`` only.  On trio the grace
period runs in virtual time (``MockClock(autojump_threshold=0)``) unless the plan has
real threads; on asyncio and uvloop a small grace is real time, so the model is
*inexact* there: a member that should finish within a small grace may also be
cancelled (a loaded machine can stall the loop longer than the grace).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import signal as _os_signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
from hypothesis import strategies as st

from fuzz_observe import Telemetry, disagreements, structured_records
from stopscope import Outcome, StopReason, StopSignal, TaskScope

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup, ExceptionGroup  # type: ignore[import-not-found, unused-ignore]

#: a small grace period: real seconds on asyncio/uvloop, virtual seconds on trio
SMALL_GRACE_REAL = 0.02
SMALL_GRACE_VIRTUAL = 1.0
#: seconds (loop clock) allowed beyond the grace period for unwinding; generous
EXIT_SLACK = 5.0
#: seconds (loop clock) before a run counts as hung
HANG_GUARD = 30.0
#: a period no test reaches: sleep()/every() only end because of the signal
FOREVER = 1e6
#: the small grace of a plan with process members (real seconds): a child must get its
#: SIGTERM and die well within it, even on a loaded machine
PROCESS_GRACE = 0.5
#: a member's own `grace=` and a slow member's delay, as fractions of the small grace
#: (chosen so that no stop time, delay and deadline ever tie)
MEMBER_GRACE = {"zero": 0.0, "part": 0.4}
DELAYS = {"short": 0.25, "long": 0.7, "over": 1.3}
#: seconds after its cancellation at which a member still running is reported a
#: laggard (phase "after-cancel"); the library's AFTER_CANCEL_REPORT_DELAY
LAGGARD_DELAY = 1.0
#: the signal storm: interval of the timer, and how many signals at most
STORM_INTERVAL = 0.0005
STORM_MAX = 60

# ---------------------------------------------------------------------------- plans

#: members that end on their own, before any stop
FINITE = ("finish", "finish_late")
#: members that end when their signal is set (no cancellation needed)
OBEYING = ("obey", "obey_late", "raise_grace", "thread_obey")
#: members that take a while (their `delay`) after their signal is set: `obey_delay`
#: sleeps, `shield_obey` runs a cleanup under `CancelScope(shield=True)`
TIMED = ("obey_delay", "shield_obey")
#: members that only end when cancelled (or, for threads, are abandoned)
LINGERING = (
    "obey_slow",  # sees the signal, then takes longer than any grace
    "ignore",
    "raise_on_cancel",
    "swallow_once",
    "swallow_always",
    "thread_ignore",
    "shield_ignore",  # ignores the signal; its `finally` runs a shielded cleanup
)
#: process members (a `sys.executable -c` child): exits 0 at once (before any stop);
#: dies of SIGTERM; exits with `code` on SIGTERM; ignores SIGTERM (needs SIGKILL)
PROCESSES = ("proc_finish", "proc_term", "proc_term_exit", "proc_ignore")
#: members with children of their own
PARENTS = ("nursery", "nested")
NURSERY_CHILDREN = ("obey", "ignore", "raise_on_cancel")
NESTED_CHILDREN = ("obey", "ignore", "raise_grace")

#: a member fails with a CancelledError nobody sent it (asyncio: it awaited a task
#: someone else cancelled); on trio, which has no such thing, it raises a plain error
FOREIGN = "foreign_cancel"
#: stop sources that end in a graceful stop of the scope
GRACEFUL_SOURCES = (
    "stop",
    "member",
    "parent",
    "thread",
    "start_raise",
    "body_end",
    "body_raise",
    "signal",  # a real signal handler (SIGALRM, a setitimer storm on the loop thread)
)
#: stop sources after which the body goes on (and may start members during shutdown)
BODY_GOES_ON = ("stop", "member", "parent", "thread", "start_raise", FOREIGN, "signal")
#: hard stops: a BaseException that is not cancellation
BASE_SOURCES = ("member_base", "body_base")
#: the sources of the main profile (a signal storm needs real time: a test of its own)
SOURCES = (
    *(s for s in GRACEFUL_SOURCES if s != "signal"),
    FOREIGN,
    *BASE_SOURCES,
    "outer",
    "drain_outer",
    "none",
)
#: the BaseExceptions a hard stop raises: a stand-in, and the real ones
BASES = ("fuzz", "kbi", "exit")


@dataclass(frozen=True)
class Member:
    """One member of a plan."""

    kind: str
    #: how an obeying member waits: wait | sleep | every | cancel_scope; how an ignoring
    #: one blocks: sleep_forever | event
    waiter: str = "wait"
    #: soon (start_soon) | start_early | start_late (start(), started() before or after
    #: a checkpoint); threads are always started with start_thread
    spawn: str = "soon"
    #: 0: watches scope.signal; 1, 2: the first and second stage (stopped last, first)
    stage: int = 0
    #: started by the body after the stop was requested
    late: bool = False
    #: raise_on_cancel: raise in the `except` or in the `finally`
    where: str = "except"
    #: the kinds of the children of a nursery or nested member
    children: tuple[str, ...] = ()
    #: scope: the scope's grace; zero | part: its own `grace=` (see MEMBER_GRACE)
    grace: str = "scope"
    #: obey_delay, shield_obey, shield_ignore: how long it takes (see DELAYS)
    delay: str = "short"
    #: shield_obey: after its shielded cleanup, return at once or pass a checkpoint;
    #: proc_term_exit: the exit code (as a string)
    after: str = "return"


@dataclass(frozen=True)
class Plan:
    """One whole scope: parameters, members, and what requests the stop."""

    grace: str  # zero | small | none
    stop_on_exit: bool
    stages: bool
    source: str
    members: tuple[Member, ...]
    #: member_base, body_base: what is raised (FuzzBaseError, KeyboardInterrupt, SystemExit)
    base: str = "fuzz"
    #: signal: the storm's signal that stops the scope (1 = the first)
    storm_at: int = 1

    def names(self) -> list[str]:
        return [f"m{i}-{m.kind}" for i, m in enumerate(self.members)]


TRIGGERS = ("trigger", "trigger_base", "trigger_foreign", "start_raise")


class FuzzError(Exception):
    """An error a plan raises on purpose; its tag says where from."""

    def __init__(self, tag: str) -> None:
        super().__init__(tag)
        self.tag = tag


class FuzzBaseError(BaseException):
    """A BaseException that is not cancellation (a stand-in for KeyboardInterrupt)."""

    def __init__(self, tag: str) -> None:
        super().__init__(tag)
        self.tag = tag


def lingers(m: Member) -> bool:
    """Whether the member keeps running until it is cancelled (or abandoned)."""
    if m.kind in LINGERING or m.kind == "proc_ignore":
        return True
    return m.kind in PARENTS and any(c in ("ignore", "raise_on_cancel") for c in m.children)


#: kinds that may have a `grace=` of their own
OWN_GRACE_KINDS = frozenset(
    {*OBEYING, *TIMED, *LINGERING, *PARENTS, "proc_term", "proc_term_exit", "proc_ignore"}
)


@st.composite
def members_st(
    draw: st.DrawFn,
    kinds: list[str],
    stages: bool,
    late_kinds: list[str],
    need_grace: frozenset[str] = frozenset(),
) -> Member:
    """One member; a kind in `need_grace` (it would never end by itself and the scope
    waits forever) gets a `grace=` of its own."""
    late = bool(late_kinds) and draw(st.integers(0, 3)) == 0
    kind = draw(st.sampled_from(late_kinds if late else kinds))
    waiter = "wait"
    if kind in ("obey", "obey_late", "obey_slow", "raise_grace", *TIMED):
        waiter = draw(st.sampled_from(["wait", "sleep", "every", "cancel_scope"]))
    elif kind in ("ignore", "raise_on_cancel", "swallow_once", "swallow_always", "shield_ignore"):
        waiter = draw(st.sampled_from(["sleep_forever", "event"]))
    spawn = "soon"
    if not late and not kind.startswith(("thread", "proc")):
        spawn = draw(st.sampled_from(["soon", "start_early", "start_late"]))
    children: tuple[str, ...] = ()
    if kind in PARENTS:
        pool = NURSERY_CHILDREN if kind == "nursery" else NESTED_CHILDREN
        allowed = [c for c in pool if c == "obey" or "ignore" in kinds or c == "raise_grace"]
        children = tuple(draw(st.lists(st.sampled_from(allowed), min_size=1, max_size=3)))
    where = draw(st.sampled_from(["except", "finally"])) if kind == "raise_on_cancel" else "except"
    stage = 0 if late or not stages else draw(st.integers(0, 2))
    grace = "scope"
    if not late and kind in OWN_GRACE_KINDS:
        choices = ["scope", "scope", "zero", "part"]
        if kind in need_grace or (kind in PARENTS and lingers(Member(kind, children=children))):
            choices = ["zero", "part"]
        if kind == "shield_obey":  # grace 0: whether the shield is entered is a tie
            choices = [c for c in choices if c != "zero"]
        grace = draw(st.sampled_from(choices))
    delay = draw(st.sampled_from(sorted(DELAYS))) if kind in (*TIMED, "shield_ignore") else "short"
    after = "return"
    if kind == "shield_obey":
        after = draw(st.sampled_from(["return", "checkpoint"]))
    elif kind == "proc_term_exit":
        after = draw(st.sampled_from(["0", "3"]))
    return Member(kind, waiter, spawn, stage, late, where, children, grace, delay, after)


@st.composite
def plans(draw: st.DrawFn, special: str = "") -> Plan:
    """Every plan the model can predict exactly (up to the stated nondeterminism).

    :param special: ``""`` for the main profile; ``"signal"``: the stop comes from a
        real signal handler, in a storm of signals (real time); ``"process"``: process
        members among a few others (real time)
    """
    if special == "signal":
        source = "signal"
    elif special == "process":
        source = draw(st.sampled_from([s for s in SOURCES if s not in ("drain_outer", "none")]))
    else:
        source = draw(st.sampled_from(SOURCES))
    # drain_outer: the drain must still run when the harness cuts it
    grace = "none" if source == "drain_outer" else draw(st.sampled_from(["zero", "small", "none"]))
    if source == "body_end":
        stop_on_exit = True
    elif source == "none":
        stop_on_exit = False
    else:
        stop_on_exit = draw(st.booleans())
    stages = draw(st.booleans())
    hard_end = source in ("outer", "drain_outer", *BASE_SOURCES)
    lingering = [*LINGERING] if special != "process" else ["ignore", "shield_ignore"]
    need_grace: frozenset[str] = frozenset()
    if source == "none":
        kinds = list(FINITE)
    elif special == "process":
        kinds = [*PROCESSES, "obey", "obey_delay"]
        if grace != "none" or hard_end:
            kinds += lingering
        else:  # they would run for ever: each gets a grace of its own
            kinds += [*lingering, "proc_ignore"]
            need_grace = frozenset({*lingering, "proc_ignore"})
    else:
        kinds = [*FINITE, "obey", "obey_late", "raise_grace", "thread_obey", *PARENTS]
        if source != "drain_outer":  # the harness cuts the drain once all are blocked
            kinds += list(TIMED)
        kinds += lingering
        if grace == "none" and not hard_end:
            need_grace = frozenset(lingering)
    late_kinds: list[str] = []
    if source in BODY_GOES_ON and grace != "zero" and special != "process":
        late_kinds = ["obey", "finish", "raise_grace"] + (["ignore"] if grace == "small" else [])
    max_size = 3 if special == "process" else 5
    members = list(
        draw(st.lists(members_st(kinds, stages, late_kinds, need_grace), max_size=max_size))
    )
    if source == "drain_outer":  # the harness cuts the drain at once: no own graces
        members = [dataclasses.replace(m, grace="scope") for m in members]
    if source in ("member", "member_base", "start_raise", FOREIGN):
        triggers = {"member": "trigger", "member_base": "trigger_base", FOREIGN: "trigger_foreign"}
        trigger = triggers.get(source, source)
        at = draw(st.integers(0, len(members)))
        stage = draw(st.integers(0, 2)) if stages and trigger != "start_raise" else 0
        members.insert(at, Member(trigger, stage=stage))
    base = draw(st.sampled_from(BASES)) if source in BASE_SOURCES else "fuzz"
    storm_at = draw(st.integers(1, 5)) if source == "signal" else 1
    return Plan(grace, stop_on_exit, stages, source, tuple(members), base, storm_at)


# ---------------------------------------------------------------------------- model

CANCEL_PHASES = frozenset({"cancelled", "cancelled-from-outside", "after-cancel", "grace"})


@dataclass(frozen=True)
class Alt:
    """One allowed end for a member: outcome, phases (None: any), the error tags its
    record's error must hold (as leaves), and whether latency must be None."""

    outcome: Outcome
    phases: frozenset[str] | None
    tags: frozenset[str] = frozenset()
    no_latency: bool = False
    #: tags the error may hold too (children that may or may not raise before a hard stop)
    optional: frozenset[str] = frozenset()
    #: the error is one the library makes (a process's CalledProcessError): its type
    error_type: type[BaseException] | None = None


def alt(outcome: Outcome, *phases: str, tags: frozenset[str] = frozenset()) -> Alt:
    return Alt(outcome, frozenset(phases) if phases else None, tags)


@dataclass
class Expect:
    """What the model says about a plan."""

    members: dict[str, list[Alt]]
    #: the reason: a literal, or ("tag", t) for the object raised at tag t
    reason: object
    #: tags that must be leaves of what the `async with` raises, beyond the members'
    body_tags: frozenset[str]
    #: the body raises a BaseException that may come out bare
    bare_ok: bool
    #: members that are started during the shutdown (may be absent when inexact)
    late: frozenset[str]
    hard_outside: bool
    grace_value: float | None


def has_processes(plan: Plan) -> bool:
    return any(m.kind in PROCESSES for m in plan.members)


def real_time(plan: Plan) -> bool:
    """Whether the plan needs real time (threads, processes, a signal storm)."""
    return plan.source in ("thread", "signal") or any(
        m.kind.startswith(("thread", "proc")) for m in plan.members
    )


def unit(plan: Plan, virtual: bool) -> float:
    """The small grace in seconds; members' own graces and delays are fractions of it."""
    if has_processes(plan):
        return PROCESS_GRACE
    return SMALL_GRACE_VIRTUAL if virtual else SMALL_GRACE_REAL


def grace_value(plan: Plan, virtual: bool) -> float | None:
    return {"zero": 0.0, "none": None}.get(plan.grace, unit(plan, virtual))


@dataclass(frozen=True)
class Verdict:
    """Where one member's time runs out, in units of the small grace."""

    #: its signal is set (its stage's stop)
    signal_at: float
    #: its deadline: its own grace from its signal, capped by the scope's budget
    deadline: float
    #: it leaves (by itself or cut; a shielded cleanup defers the cut)
    exit_at: float
    #: it is cancelled (its deadline comes before it returns)
    cut: bool
    #: the verdict holds whatever the timing (it does not race a finite deadline)
    robust: bool

    @property
    def overrun(self) -> float:
        """How long it runs on after it was cancelled (a shielded cleanup)."""
        return self.exit_at - self.deadline if self.cut else 0.0


def _duration(m: Member) -> float:
    """How long the member takes after its signal is set, if nothing cuts it."""
    k = m.kind
    if k in ("obey_delay", "shield_obey"):
        return DELAYS[m.delay]
    if k == "nursery":
        return 0.0 if all(c == "obey" for c in m.children) else math.inf
    if k == "nested":
        return math.inf if "ignore" in m.children else 0.0
    return math.inf if lingers(m) else 0.0


def _timeline(plan: Plan) -> list[Verdict]:
    """Each member's verdict after a graceful stop at time 0: the stages are stopped
    last-created first, each once every member of the later one has left; a member's
    grace starts when its own (stage's) signal is set and is capped by what is left of
    the scope's budget."""
    budget = {"zero": 0.0, "small": 1.0}.get(plan.grace, math.inf)
    verdicts: dict[int, Verdict] = {}

    def judge(i: int, m: Member, start: float) -> Verdict:
        own = MEMBER_GRACE.get(m.grace, math.inf)
        deadline = min(start + own, budget)
        took = _duration(m)
        if start + took < deadline:
            return Verdict(start, deadline, start + took, False, deadline == math.inf)
        exit_at = deadline
        if m.kind == "shield_ignore":
            exit_at = deadline + DELAYS[m.delay]
        elif m.kind == "shield_obey" and start < deadline:
            exit_at = start + took  # the shielded cleanup runs to its end
        # a slow member cut: its sleep or cleanup cannot end early, and a loop that
        # stalls makes the stage behind it (and its deadline) later, never earlier.
        # Except in one way: a stall (real time only) that spans both its deadline and
        # the end of its sleep makes the two due in the same loop turn, and which acts
        # first is the loop's choice (trio runs the tasks woken in one turn in random
        # order, and the scope's deadlines act from a task of their own: the timer
        # service).  A member that runs first and returns before its next checkpoint
        # was never reached by the cut: STOPPED, as docs/semantics.md says of "a member
        # the cancellation never reached".  One that passes a checkpoint after its
        # shielded cleanup meets the cut there, whatever the order.
        returns_at_its_timer = m.kind == "obey_delay" or (
            m.kind == "shield_obey" and m.after == "return"
        )
        tie = returns_at_its_timer and start < deadline
        robust = took == math.inf or start >= budget or (m.kind in TIMED and not tie)
        return Verdict(start, deadline, exit_at, True, robust)

    start = 0.0
    order = [2, 1] if plan.stages else []
    for stage in order:
        ends = [start]
        for i, m in enumerate(plan.members):
            if m.stage == stage and not m.late:
                v = verdicts[i] = judge(i, m, start)
                if m.kind not in FINITE and m.kind != "proc_finish":
                    ends.append(v.exit_at)
        start = max(ends)
    for i, m in enumerate(plan.members):
        if i not in verdicts:  # the scope's own signal (stage 0), and late members
            verdicts[i] = judge(i, m, 0.0)
    return [verdicts[i] for i in range(len(plan.members))]


#: the defects found and not fixed yet, whose wrong outcomes the generated profiles
#: accept (so that CI stays green and keeps hunting): none.  Those found by the fuzzer
#: of issue 15 ("member-grace0", "shield-overrun", "stage-member-grace",
#: "process-exit-code", "false-outside") are fixed; ``_tolerated`` still knows them, to
#: tolerate one again by name should it come back while its fix is under way.
KNOWN_DEFECTS: frozenset[str] = frozenset()


def _tolerated(
    plan: Plan, i: int, m: Member, alts: list[Alt], tolerate: frozenset[str]
) -> list[Alt]:
    """The wrong outcomes the known defects give (see KNOWN_DEFECTS)."""
    extra: list[Alt] = []
    if "member-grace0" in tolerate and m.grace == "zero":
        extra += [alt(Outcome.CANCELLED, "after-cancel")]
        extra += [dataclasses.replace(a, phases=None) for a in alts if a.outcome is Outcome.FAILED]
        extra += [
            Alt(
                Outcome.FAILED,
                None,
                optional=frozenset({f"m{i}", *(f"m{i}.c{j}" for j in range(len(m.children)))}),
            )
        ]
    if "shield-overrun" in tolerate and m.kind in ("shield_obey", "shield_ignore"):
        extra += [alt(Outcome.STOPPED, "grace"), alt(Outcome.CANCELLED, "after-cancel")]
    if (
        "stage-member-grace" in tolerate
        and plan.stages
        and any(o.grace != "scope" and o.stage > 0 for o in plan.members)
        and m.stage > 0
    ):
        extra += [alt(Outcome.STOPPED, "grace"), alt(Outcome.CANCELLED, "cancelled")]
        extra += [
            Alt(
                Outcome.FAILED,
                None,
                optional=frozenset({f"m{i}", *(f"m{i}.c{j}" for j in range(len(m.children)))}),
            )
        ]
    if "false-outside" in tolerate and any(o.grace != "scope" for o in plan.members):
        # the scope then takes itself for cancelled from outside: any member may be cut
        # "from outside", or fail in that phase
        extra += [alt(Outcome.CANCELLED, "cancelled-from-outside")]
        extra += [
            dataclasses.replace(a, phases=a.phases | {"cancelled-from-outside"})
            for a in alts
            if a.outcome is Outcome.FAILED and a.phases is not None
        ]
    if "process-exit-code" in tolerate and m.kind == "proc_term_exit" and m.after != "0":
        extra += [alt(Outcome.STOPPED, "grace")]
    return extra


def predict(
    plan: Plan, exact: bool, virtual: bool, tolerate: frozenset[str] = frozenset()
) -> Expect:
    """What must happen, from the plan alone.

    :param exact: small-grace timing is exact (virtual time): a member that needs only
        a few steps after its stop does finish within grace
    """
    names = plan.names()
    g = plan.grace
    src = plan.source
    expect: dict[str, list[Alt]] = {}
    top_stage = 2 if plan.stages else 0

    def stage_of(m: Member) -> int:
        return top_stage if m.late else m.stage

    def blocked(m: Member) -> bool:
        """A stage member whose stop waits for a later stage that will not end by
        itself within grace."""
        if not plan.stages or m.late or m.stage == 0:
            return False
        return any(lingers(o) and not o.late and o.stage > m.stage for o in plan.members)

    def maybe_blocked(m: Member) -> bool:
        """A member started during the shutdown joins the last stage; whether the stage
        sequence had already passed it is a race with the body."""
        if not plan.stages or m.late or m.stage == 0:
            return False
        return any(lingers(o) and o.late for o in plan.members)

    def tag(i: int, j: int | None = None) -> str:
        return f"m{i}" if j is None else f"m{i}.c{j}"

    def cut(i: int, m: Member, phase: str) -> list[Alt]:
        """The member is cancelled while still running (no stop reached it, or its
        grace ran out), with `phase` the phase of a cancelled record."""
        k = m.kind
        if k in ("obey", "obey_late", "obey_slow", "raise_grace", "ignore", "swallow_once"):
            return [alt(Outcome.CANCELLED, phase)]
        if k in (*TIMED, "shield_ignore"):
            # a shield that deferred the cancellation: cancelled all the same, never
            # STOPPED and never accused of catching it
            return [alt(Outcome.CANCELLED, phase)]
        if k in ("proc_term", "proc_term_exit", "proc_ignore"):
            return [alt(Outcome.CANCELLED, phase)]  # SIGKILL
        if k == "raise_on_cancel":
            return [Alt(Outcome.FAILED, CANCEL_PHASES, frozenset({tag(i)}))]
        if k == "swallow_always":
            return [alt(Outcome.CANCELLED, phase, "after-cancel")]
        if k in ("thread_obey", "thread_ignore"):
            alts = [alt(Outcome.ABANDONED), alt(Outcome.CANCELLED)]
            return [*alts, alt(Outcome.STOPPED, "grace")] if k == "thread_obey" else alts
        if k == "nursery":
            raisers = frozenset(
                tag(i, j) for j, c in enumerate(m.children) if c == "raise_on_cancel"
            )
            if raisers:
                return [Alt(Outcome.FAILED, CANCEL_PHASES, raisers)]
            return [alt(Outcome.CANCELLED, phase)]
        if k == "nested":
            return [alt(Outcome.CANCELLED, phase)]
        raise AssertionError(k)

    def graceful(i: int, m: Member) -> list[Alt]:
        """The member got its stop and a grace that ends (small) or not (none)."""
        k = m.kind
        if k in ("obey", "obey_late", "thread_obey", *TIMED, "proc_term"):
            return [alt(Outcome.STOPPED, "grace")]
        if k == "proc_term_exit":
            if m.after == "0":
                return [alt(Outcome.STOPPED, "grace")]
            # exited non-zero after our SIGTERM: not the promise STOPPED makes
            return [
                Alt(Outcome.FAILED, frozenset({"grace"}), error_type=subprocess.CalledProcessError),
                alt(Outcome.CANCELLED, "grace", "cancelled"),
            ]
        if k == "raise_grace":
            return [alt(Outcome.FAILED, "grace", tags=frozenset({tag(i)}))]
        if k == "nursery":
            if any(c != "obey" for c in m.children):
                return cut(i, m, "cancelled")
            return [alt(Outcome.STOPPED, "grace")]
        if k == "nested":
            raisers = frozenset(tag(i, j) for j, c in enumerate(m.children) if c == "raise_grace")
            if raisers:
                phases = ("grace",) if "ignore" not in m.children else tuple(CANCEL_PHASES)
                return [alt(Outcome.FAILED, *phases, tags=raisers)]
            if "ignore" in m.children:
                return [alt(Outcome.CANCELLED, "cancelled")]
            return [alt(Outcome.STOPPED, "grace")]
        return cut(i, m, "cancelled")  # lingering kinds: cancelled at the end of grace

    def nested_partly_failed(i: int, m: Member) -> Alt:
        """A nested scope cut while its children were waking: some of them raised."""
        raisers = frozenset(tag(i, j) for j, c in enumerate(m.children) if c == "raise_grace")
        return Alt(Outcome.FAILED, None, optional=raisers)

    timeline = _timeline(plan)

    for i, (name, m) in enumerate(zip(names, plan.members, strict=True)):
        k = m.kind
        if k in FINITE or k == "proc_finish":
            if not m.late:
                alts = [Alt(Outcome.FINISHED, frozenset({"running"}), no_latency=True)]
            else:  # started during the shutdown: it returns after the stop request
                alts = [alt(Outcome.STOPPED, "grace")]
                if not exact:
                    alts.append(alt(Outcome.CANCELLED, "cancelled"))
        elif k in TRIGGERS:
            alts = [Alt(Outcome.FAILED, frozenset({"running"}), frozenset({tag(i)}), True)]
        elif src == "outer":
            alts = cut(i, m, "cancelled-from-outside")
        elif src == "drain_outer":
            # the harness cuts the drain once every task is blocked: a thread that is
            # still waking up (an obeying thread member, or the stages behind one) may
            # be cut too
            behind_thread = (
                any(o.kind == "thread_obey" and stage_of(o) > m.stage for o in plan.members)
                and plan.stages
                and m.stage > 0
            )
            if k == "thread_obey" or behind_thread:
                alts = graceful(i, m) + cut(i, m, "cancelled-from-outside")
            elif blocked(m) or lingers(m):
                alts = cut(i, m, "cancelled-from-outside")
                if k == "nested" and "raise_grace" in m.children and not blocked(m):
                    alts = graceful(i, m)
            else:
                alts = graceful(i, m)
        elif src in BASE_SOURCES:
            # hard at once: whatever the signal's wake had already let run may end
            # gracefully, the rest is cancelled; only what is raised on cancellation
            # is certain to be raised
            alts = [dataclasses.replace(a, phases=None) for a in cut(i, m, "cancelled")]
            if not lingers(m):
                alts += [dataclasses.replace(a, phases=None) for a in graceful(i, m)]
            if k == "nested":  # its children may raise on the wake before the cut
                alts.append(nested_partly_failed(i, m))
        elif g == "zero":
            alts = cut(i, m, "cancelled")
        elif maybe_blocked(m):
            alts = graceful(i, m) + cut(i, m, "cancelled")
        elif timeline[i].cut:
            v = timeline[i]
            # it got its stop, then its grace ran out: its wake has run (a nested scope's
            # children raised), which graceful() says for the kinds that linger
            lingered = v.signal_at < v.deadline and lingers(m)
            alts = graceful(i, m) if lingered else cut(i, m, "cancelled")
            if not exact and not timeline[i].robust:
                alts += graceful(i, m)
        else:
            alts = graceful(i, m)
            if not exact and not timeline[i].robust and not lingers(m):
                # the loop stalled past the grace; a member that returns at the moment
                # it is cancelled (trio: its nursery saw no Cancelled) reads as one that
                # swallowed the cancellation
                alts += [*cut(i, m, "cancelled"), alt(Outcome.CANCELLED, "after-cancel")]
                # one that raises on its wake may do so once the grace is over
                alts += [
                    dataclasses.replace(a, phases=None)
                    for a in graceful(i, m)
                    if a.outcome is Outcome.FAILED
                ]
                if k == "nested":
                    alts.append(nested_partly_failed(i, m))
            elif not exact and not timeline[i].robust and k == "nested":
                # its children that raise on the wake may be cut before they run
                alts += [*cut(i, m, "cancelled"), nested_partly_failed(i, m)]
        laggard = LAGGARD_DELAY / unit(plan, virtual)
        if virtual and (
            timeline[i].overrun >= laggard
            or (m.kind == "shield_ignore" and DELAYS[m.delay] >= laggard)
        ):
            # a shielded cleanup still running when the scope reports laggards, one
            # second after the cancellation: phase "after-cancel" then
            alts.append(alt(Outcome.CANCELLED, "after-cancel"))
        expect[name] = alts + _tolerated(plan, i, m, alts, tolerate)

    reason: object
    trigger_at = next(
        (i for i, m in enumerate(plan.members) if m.kind in TRIGGERS),
        None,
    )
    body_tags: frozenset[str] = frozenset()
    if src in ("member", "member_base", "start_raise", FOREIGN):
        reason = ("tag", tag(trigger_at))  # type: ignore[arg-type]
    elif src in ("body_raise", "body_base"):
        reason = ("tag", "body")
        body_tags = frozenset({"body"})
    else:
        reason = {
            "stop": "by-stop",
            "drain_outer": "by-stop",
            "parent": "by-parent",
            "thread": "by-thread",
            "signal": "by-signal",
            "body_end": StopReason.BODY_EXITED,
            "outer": StopReason.CANCELLED,
            "none": None,
        }[src]
    return Expect(
        members=expect,
        reason=reason,
        body_tags=body_tags,
        bare_ok=src in BASE_SOURCES,
        late=frozenset(n for n, m in zip(names, plan.members, strict=True) if m.late),
        hard_outside=src in ("outer", "drain_outer"),
        grace_value=grace_value(plan, virtual),
    )


# ---------------------------------------------------------------------------- runner


class _Logs(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.messages.append(record.getMessage())


@dataclass
class Snapshot:
    reason: object
    requested_at: float | None
    tasks: list[tuple[str, Outcome, str, float | None, int]]


def snapshot(scope: TaskScope) -> Snapshot:
    r = scope.report
    return Snapshot(
        r.reason,
        r.requested_at,
        [(t.name, t.outcome, t.phase, t.latency, id(t.error)) for t in r.tasks],
    )


@dataclass
class Observation:
    """What one run did."""

    errors: dict[str, BaseException] = field(default_factory=dict)
    raised: BaseException | None = None
    raised_cancel: bool = False  # what came out of the scope was the backend's cancellation
    outer_caught: bool = False
    drain_cut: bool = False  # drain_outer: the harness cancelled while the scope drained
    hung: bool = False
    start_raised: BaseException | None = None
    report: Any = None
    before: Snapshot | None = None
    after: Snapshot | None = None
    t_stop: float | None = None
    t_exit: float | None = None
    entered: Counter[str] = field(default_factory=Counter)
    finals: Counter[str] = field(default_factory=Counter)
    thread_done: dict[str, threading.Event] = field(default_factory=dict)
    stuck_threads: list[str] = field(default_factory=list)
    started_late: set[str] = field(default_factory=set)
    parent_leak: str | None = None
    task_leak: str | None = None
    live_procs: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    #: tags of CancelledErrors nobody sent: the scope reports each as a RuntimeError
    #: caused by it
    foreign: set[str] = field(default_factory=set)
    #: what base_err() raises: fuzz (FuzzBaseError) | kbi | exit
    base: str = "fuzz"
    #: the structured log records of the scopes' stops (``extra={"stopscope": ...}``)
    fields: list[dict[str, Any]] = field(default_factory=list)
    #: the spans and counter growth stopscope.otel recorded (None: not instrumented)
    spans: list[Any] | None = None
    grown: dict[Any, int] | None = None

    def err(self, tag: str) -> FuzzError:
        e = FuzzError(tag)
        self.errors[tag] = e
        return e

    def base_err(self, tag: str) -> BaseException:
        e: BaseException
        if self.base == "kbi":
            e = KeyboardInterrupt(tag)
        elif self.base == "exit":
            e = SystemExit(tag)
        else:
            e = FuzzBaseError(tag)
        self.errors[tag] = e
        return e


def _count_tasks() -> int:
    if anyio_backend_now() == "asyncio":
        return len(asyncio.all_tasks())
    import trio

    def walk(task: Any) -> int:
        return 1 + sum(walk(t) for n in task.child_nurseries for t in n.child_tasks)

    return walk(trio.lowlevel.current_root_task())


def anyio_backend_now() -> str:
    import sniffio

    return sniffio.current_async_library()


async def _park(sig: StopSignal, waiter: str) -> None:
    """Wait, as an obeying member does, until the signal is set."""
    if waiter == "wait":
        await sig.wait()
    elif waiter == "sleep":
        while not await sig.sleep(FOREVER):
            pass
    elif waiter == "every":
        async for _ in sig.every(FOREVER):
            pass
    else:
        with sig.cancel_scope():
            await anyio.sleep_forever()


async def _block(waiter: str) -> None:
    """Block, ignoring every signal, until cancelled."""
    if waiter == "event":
        await anyio.Event().wait()
    else:
        await anyio.sleep_forever()


async def _checkpoints(n: int = 3) -> None:
    for _ in range(n):
        await anyio.lowlevel.checkpoint()


_CHILD_SETUP = {
    "proc_finish": "",
    "proc_term": "",
    "proc_term_exit": "signal.signal(signal.SIGTERM, lambda *a: sys.exit({code}))\n",
    "proc_ignore": "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n",
}


def _child_code(m: Member) -> str:
    """A small Python child: it sets up its SIGTERM handling, says so on stdout, then
    exits at once (proc_finish) or sleeps until a signal ends it."""
    code = "import signal, sys, time\n" + _CHILD_SETUP[m.kind].format(code=m.after)
    code += "print('ready', flush=True)\n"
    if m.kind != "proc_finish":
        code += "time.sleep(1e6)\n"
    return code


class Runner:
    """Runs one plan and fills an :class:`Observation`."""

    def __init__(
        self, plan: Plan, grace: float | None, unit: float = SMALL_GRACE_REAL, stall: float = 0.0
    ) -> None:
        self.plan = plan
        self.grace = grace
        self.unit = unit
        #: seconds the loop is blocked once the stop was requested and every task waits
        #: (a loaded machine, on purpose: see run_plan)
        self.stall = stall
        self.obs = Observation(base=plan.base)
        self.procs: dict[int, anyio.abc.Process] = {}
        self.storm: Any = None  # the SIGALRM handler it replaced, while a storm runs
        self.go: anyio.Event | None = None  # made inside the run
        self.parent = StopSignal()  # long-lived: it must hold no hooks after the scope
        self.names = plan.names()

    # -- members ---------------------------------------------------------------

    async def _child(self, key: str, tag: str, kind: str, sig: StopSignal) -> None:
        obs = self.obs
        obs.entered[key] += 1
        try:
            if kind == "obey":
                await sig.wait()
            elif kind == "ignore":
                await anyio.sleep_forever()
            elif kind == "raise_grace":
                await sig.wait()
                raise obs.err(tag)
            else:  # raise_on_cancel
                try:
                    await anyio.sleep_forever()
                except anyio.get_cancelled_exc_class():
                    raise obs.err(tag) from None
        finally:
            obs.finals[key] += 1

    async def _body_of(self, i: int, m: Member, sig: StopSignal) -> None:
        obs = self.obs
        k = m.kind
        key = self.names[i]
        if k == "finish":
            return
        if k == "finish_late":
            await _checkpoints()
        elif k == "obey":
            await _park(sig, m.waiter)
        elif k == "obey_late":
            await _park(sig, m.waiter)
            await _checkpoints()
        elif k == "obey_slow":
            await _park(sig, m.waiter)
            await anyio.sleep_forever()
        elif k == "obey_delay":
            await _park(sig, m.waiter)
            await anyio.sleep(DELAYS[m.delay] * self.unit)
        elif k == "shield_obey":
            await _park(sig, m.waiter)
            with anyio.CancelScope(shield=True):  # a cleanup that must not be cut
                await anyio.sleep(DELAYS[m.delay] * self.unit)
            if m.after == "checkpoint":
                await anyio.lowlevel.checkpoint()
        elif k == "shield_ignore":
            try:
                await _block(m.waiter)
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.sleep(DELAYS[m.delay] * self.unit)
        elif k == "ignore":
            await _block(m.waiter)
        elif k == "raise_grace":
            await _park(sig, m.waiter)
            raise obs.err(f"m{i}")
        elif k == "raise_on_cancel":
            if m.where == "finally":
                try:
                    await _block(m.waiter)
                finally:
                    raise obs.err(f"m{i}")
            try:
                await _block(m.waiter)
            except anyio.get_cancelled_exc_class():
                raise obs.err(f"m{i}") from None
        elif k == "swallow_once":
            try:
                await _block(m.waiter)
            except anyio.get_cancelled_exc_class():
                pass
            await anyio.sleep_forever()  # the second cancellation goes through
        elif k == "swallow_always":
            try:
                await _block(m.waiter)
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True):
                    await _checkpoints()
        elif k == "nursery":
            async with anyio.create_task_group() as tg:
                for j, c in enumerate(m.children):
                    tg.start_soon(self._child, f"{key}.c{j}", f"m{i}.c{j}", c, sig)
        elif k == "nested":
            async with TaskScope(grace=None, signal=sig, name=key, stop_on_exit=False) as inner:
                for j, c in enumerate(m.children):
                    inner.start_soon(self._child, f"{key}.c{j}", f"m{i}.c{j}", c, inner.signal)
        elif k == "trigger":
            assert self.go is not None
            await self.go.wait()
            raise obs.err(f"m{i}")
        elif k == "trigger_foreign":
            assert self.go is not None
            await self.go.wait()
            if anyio_backend_now() != "asyncio":
                raise obs.err(f"m{i}")
            other = asyncio.get_running_loop().create_task(asyncio.sleep(FOREVER))
            await asyncio.sleep(0)
            other.cancel()
            try:
                await other  # a CancelledError nobody sent to this member
            except asyncio.CancelledError as exc:
                obs.errors[f"m{i}"] = exc
                obs.foreign.add(f"m{i}")
                raise
        elif k == "trigger_base":
            assert self.go is not None
            await self.go.wait()
            raise obs.base_err(f"m{i}")
        else:
            raise AssertionError(k)

    def _task_member(self, i: int, m: Member) -> Callable[..., Awaitable[None]]:
        key = self.names[i]
        obs = self.obs

        async def member(sig: StopSignal, *, task_status: Any = None) -> None:
            obs.entered[key] += 1
            try:
                if m.spawn == "start_early":
                    task_status.started()
                elif m.spawn == "start_late":
                    await anyio.lowlevel.checkpoint()
                    task_status.started()
                await self._body_of(i, m, sig)
            finally:
                obs.finals[key] += 1

        return member

    def _thread_member(self, i: int, m: Member) -> Callable[[StopSignal], None]:
        key = self.names[i]
        obs = self.obs

        def member(sig: StopSignal) -> None:
            obs.entered[key] += 1
            done = obs.thread_done[key] = threading.Event()
            try:
                if m.kind == "thread_obey":
                    sig.wait_blocking()
                else:
                    obs.release.wait()
            finally:
                obs.finals[key] += 1
                done.set()

        return member

    async def _launch(self, scope: TaskScope, i: int, m: Member, sig: StopSignal) -> None:
        name = self.names[i]
        grace = None if m.grace == "scope" else MEMBER_GRACE[m.grace] * self.unit
        if m.kind.startswith("thread"):
            scope.start_thread(self._thread_member(i, m), name=name, grace=grace)
        elif m.kind in PROCESSES:
            self.procs[i] = await scope.start_process(
                [sys.executable, "-I", "-S", "-c", _child_code(m)],
                name=name,
                grace=grace,
                stdout=subprocess.PIPE,
            )
        elif m.spawn == "soon":
            scope.start_soon(self._task_member(i, m), sig, name=name, grace=grace)
        else:
            await scope.start(self._task_member(i, m), sig, name=name, grace=grace)

    async def _processes_ready(self, scope: TaskScope) -> None:
        """Wait until every child has set up its SIGTERM handling (it says so), and until
        those that exit by themselves have been seen to exit."""
        for i, proc in self.procs.items():
            assert proc.stdout is not None
            got = b""
            with anyio.fail_after(HANG_GUARD):
                while not got.endswith(b"\n"):
                    got += await proc.stdout.receive()
                if self.plan.members[i].kind == "proc_finish":
                    record = scope.report.by_name(self.names[i])
                    while record.outcome is Outcome.RUNNING:
                        await anyio.sleep(0.005)

    def _start_storm(self, scope: TaskScope) -> None:
        """SIGALRM every STORM_INTERVAL on this (the loop's) thread; from the
        `storm_at`-th on, the handler stops the scope; the storm ends by itself."""
        fired = 0
        storm_at = self.plan.storm_at

        def handler(signum: int, frame: Any) -> None:
            nonlocal fired
            fired += 1
            if fired >= storm_at:
                scope.stop("by-signal")
            if fired >= STORM_MAX:
                _os_signal.setitimer(_os_signal.ITIMER_REAL, 0.0, 0.0)

        self.storm = _os_signal.signal(_os_signal.SIGALRM, handler)
        _os_signal.setitimer(_os_signal.ITIMER_REAL, STORM_INTERVAL, STORM_INTERVAL)

    def _end_storm(self) -> None:
        if self.storm is not None:
            _os_signal.setitimer(_os_signal.ITIMER_REAL, 0.0, 0.0)
            _os_signal.signal(_os_signal.SIGALRM, self.storm)
            self.storm = None

    def _sync_wrapper(self, i: int) -> Callable[..., Any]:
        obs = self.obs

        def wrapper(*, task_status: anyio.abc.TaskStatus[None]) -> Any:
            task_status.started()
            raise obs.err(f"m{i}")

        return wrapper

    # -- the scope ---------------------------------------------------------------

    async def _body(
        self, scope: TaskScope, outer: anyio.CancelScope, drain_go: anyio.Event
    ) -> None:
        plan, obs = self.plan, self.obs
        signals = [scope.signal]
        for stage in range(3 if plan.stages else 1):
            if stage:
                signals.append(scope.stage(f"stage {stage}"))
            for i, m in enumerate(plan.members):
                if m.stage == stage and not m.late and m.kind != "start_raise":
                    await self._launch(scope, i, m, signals[stage])
        await self._processes_ready(scope)
        await anyio.wait_all_tasks_blocked()
        obs.t_stop = anyio.current_time()
        src = plan.source
        thread: threading.Thread | None = None
        if src == "stop":
            scope.stop("by-stop")
            if self.stall:
                with anyio.CancelScope(shield=True):
                    await anyio.wait_all_tasks_blocked()  # the members' sleeps are armed
                time.sleep(self.stall)  # noqa: ASYNC251 - the stall is the point
        elif src == "signal":
            self._start_storm(scope)
        elif src in ("member", "member_base", FOREIGN):
            assert self.go is not None
            self.go.set()
        elif src == "parent":
            self.parent.set("by-parent")
        elif src == "thread":
            thread = threading.Thread(target=scope.stop, args=("by-thread",))
            thread.start()
        elif src == "start_raise":
            i = next(i for i, m in enumerate(plan.members) if m.kind == "start_raise")
            try:
                await scope.start(self._sync_wrapper(i), name=self.names[i])
            except BaseException as exc:
                obs.start_raised = exc
        elif src == "body_raise":
            raise obs.err("body")
        elif src == "body_base":
            raise obs.base_err("body")
        elif src == "outer":
            outer.cancel()
            await anyio.sleep_forever()
        elif src == "drain_outer":
            scope.stop("by-stop")
            drain_go.set()
            return
        if src in BODY_GOES_ON or src == "member_base":
            try:
                await scope.signal.wait()
                for i, m in enumerate(plan.members):
                    if m.late:
                        obs.started_late.add(self.names[i])
                        await self._launch(scope, i, m, scope.signal)
            finally:
                if thread is not None:
                    thread.join()

    def _will_stop(self) -> list[str]:
        """The task members that end by themselves during the drain (drain_outer)."""
        plan = self.plan

        def held_back(m: Member) -> bool:  # a later stage never ends by itself
            return (
                plan.stages
                and m.stage > 0
                and any(lingers(o) and o.stage > m.stage for o in plan.members)
            )

        return [
            name
            for name, m in zip(self.names, plan.members, strict=True)
            if not lingers(m) and not held_back(m) and not m.kind.startswith("thread")
        ]

    async def _cancel_in_drain(self, outer: anyio.CancelScope, drain_go: anyio.Event) -> None:
        await drain_go.wait()
        # wait_all_tasks_blocked() alone may see a task blocked on a wake that is only
        # scheduled: wait for the members that stop by themselves to be gone
        waiting = self._will_stop()
        while not all(self.obs.finals[name] for name in waiting):
            await anyio.wait_all_tasks_blocked()
            await anyio.lowlevel.checkpoint()
        await anyio.wait_all_tasks_blocked()
        if self.obs.t_exit is None:  # something still runs: cut the drain short
            self.obs.drain_cut = True
            outer.cancel()

    async def run(self) -> None:
        plan, obs = self.plan, self.obs
        self.go = anyio.Event()
        # warm up the per-loop timer service, so it is not counted as a leak
        await StopSignal().sleep(0.0)
        await StopSignal().sleep(1e-9)
        baseline = _count_tasks()
        parent = self.parent
        handler = _Logs()
        logger = logging.getLogger("stopscope")
        logger.addHandler(handler)
        cancelled = anyio.get_cancelled_exc_class()
        scope: TaskScope | None = None
        try:
            async with anyio.create_task_group() as harness:
                drain_go = anyio.Event()
                try:
                    with anyio.fail_after(HANG_GUARD):
                        with anyio.CancelScope() as outer:
                            if plan.source == "drain_outer":
                                harness.start_soon(self._cancel_in_drain, outer, drain_go)
                            try:
                                scope = TaskScope(
                                    grace=self.grace,
                                    signal=parent,
                                    name="fuzz",
                                    stop_on_exit=plan.stop_on_exit,
                                )
                                async with scope:
                                    await self._body(scope, outer, drain_go)
                            except cancelled:
                                obs.raised_cancel = True
                                obs.t_exit = anyio.current_time()
                                raise
                            except BaseException as exc:  # what the scope raised
                                obs.raised = exc
                            obs.t_exit = anyio.current_time()
                        obs.outer_caught = outer.cancelled_caught
                except TimeoutError:
                    obs.hung = True
                drain_go.set()
        finally:
            self._end_storm()
            logger.removeHandler(handler)
            obs.logs = handler.messages
            # nothing runs on after the scope: every child has exited and been reaped
            obs.live_procs = [self.names[i] for i, p in self.procs.items() if p.returncode is None]
            with anyio.CancelScope(shield=True):
                for proc in self.procs.values():
                    await proc.aclose()  # reaped by the member; close its pipe
        if scope is None:
            return
        # no hooks left on the long-lived parent
        hooks = parent._hooks
        if hooks:
            obs.parent_leak = f"parent._hooks holds {list(hooks)!r}"
        for ref in parent._kids or ():
            kid = ref()
            if kid is not None and kid._hooks:
                obs.parent_leak = f"a live child of parent holds hooks {list(kid._hooks)!r}"
        # the report is frozen
        obs.before = snapshot(scope)
        obs.report = scope.report
        parent.set("late-parent")
        await anyio.lowlevel.checkpoint()
        obs.after = snapshot(scope)
        # abandoned threads may go now; wait for them
        obs.release.set()
        for key, done in obs.thread_done.items():
            if not done.wait(10.0):  # worker threads are pooled: wait for the function
                obs.stuck_threads.append(key)
        await _checkpoints(5)
        left = _count_tasks()
        if left != baseline:
            obs.task_leak = f"{left - baseline} task(s) alive after the scope exited"


def backend_options(backend: tuple[str, dict[str, Any]], plan: Plan) -> tuple[dict[str, Any], bool]:
    """The options for one run, and whether it runs in virtual time."""
    name, options = backend
    options = dict(options)
    if name == "trio" and not real_time(plan):
        import trio.testing

        options["clock"] = trio.testing.MockClock(autojump_threshold=0)
        return options, True
    return options, False


def run_plan(
    plan: Plan,
    backend: tuple[str, dict[str, Any]],
    tolerate: frozenset[str] = KNOWN_DEFECTS,
    telemetry: Telemetry | None = None,
    stall: float = 0.0,
) -> tuple[Observation, Expect]:
    """Run ``plan``; with ``telemetry`` (active), also take what stopscope.otel recorded.

    :param stall: a plan whose source is ``stop`` and that runs in real time: block the
        loop for this many small graces once the stop was requested and every task
        waits, as a loaded machine does now and then (the model must allow what comes)
    """
    options, virtual = backend_options(backend, plan)
    exact = virtual
    if stall and (virtual or plan.source != "stop"):
        raise ValueError("stall: only for a plan stopped by stop() in real time")
    runner = Runner(
        plan, grace_value(plan, virtual), unit(plan, virtual), stall * unit(plan, virtual)
    )
    with structured_records() as records:
        anyio.run(runner.run, backend=backend[0], backend_options=options)
    runner.obs.fields = records.fields
    if telemetry is not None:
        runner.obs.spans, runner.obs.grown = telemetry.take()
    return runner.obs, predict(plan, exact, virtual, tolerate)


# ---------------------------------------------------------------------------- checker


def leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for inner in exc.exceptions:
            out.extend(leaves(inner))
        return out
    return [exc]


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "None"
    if isinstance(exc, BaseExceptionGroup):
        return f"{type(exc).__name__}[{', '.join(_describe(e) for e in exc.exceptions)}]"
    return f"{type(exc).__name__}({exc})"


def check(plan: Plan, obs: Observation, exp: Expect) -> list[str]:
    """The differences between the model and the run, and broken invariants."""
    problems: list[str] = []
    if obs.hung:
        problems.append(f"hang: the scope did not exit within {HANG_GUARD}s (loop clock)")
        return problems
    if obs.report is None:
        return [*problems, "no report"]
    by_tag = obs.errors
    tag_of = {id(e): t for t, e in by_tag.items()}

    def tag_of_leaf(e: BaseException) -> str:
        if isinstance(e, RuntimeError) and id(e.__cause__) in tag_of:
            cause_tag = tag_of[id(e.__cause__)]
            if cause_tag in obs.foreign:
                return cause_tag
        if id(e) in tag_of and tag_of[id(e)] in obs.foreign:
            return f"<bare {_describe(e)}: a RuntimeError caused by it was due>"
        # an error the plan did not raise (a process's CalledProcessError): known by
        # identity, so that two alike ones are not taken for one raised twice
        return tag_of.get(id(e), f"<{_describe(e)} at {id(e):#x}>")

    def tags_of(exc: BaseException | None) -> list[str]:
        if exc is None:
            return []
        return [tag_of_leaf(e) for e in leaves(exc)]

    # members
    records = {r.name: r for r in obs.report.tasks}
    names = plan.names()
    expected_names = [n for n in names if n not in exp.late or n in obs.started_late]
    if exp.late - obs.started_late and plan.grace != "small":
        problems.append(f"late members never started: {sorted(exp.late - obs.started_late)}")
    got_names = [r.name for r in obs.report.tasks]
    if sorted(got_names) != sorted(expected_names):
        problems.append(f"report members {got_names} != started {expected_names}")
    member_tags: list[str] = []
    for name in expected_names:
        rec = records.get(name)
        if rec is None:
            continue
        got_tags = tags_of(rec.error)
        ok = False
        for a in exp.members[name]:
            if rec.outcome is not a.outcome:
                continue
            if a.phases is not None and rec.phase not in a.phases:
                continue
            if a.error_type is not None:
                if not isinstance(rec.error, a.error_type):
                    continue
            elif a.outcome is Outcome.FAILED and not (
                a.tags <= set(got_tags) <= a.tags | a.optional
                and len(got_tags) == len(set(got_tags))
                and got_tags
            ):
                continue
            if a.no_latency and rec.latency is not None:
                continue
            ok = True
            break
        if not ok:
            want = " or ".join(
                f"{a.outcome.name}/{'any' if a.phases is None else '|'.join(sorted(a.phases))}"
                + (f" errors {sorted(a.tags)}" if a.tags else "")
                for a in exp.members[name]
            )
            problems.append(
                f"{name}: got {rec.outcome.name}/{rec.phase} error={_describe(rec.error)} "
                f"latency={rec.latency}; model: {want}"
            )
        if rec.outcome is Outcome.FAILED:
            member_tags += got_tags
        if rec.outcome is Outcome.FINISHED and rec.latency is not None:
            problems.append(f"{name}: FINISHED with latency {rec.latency}")
        if rec.outcome in (Outcome.STOPPED, Outcome.CANCELLED) and rec.latency is None:
            problems.append(f"{name}: {rec.outcome.name} without a latency")
        if rec.outcome is Outcome.RUNNING:
            problems.append(f"{name}: still RUNNING after exit")

    # errors out of the `async with`: each exactly once, nothing else
    raised = obs.raised
    got = tags_of(raised)
    due = sorted(member_tags + sorted(exp.body_tags))
    if sorted(got) != due:
        problems.append(
            f"raised {_describe(raised)} (leaves {sorted(got)}); the records' errors and the "
            f"body's say {due}"
        )
    dup = [t for t, n in Counter(got).items() if n > 1]
    if dup:
        problems.append(f"errors raised more than once: {dup}")
    if raised is not None and got:
        base = [e for e in leaves(raised) if not isinstance(e, Exception)]
        if raised is by_tag.get("body") and len(got) == 1:
            pass  # the body's BaseException alone: raised bare
        elif len(got) == 1 and exp.bare_ok and not isinstance(raised, BaseExceptionGroup):
            pass
        elif base and not isinstance(raised, BaseExceptionGroup):
            problems.append(f"raised {_describe(raised)}: a BaseExceptionGroup was due")
        elif not base and not isinstance(raised, ExceptionGroup):
            problems.append(f"raised {_describe(raised)}: an ExceptionGroup was due")
    if exp.hard_outside:
        if not due and not obs.raised_cancel and raised is None and plan.source == "outer":
            problems.append("outer cancel: the cancellation did not propagate out of the scope")
        # on trio a member that swallows the cut and returns leaves the host task with
        # nothing to raise (anyio's own task group does the same): then nothing is caught
        swallowed = any(m.kind == "swallow_always" for m in plan.members)
        cut_short = plan.source == "outer" or (obs.drain_cut and not swallowed)
        if not due and cut_short and not obs.outer_caught:
            problems.append("outer cancel: the outer cancel scope did not catch its cancellation")
    elif obs.raised_cancel:
        problems.append("a cancellation came out of the scope, nobody cancelled it from outside")
    if obs.start_raised is not None:
        problems.append(
            f"scope.start() raised {_describe(obs.start_raised)} after the member had started"
        )

    # the reason
    reason = obs.report.reason
    want_reason = exp.reason
    if isinstance(want_reason, tuple) and want_reason[0] == "tag":
        ok_reason = reason is by_tag.get(want_reason[1]) or (
            want_reason[1] in obs.foreign
            and isinstance(reason, BaseException)
            and tag_of_leaf(reason) == want_reason[1]
        )
        shown = f"the error {want_reason[1]}"
    else:
        ok_reason = reason == want_reason
        shown = repr(want_reason)
    if not ok_reason:
        problems.append(f"report.reason {reason!r}; model: {shown}")
    if (reason is None) != (obs.report.requested_at is None):
        problems.append(f"report.reason {reason!r} but requested_at {obs.report.requested_at!r}")

    # exit within the bound (loop clock, generous slack)
    if plan.source != "none" and obs.t_exit is not None and obs.t_stop is not None:
        bound = (exp.grace_value or 0.0) + EXIT_SLACK
        if obs.t_exit - obs.t_stop > bound:
            problems.append(f"exit {obs.t_exit - obs.t_stop:.3f}s after the stop; bound {bound}s")

    # logs
    grace_msg = "did not stop within its grace period"
    catch_msg = "did it catch the cancellation?"
    if exp.hard_outside and any(grace_msg in m for m in obs.logs):
        problems.append(f"cancelled from outside but logged {grace_msg!r}")
    cut_off = [
        r
        for r in obs.report.tasks
        if r.outcome is Outcome.CANCELLED and r.phase == "cancelled-from-outside"
    ]
    if exp.hard_outside and cut_off and not any("cancelled from outside" in m for m in obs.logs):
        problems.append(
            "members were cut off from outside; nothing logged 'cancelled from outside'"
        )
    swallowers = any(m.kind == "swallow_always" for m in plan.members)
    if plan.grace == "zero" and not swallowers and any(catch_msg in m for m in obs.logs):
        problems.append(f"grace=0 and no member swallows cancellation, yet logged {catch_msg!r}")

    # invariants: every finally ran once; nothing leaked; the report is frozen
    for key, n in obs.entered.items():
        if n != 1 or obs.finals[key] != 1:
            problems.append(f"{key}: entered {n} time(s), finally ran {obs.finals[key]} time(s)")
    if obs.stuck_threads:
        problems.append(f"threads still alive after release: {obs.stuck_threads}")
    if obs.parent_leak:
        problems.append(obs.parent_leak)
    if obs.task_leak:
        problems.append(obs.task_leak)
    if obs.live_procs:
        problems.append(f"processes not reaped when the scope exited: {obs.live_procs}")
    if obs.before != obs.after:
        problems.append(f"the report changed after exit: {obs.before} -> {obs.after}")
    # the observers (structured log record, OpenTelemetry) tell the report's story
    problems += disagreements(obs.report, "fuzz", obs.fields, obs.spans, obs.grown)
    return problems


def run_and_check(
    plan: Plan, backend: tuple[str, dict[str, Any]], telemetry: Telemetry | None = None
) -> None:
    obs, exp = run_plan(plan, backend, telemetry=telemetry)
    problems = check(plan, obs, exp)
    if problems:
        lines = "\n  ".join(problems)
        raise AssertionError(f"{plan!r} on {backend[0]} {backend[1]}:\n  {lines}")


# ---------------------------------------------------------------------------- survey


def survey(backend: str, examples: int, special: str = "") -> int:
    """Run ``examples`` generated plans without stopping at the first failure; print each
    kind of difference once, with how often it came and its smallest plan.

    ``python tests/fuzz_model.py trio 10000`` (backends: asyncio, asyncio+uvloop, trio);
    a third argument, ``signal`` or ``process``, draws the plans of those profiles.
    """
    import re

    from hypothesis import HealthCheck, Phase, given, settings

    backends = {
        "asyncio": ("asyncio", {"debug": True}),
        "asyncio+uvloop": ("asyncio", {"use_uvloop": True}),
        "trio": ("trio", {}),
    }
    seen: dict[str, list[Plan]] = {}
    runs = [0]

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(plans(special))
    def one(plan: Plan) -> None:
        runs[0] += 1
        try:
            obs, exp = run_plan(plan, backends[backend], frozenset(), telemetry)
            problems = check(plan, obs, exp)
        except Exception as exc:  # a crash of the harness is a finding too
            problems = [f"crash: {_describe(exc)}"]
        for problem in problems:
            key = re.sub(r"m\d+(\.c\d+)?", "mX", problem)
            key = re.sub(r"latency=\S+", "latency=L", re.sub(r"\d+\.\d+s", "Ns", key))
            key = re.sub(r" at 0x[0-9a-f]+>", ">", key)
            seen.setdefault(key, []).append(plan)

    started = time.perf_counter()
    with Telemetry().active() as telemetry:
        one()
    print(f"{backend}: {runs[0]} examples in {time.perf_counter() - started:.1f}s")
    for key, found in sorted(seen.items(), key=lambda kv: -len(kv[1])):
        smallest = min(found, key=lambda p: (len(p.members), len(repr(p))))
        print(f"[{len(found)}] {key}\n    smallest: {smallest!r}")
    return 1 if seen else 0


if __name__ == "__main__":
    raise SystemExit(survey(sys.argv[1], int(sys.argv[2]), *sys.argv[3:4]))
