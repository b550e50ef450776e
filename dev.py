#!/usr/bin/env python3
"""Developer entry point: builds its own virtual environment, then runs a job.

    python3 dev.py bench          # the latency benchmark, quick mode, prints the table
    python3 dev.py test           # the whole suite: pytest on 3 backends, mypy --strict, ruff

Only the standard library is used here, so this works on a fresh machine with
nothing but Python >= 3.10 and access to the package registry.  Both jobs share
one environment, ``.venv`` (``.venv-3.X`` for ``--python 3.X``): stopscope in
editable mode with its ``trio`` and ``uvloop`` extras, plus the ``dev``
dependency group of ``pyproject.toml``.  It is built on first use (pip shows
each download) and refreshed whenever ``pyproject.toml`` changes, never by
switching between jobs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def _find_python(version: str | None) -> str:
    """A python X.Y that runs: pyenv's install directories first, then PATH.

    pyenv's shims are on PATH even for versions that are installed but not selected,
    and then they fail, so every candidate is tried before it is used.
    """
    if version is None:
        return sys.executable
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [
        str(p)
        for p in sorted(pyenv_root.glob(f"versions/{version}.*/bin/python{version}"), reverse=True)
    ]
    found = shutil.which(f"python{version}")
    if found:
        candidates.append(found)
    for candidate in candidates:
        probe = subprocess.run(
            [candidate, "-c", "import sys, venv; print(sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=False,
        )
        if (
            probe.returncode == 0
            and probe.stdout.strip() == str(tuple(map(int, version.split("."))))
        ):
            return candidate
    raise SystemExit(f"dev.py: no working python{version} on PATH or under {pyenv_root}/versions")


def ensure_env(python_version: str | None, group: str = "dev") -> Path:
    """Create (or refresh) the development environment and return its python.

    One environment serves every job, so switching between them never rebuilds it:
    the package in editable mode with the extras users install (``trio``,
    ``uvloop``) and a dependency group of ``pyproject.toml`` (``dev``: test, bench
    and release tools).  pip runs without ``-q``, so a first build shows its
    progress.
    """
    name = ".venv" if python_version is None else f".venv-{python_version}"
    env_dir = ROOT / name
    py = env_dir / "bin" / "python"
    stamp = env_dir / ".stopscope-stamp"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + group.encode()).hexdigest()
    if py.exists() and stamp.exists() and stamp.read_text() == want:
        return py
    base = _find_python(python_version)
    fresh = not py.exists()
    what = f"stopscope[trio,uvloop] and the {group!r} dependency group"
    print(
        f"dev.py: {'building' if fresh else 'refreshing'} {name} with {base}: {what}"
        + (" (the first build downloads about 100 MB; a minute or two)" if fresh else ""),
        flush=True,
    )
    if fresh:
        print(f"dev.py: [1/3] creating the virtual environment {env_dir}", flush=True)
        if python_version is None and Path(base).resolve() == Path(sys.executable).resolve():
            venv.EnvBuilder(with_pip=True).create(env_dir)
        else:
            subprocess.run([base, "-m", "venv", str(env_dir)], check=True)
    pip = [str(py), "-m", "pip", "--disable-pip-version-check"]
    # dependency groups (--group) need pip >= 25.1
    print("dev.py: [2/3] upgrading pip", flush=True)
    subprocess.run([*pip, "install", "-q", "--upgrade", "pip>=25.1"], check=True)
    print(f"dev.py: [3/3] installing {what}", flush=True)
    subprocess.run(
        [*pip, "install", "--progress-bar", "off", "-e", ".[trio,uvloop]", "--group", group],
        cwd=ROOT,
        check=True,
    )
    stamp.write_text(want)
    print(f"dev.py: {name} is ready", flush=True)
    return py


def run(cmd: list[str], **kwargs: object) -> int:
    print("+ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, **kwargs).returncode  # type: ignore[call-overload, no-any-return]


def cmd_test(args: argparse.Namespace, extra: list[str]) -> int:
    versions: list[str | None] = [None]
    if args.all_pythons:
        versions = ["3.10", "3.11", "3.12", "3.13"]
    elif args.python:
        versions = [args.python]
    failed: list[str] = []
    for version in versions:
        py = ensure_env(version)
        label = version or f"{sys.version_info[0]}.{sys.version_info[1]}"
        # Branch coverage is measured and gated on the default Python only: the gate
        # is about what our tests reach, not about the Python version.  Child Python
        # processes are measured too ([tool.coverage.run] in pyproject.toml).
        measure = version is None and not args.no_cov
        if measure:
            run([str(py), "-m", "coverage", "erase"])
            code = run([str(py), "-m", "coverage", "run", "-m", "pytest", *extra])
        else:
            code = run([str(py), "-m", "pytest", *extra])
        if code == 5:
            print("dev.py: pytest collected no tests; that is a failure here", flush=True)
        if code != 0:
            failed.append(f"pytest on {label} (exit {code})")
        elif measure:
            # `coverage report` exits 2 below [tool.coverage.report] fail_under
            if run([str(py), "-m", "coverage", "combine", "--quiet"]) != 0:
                failed.append("coverage combine")
            elif run([str(py), "-m", "coverage", "report"]) != 0:
                failed.append(f"branch coverage on {label} (see the report above)")
        if version in (None, versions[-1]) and not args.no_lint:
            if run([str(py), "-m", "mypy"]) != 0:
                failed.append(f"mypy on {label}")
            if run([str(py), "-m", "ruff", "check", "."]) != 0:
                failed.append("ruff")
        if version in (None, versions[-1]):  # the docs site (docs/conf.py), offline
            # -W: warnings are errors; -n: every cross-reference must resolve;
            # -E: read every page again (a stale cache can hide a warning)
            docs = ["-W", "--keep-going", "-n", "-E", "-q", "-b", "html", "docs",
                    str(ROOT / "build" / "site")]
            if run([str(py), "-m", "sphinx", *docs]) != 0:
                failed.append("docs build (sphinx -W -n)")
    if failed:
        print("dev.py: FAILED: " + "; ".join(failed), flush=True)
        return 1
    print("dev.py: all checks passed", flush=True)
    return 0


def cmd_bench(args: argparse.Namespace, extra: list[str]) -> int:
    py = ensure_env(args.python)
    mode = [] if args.full else ["--quick"]
    print(
        "dev.py: measuring "
        + ("(full run: about 6 minutes)" if args.full
           else "(quick mode: about 45 s on a quiet 2-core machine)")
        + "; a progress line per step, then the table",
        flush=True,
    )
    return run([str(py), "benchmarks/bench_stop_latency.py", *mode, *extra])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="job", required=True)
    t = sub.add_parser(
        "test",
        help="pytest on every backend under branch coverage (gate: [tool.coverage.report] "
        "fail_under), then mypy --strict and ruff",
    )
    t.add_argument("--python", help="run under python X.Y (found on PATH or under pyenv)")
    t.add_argument("--all-pythons", action="store_true", help="run pytest under 3.10 to 3.13")
    t.add_argument("--no-lint", action="store_true", help="skip mypy and ruff")
    t.add_argument(
        "--no-cov",
        action="store_true",
        help="skip coverage (for a subset of the tests, which the gate would fail)",
    )
    b = sub.add_parser("bench", help="the stop-latency benchmark (quick mode unless --full)")
    b.add_argument("--python", help="run under python X.Y")
    b.add_argument("--full", action="store_true", help="the full run whose results are committed")
    args, extra = parser.parse_known_args()
    if args.job == "test":
        return cmd_test(args, extra)
    return cmd_bench(args, extra)


if __name__ == "__main__":
    sys.exit(main())
