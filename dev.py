#!/usr/bin/env python3
"""Developer entry point: builds its own virtual environment, then runs a job.

    python3 dev.py bench          # the latency benchmark, quick mode, prints the table
    python3 dev.py test           # the whole suite: pytest on 3 backends, mypy --strict, ruff

Only the standard library is used here, so this works on a fresh machine with
nothing but Python >= 3.10 and access to the package registry.  The
environment lives in ``.venv`` (``.venv-3.X`` for ``--python 3.X``) and is
rebuilt whenever ``pyproject.toml`` changes.
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


def ensure_env(python_version: str | None, extras: str) -> Path:
    """Create (or refresh) the virtual environment and return its python."""
    name = ".venv" if python_version is None else f".venv-{python_version}"
    env_dir = ROOT / name
    py = env_dir / "bin" / "python"
    stamp = env_dir / ".stopscope-stamp"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
    if py.exists() and stamp.exists() and stamp.read_text() == want:
        return py
    base = _find_python(python_version)
    print(f"dev.py: preparing {name} with {base} (extras: {extras})", flush=True)
    if not py.exists():
        if python_version is None and Path(base).resolve() == Path(sys.executable).resolve():
            venv.EnvBuilder(with_pip=True).create(env_dir)
        else:
            subprocess.run([base, "-m", "venv", str(env_dir)], check=True)
    pip = [str(py), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "install", "-e", f"{ROOT}[{extras}]"], check=True)
    stamp.write_text(want)
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
        py = ensure_env(version, "test")
        label = version or f"{sys.version_info[0]}.{sys.version_info[1]}"
        code = run([str(py), "-m", "pytest", *extra])
        if code == 5:
            print("dev.py: pytest collected no tests; that is a failure here", flush=True)
        if code != 0:
            failed.append(f"pytest on {label} (exit {code})")
        if version in (None, versions[-1]) and not args.no_lint:
            if run([str(py), "-m", "mypy"]) != 0:
                failed.append(f"mypy on {label}")
            if run([str(py), "-m", "ruff", "check", "."]) != 0:
                failed.append("ruff")
    if failed:
        print("dev.py: FAILED: " + "; ".join(failed), flush=True)
        return 1
    print("dev.py: all checks passed", flush=True)
    return 0


def cmd_bench(args: argparse.Namespace, extra: list[str]) -> int:
    py = ensure_env(args.python, "bench,test")
    mode = [] if args.full else ["--quick"]
    return run([str(py), "benchmarks/bench_stop_latency.py", *mode, *extra])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="job", required=True)
    t = sub.add_parser("test", help="pytest on every backend, then mypy --strict and ruff")
    t.add_argument("--python", help="run under python X.Y (found on PATH or under pyenv)")
    t.add_argument("--all-pythons", action="store_true", help="run pytest under 3.10 to 3.13")
    t.add_argument("--no-lint", action="store_true", help="skip mypy and ruff")
    b = sub.add_parser("bench", help="the stop-latency benchmark (quick mode unless --full)")
    b.add_argument("--python", help="run under python X.Y")
    b.add_argument("--full", action="store_true", help="the full run whose results are committed")
    args, extra = parser.parse_known_args()
    if args.job == "test":
        return cmd_test(args, extra)
    return cmd_bench(args, extra)


if __name__ == "__main__":
    sys.exit(main())
