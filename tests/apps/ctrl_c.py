"""Run a command on a terminal of its own and press Ctrl-C, as a person would.

    python tests/apps/ctrl_c.py [--press PATTERN [--after SECONDS]]... [--pids FILE] -- COMMAND...

The command gets a new pseudo-terminal as its controlling terminal (its own session,
so its process group is the terminal's foreground group).  Each time the output
matches the next ``--press`` pattern (a regular expression), and the line it is on has
been read whole (a terminal discards output not yet read when Ctrl-C is typed), Ctrl-C
is typed on the terminal (the byte ``\x03``): the terminal itself sends SIGINT to the
whole foreground group and echoes ``^C``, exactly as in an interactive shell; no
``kill -INT``.  Once the command has exited, the transcript (``\r\n`` turned into
``\n``) goes to stdout, followed by a line ``exit N``: N is the status as a shell
shows it (128 + n if a signal n killed it).

``--after SECONDS`` (after a ``--press``): wait that long once its pattern matched
before typing Ctrl-C, as a person watching the output would (default 0).

``--pids FILE``: before each Ctrl-C, the pids of the command's descendants are
appended to FILE, one a line, so that a test can clean up a child that outlived it.

Used by tests/test_members_orchestrator.py, and to record the sample outputs of the
README and of docs/how-to/services.md.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import subprocess
import sys
import time

#: in the child: take the terminal on stdin as the controlling one, then exec
TAKE_TERMINAL = (
    "import fcntl, os, sys, termios\n"
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0)\n"
    "os.execvp(sys.argv[1], sys.argv[1:])\n"
)
#: seconds; only a guard against hangs
HANG_GUARD = 60.0


def descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    parents[int(entry)] = int(stat.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        found += children
        frontier += children
    return found


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--press", action="append", default=[])
    parser.add_argument("--after", type=float, action="append", default=[])
    parser.add_argument("--pids")
    parser.add_argument("command", nargs="+")
    args = parser.parse_args()
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", TAKE_TERMINAL, *args.command],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    transcript = b""
    presses = [re.compile(pattern.encode()) for pattern in args.press]
    delays = args.after + [0.0] * (len(presses) - len(args.after))
    searched_from = 0
    press_at: float | None = None
    deadline = time.monotonic() + HANG_GUARD
    while True:
        match = presses[0].search(transcript, searched_from) if presses else None
        if press_at is None and match and b"\n" in transcript[match.end() :]:
            # the whole line is in: the terminal drops output not yet read at a Ctrl-C
            presses.pop(0)
            searched_from = len(transcript)
            press_at = time.monotonic() + delays.pop(0)
        if press_at is not None and time.monotonic() >= press_at:
            press_at = None
            if args.pids:
                with open(args.pids, "a") as pids:
                    pids.writelines(f"{pid}\n" for pid in descendants(proc.pid))
            os.write(master, b"\x03")
        if time.monotonic() > deadline:
            proc.kill()
            transcript += b"\n[ctrl_c.py: no exit within the hang guard]\n"
            break
        ready, _, _ = select.select([master], [], [], 0.01)
        if not ready:
            continue
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every process of the terminal has closed it
            chunk = b""
        if not chunk:
            break
        transcript += chunk
    os.close(master)
    status = proc.wait(HANG_GUARD)
    sys.stdout.write(transcript.replace(b"\r\n", b"\n").decode(errors="replace"))
    sys.stdout.write(f"exit {128 - status if status < 0 else status}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
