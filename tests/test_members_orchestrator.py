"""Process members for orchestrators: process groups (the default), die_with_parent, Ctrl-C.

Real processes only: a shell leads a group with a grandchild, the test reads the
grandchild's pid from the shell's stdout and checks, through ``/proc``, that nothing
of the group survives.  ``die_with_parent`` is checked by SIGKILLing a real parent
service.  Timeouts only guard against hangs.
"""

from __future__ import annotations

import itertools
import os
import re
import resource
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import suppress
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process
from trio.testing import MockClock

from stopscope import Outcome, TaskScope, _members

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)"),
]

HANG_GUARD = 30.0
#: long enough for a shell to act on SIGTERM; only the cancellation tests rely on expiry
LONG_GRACE = 20.0
SHORT_GRACE = 0.3

#: a group: the shell prints its background child's pid, then waits for it
SHELL_WITH_GRANDCHILD = "sleep 1000 & echo $!; wait"
#: the same, but the shell and the grandchild both ignore SIGTERM
STUBBORN_GROUP = "trap '' TERM; sleep 1000 & echo $!; wait; wait"
#: the leader leaves a grandchild behind and exits at once
LEADER_LEAVES = "sleep 1000 & echo $!"


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (zombies are dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat.rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")


async def gone(pid: int) -> None:
    """Wait (bounded by the caller's fail_after) until ``pid`` has exited."""
    while alive(pid):
        await anyio.sleep(0.01)


async def read_pid(process: Process) -> int:
    assert process.stdout is not None
    data = b""
    while not data.endswith(b"\n"):
        data += await process.stdout.receive()
    await process.stdout.aclose()
    return int(data)


class TestProcessGroup:
    async def test_the_stop_reaches_a_grandchild(self) -> None:
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=LONG_GRACE) as scope:
                process = await scope.start_process(
                    SHELL_WITH_GRANDCHILD,
                    name="group",
                    process_group=True,
                    stdout=subprocess.PIPE,
                )
                grandchild = await read_pid(process)
                assert os.getpgid(grandchild) == process.pid  # its own group
                assert os.getpgid(process.pid) != os.getpgid(0)
            await process.aclose()
        assert not alive(grandchild)
        record = scope.report.by_name("group")
        assert record.outcome is Outcome.STOPPED
        assert record.exit_code == -signal.SIGTERM

    async def test_the_child_leads_a_group_by_default(self) -> None:
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=LONG_GRACE) as scope:
                process = await scope.start_process(
                    SHELL_WITH_GRANDCHILD, name="group", stdout=subprocess.PIPE
                )
                grandchild = await read_pid(process)
                assert os.getpgid(process.pid) == os.getsid(process.pid) == process.pid
            await process.aclose()
        assert not alive(grandchild)
        assert scope.report.by_name("group").outcome is Outcome.STOPPED

    async def test_without_a_group_the_grandchild_survives(self) -> None:
        """What process_group is for: without it, the stop signals the child only."""
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=LONG_GRACE) as scope:
                process = await scope.start_process(
                    SHELL_WITH_GRANDCHILD, name="lone", process_group=False, stdout=subprocess.PIPE
                )
                assert os.getpgid(process.pid) == os.getpgid(0)
                grandchild = await read_pid(process)
            await process.aclose()
            try:
                assert alive(grandchild)
            finally:
                os.kill(grandchild, signal.SIGKILL)
        assert scope.report.by_name("lone").outcome is Outcome.STOPPED

    async def test_a_group_that_ignores_sigterm_is_killed_whole_after_grace(self) -> None:
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=SHORT_GRACE) as scope:
                process = await scope.start_process(
                    STUBBORN_GROUP, name="stubborn", process_group=True, stdout=subprocess.PIPE
                )
                grandchild = await read_pid(process)
            await process.aclose()
            await gone(grandchild)  # SIGKILL went to the group: it is reaped by init
        record = scope.report.by_name("stubborn")
        assert record.outcome is Outcome.CANCELLED
        assert record.exit_code == -signal.SIGKILL

    async def test_the_member_lasts_as_long_as_its_group(self) -> None:
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=LONG_GRACE) as scope:
                process = await scope.start_process(
                    LEADER_LEAVES, name="leaves", process_group=True, stdout=subprocess.PIPE
                )
                grandchild = await read_pid(process)
                await process.wait()
                assert process.returncode == 0
                await anyio.wait_all_tasks_blocked()
                assert scope.report.by_name("leaves").outcome is Outcome.RUNNING
                assert alive(grandchild)
            await process.aclose()
        assert not alive(grandchild)
        assert scope.report.by_name("leaves").outcome is Outcome.STOPPED

    @pytest.mark.parametrize(
        "anyio_backend",
        [pytest.param(("trio", {"clock": MockClock(autojump_threshold=0)}), id="trio-virtual")],
    )
    async def test_a_group_left_behind_is_polled_less_and_less_often(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A leader that exits 0 may leave its group running for long: the member
        polls it at growing intervals, up to a cap, not every 20 ms for ever."""
        polls: list[float] = []

        def group_alive(pgid: int) -> bool:
            polls.append(anyio.current_time())
            return len(polls) < 20

        monkeypatch.setattr(_members, "_group_alive", group_alive)
        await _members._group_gone(12345)  # virtual time: the clock jumps
        gaps = [round(later - earlier, 9) for earlier, later in itertools.pairwise(polls)]
        assert gaps[0] == pytest.approx(_members._GROUP_POLL)
        assert gaps == sorted(gaps)
        assert gaps[-1] == pytest.approx(_members._GROUP_POLL_MAX)

    async def test_a_failed_leader_takes_its_group_down(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        with anyio.fail_after(HANG_GUARD):
            with pytest.RaisesGroup(subprocess.CalledProcessError):
                async with TaskScope(grace=LONG_GRACE) as scope:
                    process = await scope.start_process(
                        "sleep 1000 & echo $!; read line; exit 3",
                        name="fails",
                        process_group=True,
                        stdout=subprocess.PIPE,
                        stdin=subprocess.PIPE,
                    )
                    grandchild = await read_pid(process)
                    assert process.stdin is not None
                    await process.stdin.send(b"go\n")
                    await process.stdin.aclose()
                    await scope.signal.wait()
            await process.aclose()
            await gone(grandchild)
        assert scope.report.by_name("fails").outcome is Outcome.FAILED
        assert "killing what is left of its group" in caplog.text

    async def test_bad_options(self) -> None:
        async with TaskScope() as scope:
            with pytest.raises(TypeError, match="`process_group`"):
                await scope.start_process(["true"], process_group=1)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="`die_with_parent`"):
                await scope.start_process(["true"], die_with_parent="yes")  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="start_new_session"):
                await scope.start_process(["true"], process_group=True, start_new_session=False)
            with pytest.raises(ValueError, match="process_group=False"):
                await scope.start_process(["true"], start_new_session=False)
        assert scope.report.tasks == ()

    async def test_without_a_group_the_session_is_the_callers_to_choose(self) -> None:
        async with TaskScope(grace=LONG_GRACE, stop_on_exit=False) as scope:
            for new_session in (False, True):
                process = await scope.start_process(
                    ["true"], process_group=False, start_new_session=new_session
                )
                await process.wait()
        assert [record.outcome for record in scope.report.tasks] == [Outcome.FINISHED] * 2


# -------------------------------------------------------------- die with the parent

#: a service whose process member is `sleep`; prints the member's pid, then waits
PARENT = textwrap.dedent(
    """
    import sys
    import anyio
    from stopscope import TaskScope

    async def main() -> None:
        async with TaskScope(grace=5) as scope:
            process = await scope.start_process(
                ["sleep", "1000"], name="sleep", die_with_parent=True,
                process_group=sys.argv[2] == "group",
            )
            print(process.pid, flush=True)
            await anyio.sleep_forever()

    backend = sys.argv[1]
    options = {"use_uvloop": True} if backend == "uvloop" else {}
    anyio.run(main, backend="trio" if backend == "trio" else "asyncio", backend_options=options)
    """
)


#: how many descriptors MANY_FDS_FIRST opens before PARENT runs
MANY_FDS = 1100
#: raises the limit of open files, then opens MANY_FDS descriptors
MANY_FDS_FIRST = textwrap.dedent(
    f"""
    import os, resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    wanted = 2 * {MANY_FDS}
    limit = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range({MANY_FDS})]
    """
)


class TestDieWithParent:
    @pytest.mark.parametrize("backend", ["asyncio", "uvloop", "trio"])
    @pytest.mark.parametrize("group", ["group", "alone"])
    def test_the_member_dies_when_its_parent_is_killed(self, backend: str, group: str) -> None:
        parent = subprocess.Popen(
            [sys.executable, "-c", PARENT, backend, group],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert parent.stdout is not None
            line = parent.stdout.readline()
            assert line, parent.communicate(timeout=HANG_GUARD)[1].decode()
            child = int(line)
            wait_exec(child, b"sleep")
            parent.kill()  # SIGKILL: no cleanup of ours runs
            parent.wait(HANG_GUARD)
            anyio.run(_bounded_gone, child)
        finally:
            if parent.poll() is None:
                parent.kill()
            parent.communicate(timeout=HANG_GUARD)

    @pytest.mark.parametrize("backend", ["asyncio", "trio"])
    def test_the_guard_watches_a_pipe_above_fd_1024(self, backend: str) -> None:
        """A busy server has many descriptors open: the pipe the guard watches may be
        numbered above select()'s FD_SETSIZE (1024)."""
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        if hard != resource.RLIM_INFINITY and hard < 2 * MANY_FDS:
            pytest.skip(f"the hard limit of open files is {hard}")
        parent = subprocess.Popen(
            [sys.executable, "-c", MANY_FDS_FIRST + PARENT, backend, "alone"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        child = None
        try:
            assert parent.stdout is not None
            line = parent.stdout.readline()
            assert line, parent.communicate(timeout=HANG_GUARD)[1].decode()
            child = int(line)
            wait_exec(child, b"sleep")
            pipes = [
                int(fd)
                for fd in os.listdir(f"/proc/{parent.pid}/fd")
                if os.readlink(f"/proc/{parent.pid}/fd/{fd}").startswith("pipe:")
            ]
            assert max(pipes) > MANY_FDS  # the watched pipe is up there
            parent.kill()
            parent.wait(HANG_GUARD)
            anyio.run(_bounded_gone, child)
        finally:
            if parent.poll() is None:
                parent.kill()
            if child is not None and alive(child):
                os.kill(child, signal.SIGKILL)
            parent.communicate(timeout=HANG_GUARD)

    @pytest.mark.parametrize("group", [True, False], ids=["group", "alone"])
    async def test_a_guarded_member_stops_as_usual(self, group: bool) -> None:
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=LONG_GRACE) as scope:
                process = await scope.start_process(
                    ["sh", "-c", "echo $$; exec sleep 1000"],
                    name="guarded",
                    die_with_parent=True,
                    process_group=group,
                    stdout=subprocess.PIPE,
                )
                assert await read_pid(process) == process.pid  # the launcher exec'd
                (guard,) = children_of(process.pid)
            await process.aclose()
            await gone(guard)  # the command is gone: so is its guard
        record = scope.report.by_name("guarded")
        assert record.outcome is Outcome.STOPPED
        assert record.exit_code == -signal.SIGTERM

    async def test_exit_status_and_shell_strings_pass_through(self) -> None:
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=LONG_GRACE, stop_on_exit=False) as scope:
                process = await scope.start_process(
                    "echo piped | cat", name="shell", die_with_parent=True, stdout=subprocess.PIPE
                )
                assert process.stdout is not None
                out = b""
                async for chunk in process.stdout:
                    out += chunk
            await process.aclose()
        assert out == b"piped\n"
        assert scope.report.by_name("shell").outcome is Outcome.FINISHED

    async def test_sigpipe_is_not_ignored_in_the_command(self) -> None:
        status = await self._signal_status(die_with_parent=True)
        assert not int(status[b"SigIgn:"], 16) & (1 << (signal.SIGPIPE - 1))

    @pytest.mark.parametrize("group", [True, False], ids=["group", "alone"])
    async def test_the_command_gets_the_signal_state_an_unguarded_one_gets(
        self, group: bool
    ) -> None:
        """The launcher blocks the stop signals around the guard's fork: the command
        must not inherit that mask, nor the guard's ignored signals."""
        guarded = await self._signal_status(die_with_parent=True, process_group=group)
        plain = await self._signal_status(die_with_parent=False, process_group=group)
        assert guarded == plain

    @staticmethod
    async def _signal_status(**options: bool) -> dict[bytes, bytes]:
        """The command's blocked, ignored and caught signals, from /proc."""
        with anyio.fail_after(HANG_GUARD):
            async with TaskScope(grace=LONG_GRACE, stop_on_exit=False) as scope:
                process = await scope.start_process(
                    ["sh", "-c", "exec grep -E '^Sig(Blk|Ign|Cgt):' /proc/self/status"],
                    stdout=subprocess.PIPE,
                    **options,
                )
                assert process.stdout is not None
                out = b""
                async for chunk in process.stdout:
                    out += chunk
            await process.aclose()
        return dict(line.split() for line in out.splitlines())

    async def test_a_missing_program_raises_at_once(self) -> None:
        async with TaskScope() as scope:
            with pytest.raises(FileNotFoundError):
                await scope.start_process(["no-such-program-stopscope"], die_with_parent=True)
        assert scope.report.tasks == ()


def wait_exec(pid: int, program: bytes) -> None:
    """Wait until the launcher ``pid`` has exec'd ``program`` (so its guard is set up)."""
    deadline = time.monotonic() + HANG_GUARD
    while Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] != program:
        assert time.monotonic() < deadline
        time.sleep(0.01)


async def _bounded_gone(pid: int) -> None:
    with anyio.fail_after(HANG_GUARD):
        await gone(pid)


# ------------------------------------------- the guard does not share the fate it watches

#: a service whose process member ignores SIGHUP, SIGINT and SIGTERM; once the member
#: runs, the service hangs in a blocking call (its loop never runs again), so only the
#: guard can end the member.  argv: backend, group/alone, the member's grace.
HUNG_SERVICE = textwrap.dedent(
    """
    import signal, sys, time
    # as under a terminal: SIGHUP ends the process (a test run under nohup would
    # otherwise hand down SIGHUP ignored, and the "terminal closed" case never ends)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    import stopscope
    from stopscope import StopSignal, TaskScope

    CHILD = (
        "import os, signal, time\\n"
        "for name in ('SIGHUP', 'SIGINT', 'SIGTERM'):\\n"
        "    signal.signal(getattr(signal, name), signal.SIG_IGN)\\n"
        "print('child', os.getpid(), flush=True)\\n"
        "time.sleep(3600)\\n"
    )

    async def main(signal: StopSignal) -> None:
        async with TaskScope(signal=signal, grace=3600) as scope:
            await scope.start_process(
                [sys.executable, "-c", CHILD], name="stubborn", grace=float(sys.argv[3]),
                die_with_parent=True, process_group=sys.argv[2] == "group",
            )
            print("hung", flush=True)
            time.sleep(3600)

    backend = sys.argv[1]
    options = {"use_uvloop": True} if backend == "uvloop" else {}
    stopscope.run(main, backend="trio" if backend == "trio" else "asyncio", backend_options=options)
    """
)

#: the member's grace in HUNG_SERVICE: the guard's wait between SIGTERM and SIGKILL
GUARD_GRACE = 0.5


def children_of(pid: int) -> list[int]:
    """The live processes whose parent is ``pid`` (through /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] not in (b"Z", b"X"):
                found.append(int(entry))
    return found


def wait_gone(pid: int) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} is still alive"
        time.sleep(0.01)


def kill_service(service: subprocess.Popen[bytes], how: str) -> None:
    """End a service started in a session of its own as a terminal or supervisor would."""
    if how == "sigkill":
        service.kill()
    elif how == "sighup-to-group":  # the terminal closed
        os.killpg(service.pid, signal.SIGHUP)
    else:  # Ctrl-C, then the hung service is SIGKILLed
        assert how == "sigint-to-group-then-sigkill"
        os.killpg(service.pid, signal.SIGINT)
        service.kill()


class TestTheGuardOutlivesWhatItWatches:
    """Issue 15, items 4 and 5: the command ignores SIGTERM, SIGINT and SIGHUP, and the
    service dies in each way a terminal or a supervisor ends it; the guard must still
    SIGKILL the command after the member's grace, then exit itself."""

    @pytest.mark.parametrize("backend", ["asyncio", "uvloop", "trio"])
    @pytest.mark.parametrize("group", ["group", "alone"])
    @pytest.mark.parametrize("how", ["sigkill", "sighup-to-group", "sigint-to-group-then-sigkill"])
    def test_a_stubborn_command_dies_after_its_service(
        self, backend: str, group: str, how: str
    ) -> None:
        service = subprocess.Popen(
            [sys.executable, "-c", HUNG_SERVICE, backend, group, str(GUARD_GRACE)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # the test owns the service's group
        )
        child = guard = None
        try:
            assert service.stdout is not None
            lines: dict[str, str] = {}
            while len(lines) < 2:
                line = service.stdout.readline().decode()
                assert line, service.communicate(timeout=HANG_GUARD)[1].decode()
                word, _, rest = line.strip().partition(" ")
                lines[word] = rest
            child = int(lines["child"])
            (guard,) = children_of(child)
            # the command keeps the group it was asked for; the guard has a session
            # of its own, out of reach of any group's signals
            expected_group = child if group == "group" else service.pid
            assert os.getpgid(child) == expected_group
            assert os.getsid(guard) == guard

            kill_service(service, how)
            service.wait(HANG_GUARD)
            wait_gone(child)
            wait_gone(guard)  # its job done, it does not linger
        finally:
            for pid in (child, guard):
                if pid is not None and alive(pid):
                    os.kill(pid, signal.SIGKILL)
            with suppress(ProcessLookupError):
                os.killpg(service.pid, signal.SIGKILL)
            if group == "group" and child is not None:
                with suppress(ProcessLookupError):
                    os.killpg(child, signal.SIGKILL)
            if service.poll() is None:
                service.kill()
            service.communicate(timeout=HANG_GUARD)

    @pytest.mark.parametrize("backend", ["asyncio", "uvloop", "trio"])
    def test_a_stubborn_grandchild_dies_after_its_leader_and_service(self, backend: str) -> None:
        """With process_group, the guard outlives the leader too: a grandchild that
        ignores SIGTERM, left by a leader that exited, is SIGKILLed once the service
        dies (the guard once died with the leader: PR_SET_PDEATHSIG)."""
        service = subprocess.Popen(
            [sys.executable, "-c", LEADER_GONE_SERVICE, backend, str(GUARD_GRACE)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        leader = grandchild = None
        try:
            assert service.stdout is not None
            lines: dict[str, str] = {}
            while len(lines) < 3:
                line = service.stdout.readline().decode()
                assert line, service.communicate(timeout=HANG_GUARD)[1].decode()
                word, _, rest = line.strip().partition(" ")
                lines[word] = rest
            leader, grandchild = int(lines["leader"]), int(lines["grandchild"])
            wait_gone(leader)  # it exited 0; its member waits for the group
            assert alive(grandchild)
            service.kill()
            service.wait(HANG_GUARD)
            wait_gone(grandchild)
        finally:
            if leader is not None:
                with suppress(ProcessLookupError):
                    os.killpg(leader, signal.SIGKILL)
            with suppress(ProcessLookupError):
                os.killpg(service.pid, signal.SIGKILL)
            if service.poll() is None:
                service.kill()
            service.communicate(timeout=HANG_GUARD)


#: a hung service (as HUNG_SERVICE) whose member, a shell, starts a grandchild that
#: ignores SIGTERM, SIGINT and SIGHUP, prints its pid and exits.  argv: backend, grace
LEADER_GONE_SERVICE = textwrap.dedent(
    """
    import sys, time
    import stopscope
    from stopscope import StopSignal, TaskScope

    LEADER = "(trap '' TERM INT HUP; exec sleep 1000) & echo grandchild $!"

    async def main(signal: StopSignal) -> None:
        async with TaskScope(signal=signal, grace=3600) as scope:
            process = await scope.start_process(
                ["sh", "-c", LEADER], name="leader", grace=float(sys.argv[2]),
                die_with_parent=True, process_group=True,
            )
            print("leader", process.pid, flush=True)
            print("hung", flush=True)
            time.sleep(3600)

    backend = sys.argv[1]
    options = {"use_uvloop": True} if backend == "uvloop" else {}
    stopscope.run(main, backend="trio" if backend == "trio" else "asyncio", backend_options=options)
    """
)


# --------------------------------------------------------------- Ctrl-C in a terminal

CTRL_C = Path(__file__).resolve().parent / "apps" / "ctrl_c.py"
README = Path(__file__).resolve().parent.parent / "README.md"

#: a service whose process member says which signals reach it; argv: backend
POLITE_SERVICE = textwrap.dedent(
    """
    import sys
    import stopscope
    from stopscope import StopSignal, TaskScope

    CHILD = (
        "import signal, sys, time\\n"
        "def on_int(signum, frame):\\n"
        "    print('indexer: got SIGINT', flush=True)\\n"
        "def on_term(signum, frame):\\n"
        "    print('indexer: got SIGTERM', flush=True)\\n"
        "    sys.exit(0)\\n"
        "signal.signal(signal.SIGINT, on_int)\\n"
        "signal.signal(signal.SIGTERM, on_term)\\n"
        "print('indexer: ready', flush=True)\\n"
        "while True:\\n"
        "    time.sleep(1)\\n"
    )

    async def main(signal: StopSignal) -> None:
        async with TaskScope(signal=signal, grace=30) as scope:
            await scope.start_process([sys.executable, "-c", CHILD], name="indexer")
            await signal.wait()
        record = scope.report.by_name("indexer")
        print("indexer", record.outcome.name, record.exit_code, flush=True)

    backend = sys.argv[1]
    options = {"use_uvloop": True} if backend == "uvloop" else {}
    stopscope.run(main, backend="trio" if backend == "trio" else "asyncio", backend_options=options)
    """
)


def press_ctrl_c(command: list[str], pattern: str, tmp_path: Path) -> tuple[str, int]:
    """Run ``command`` on a terminal of its own and type Ctrl-C once its output matches
    ``pattern`` (tests/apps/ctrl_c.py); return the transcript and the exit status."""
    pids = tmp_path / "pids"
    try:
        done = subprocess.run(
            [sys.executable, str(CTRL_C), f"--press={pattern}", f"--pids={pids}", "--", *command],
            capture_output=True,
            text=True,
            timeout=HANG_GUARD * 3,
            check=True,
        )
    finally:  # what outlived the service (its member, in a group of its own)
        for line in pids.read_text().split() if pids.exists() else ():
            if alive(int(line)):
                os.kill(int(line), signal.SIGKILL)
    transcript, _, status = done.stdout.rstrip("\n").rpartition("\n")
    return transcript, int(status.removeprefix("exit "))


class TestCtrlC:
    """Issue 17, item 2: a real Ctrl-C (typed on a pseudo-terminal, so the terminal
    signals its whole foreground group) reaches a process member only through the
    service's stop: one SIGTERM, no SIGINT, no KeyboardInterrupt traceback."""

    @pytest.mark.parametrize("backend", ["asyncio", "uvloop", "trio"])
    def test_the_member_gets_the_stop_not_the_terminals_sigint(
        self, backend: str, tmp_path: Path
    ) -> None:
        command = [sys.executable, "-c", POLITE_SERVICE, backend]
        transcript, status = press_ctrl_c(command, "indexer: ready", tmp_path)
        assert status == 0, transcript
        assert "got SIGINT" not in transcript, transcript
        assert transcript.count("indexer: got SIGTERM") == 1, transcript
        assert "indexer STOPPED 0" in transcript, transcript

    def test_the_readme_service_stops_without_a_traceback(self, tmp_path: Path) -> None:
        readme = README.read_text()
        section = readme.split("## Services: OS signals, threads, subprocesses", 1)[1]
        code = section.split("```python\n", 1)[1].split("```", 1)[0]
        assert "start_process" in code, code
        script = tmp_path / "service.py"
        script.write_text(code)
        transcript, status = press_ctrl_c(
            [sys.executable, str(script)], "press Ctrl-C to stop", tmp_path
        )
        assert status == 0, transcript
        assert "Traceback" not in transcript, transcript
        assert "KeyboardInterrupt" not in transcript, transcript
        assert "indexer STOPPED" in transcript, transcript
        # the README shows this very run: the same lines, the same status
        shown = section.split("```console\n$ python service.py\n", 1)[1].split("```", 1)[0]
        lines, _, status_shown = shown.rstrip("\n").rpartition("\n$ echo $?\n")
        # the same but for how long main() took to return
        took = re.compile(r"returned [0-9.]+ s after")
        assert (took.sub("returned N s after", lines), int(status_shown)) == (
            took.sub("returned N s after", transcript),
            status,
        )
