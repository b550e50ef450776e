"""The release artifacts: the wheel and sdist build, pass ``twine check``, carry the
license, and the wheel works in a fresh environment without trio.

These tests are synchronous and not marked ``anyio``: they run once, not once per
backend (the seed example they run from the wheel is asyncio's).  They need no network:
the wheel and sdist are built with the development environment's setuptools
(``--no-isolation``), and the fresh environment gets stopscope's dependencies (anyio
and what anyio needs on this Python) from the development environment, linked through
a ``.pth`` file, so no trio can come with them.  About 10 s on a 2-core machine.

The sdist does not carry this file (see MANIFEST.in): it checks the repository's
release, which has no meaning inside an unpacked sdist.
"""

from __future__ import annotations

import email.parser
import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
#: what never goes into a build: environments, caches, build output
IGNORED = shutil.ignore_patterns(
    ".git", ".venv*", "build", "dist", "site", "*.egg-info", "__pycache__", "*.py[cod]",
    ".mypy_cache", ".ruff_cache", ".hypothesis", ".pytest_cache", ".coverage*",
)
TIMEOUT = 120  # seconds, for each step; the whole module takes about 10 s


@dataclass(frozen=True)
class Dist:
    source: Path  # the copy of the work tree the artifacts were built from
    wheel: Path
    sdist: Path

    def sdist_names(self) -> set[str]:
        with tarfile.open(self.sdist) as tar:
            top = tar.getnames()[0].split("/")[0]
            return {n.removeprefix(top + "/") for n in tar.getnames() if n != top}

    def wheel_names(self) -> set[str]:
        with zipfile.ZipFile(self.wheel) as whl:
            return set(whl.namelist())

    def metadata(self) -> Message:
        with zipfile.ZipFile(self.wheel) as whl:
            name = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
            return email.parser.Parser().parsestr(whl.read(name).decode())


#: the environment of the commands run here: a PYTHONPATH (a developer's, pointing at
#: the work tree's src) would shadow the installed package these tests are about
CLEAN_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("env", CLEAN_ENV)
    proc: subprocess.CompletedProcess[str] = subprocess.run(  # type: ignore[call-overload]
        cmd, capture_output=True, text=True, timeout=TIMEOUT, check=False, **kwargs
    )
    assert proc.returncode == 0, f"{cmd}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    """The sdist, and the wheel built from it (``python -m build``'s default order)."""
    base = tmp_path_factory.mktemp("packaging")
    source = base / "src-tree"
    shutil.copytree(ROOT, source, ignore=IGNORED, symlinks=True)
    out = base / "dist"
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)])
    (wheel,) = out.glob("stopscope-*.whl")
    (sdist,) = out.glob("stopscope-*.tar.gz")
    return Dist(source=source, wheel=wheel, sdist=sdist)


class TestArtifacts:
    def test_twine_check_passes(self, dist: Dist) -> None:
        proc = _run([sys.executable, "-m", "twine", "check", "--strict",
                     str(dist.wheel), str(dist.sdist)])
        assert proc.stdout.count("PASSED") == 2, proc.stdout

    def test_license_ships_in_both(self, dist: Dist) -> None:
        assert "LICENSE" in dist.sdist_names()
        licenses = [n for n in dist.wheel_names() if n.endswith(".dist-info/licenses/LICENSE")]
        assert licenses, sorted(dist.wheel_names())
        with zipfile.ZipFile(dist.wheel) as whl:
            text = whl.read(licenses[0]).decode()
        assert text == (ROOT / "LICENSE").read_text()
        assert text.startswith("MIT License\n\nCopyright (c) 2026 the stopscope developers\n")

    def test_metadata_for_users(self, dist: Dist) -> None:
        meta = dist.metadata()
        assert meta["Version"] == importlib.metadata.version("stopscope")
        assert meta["License-Expression"] == "MIT"
        classifiers = set(meta.get_all("Classifier") or [])
        assert "Development Status :: 3 - Alpha" in classifiers
        for minor in (10, 11, 12, 13):
            assert f"Programming Language :: Python :: 3.{minor}" in classifiers
        assert meta["Requires-Python"] == ">=3.10"
        # users install extras; what only developers need is a dependency group
        extras = set(meta.get_all("Provides-Extra") or [])
        assert extras >= {"trio", "uvloop"}
        assert not extras & {"test", "bench", "dev", "docs", "release"}, extras
        requires = [Requirement(r) for r in meta.get_all("Requires-Dist") or []]
        assert {r.name for r in requires if r.marker is None} == {"anyio"}

    def test_wheel_holds_the_package_and_nothing_else(self, dist: Dist) -> None:
        top = {n.split("/")[0] for n in dist.wheel_names()}
        assert top == {"stopscope", dist.wheel.name.split("-py3")[0] + ".dist-info"}
        assert "stopscope/py.typed" in dist.wheel_names()

    def test_sdist_carries_what_the_tests_read(self, dist: Dist) -> None:
        names = dist.sdist_names()
        wanted = {
            p.relative_to(dist.source).as_posix()
            for folder in ("tests", "examples", "docs", "src", "newsfragments")
            for p in (dist.source / folder).rglob("*")
            if p.is_file()
        }
        wanted |= {p.relative_to(dist.source).as_posix()
                   for p in (dist.source / "benchmarks").glob("*.py")}
        wanted |= {"README.md", "LICENSE", "CHANGELOG.md", "pyproject.toml", "dev.py",
                   "tests/conftest.py", "benchmarks/results/stop_latency.png"}
        wanted.discard("tests/test_packaging.py")  # see the module docstring
        assert sorted(wanted - names) == []
        assert "tests/test_packaging.py" not in names


@pytest.fixture(scope="module")
def fresh_python(dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment with the wheel, anyio and its needs, and no trio."""
    env = tmp_path_factory.mktemp("fresh") / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    py = env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    # pip from the development environment installs into the new one (pip >= 22.3)
    _run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--python",
          str(py), "install", "--no-index", "--no-deps", str(dist.wheel)])
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_path("
                                     "'purelib'))"]).stdout.strip())
    deps = env.parent / "deps"
    deps.mkdir()
    for name in _dependency_closure(dist.metadata()):
        _link_distribution(name, deps)
    (site / "stopscope-test-deps.pth").write_text(f"{deps}\n")
    return py


class TestFreshEnvironment:
    """The wheel alone, in a new virtual environment with anyio and no trio."""

    def test_trio_is_absent_and_stopscope_is_the_wheel(
        self, fresh_python: Path, tmp_path: Path
    ) -> None:
        proc = subprocess.run(
            [str(fresh_python), "-c", "import trio"], capture_output=True, text=True,
            timeout=TIMEOUT, check=False, cwd=tmp_path, env=CLEAN_ENV,
        )
        assert proc.returncode != 0
        assert "No module named 'trio'" in proc.stderr
        proc = _run([str(fresh_python), "-c", "import stopscope; print(stopscope.__file__); "
                     "print(stopscope.__version__)"], cwd=tmp_path)
        where, version = proc.stdout.split()
        assert Path(where).is_relative_to(fresh_python.parent.parent)
        assert version == importlib.metadata.version("stopscope")

    def test_seed_example_runs_on_asyncio(self, fresh_python: Path, tmp_path: Path) -> None:
        proc = _run([str(fresh_python), str(ROOT / "examples" / "seed.py"), "--backend",
                     "asyncio", "--seconds", "0.35", "--tick", "0.1"], cwd=tmp_path)
        lines = proc.stdout.splitlines()
        assert lines[0] == "main: letting the task run for 0.35 seconds..."
        assert "background task stopped." in lines
        assert lines[-2] == "main: all tasks done!"
        assert lines[-1].startswith("stop latency (stopscope on asyncio): ")

    def test_seed_comparison_runs_on_asyncio(
        self, fresh_python: Path, tmp_path: Path
    ) -> None:
        proc = _run([str(fresh_python), str(ROOT / "examples" / "seed.py"), "--original",
                     "--moments", "2", "--tick", "0.1"], cwd=tmp_path)
        lines = proc.stdout.splitlines()
        assert lines[-3] == (
            "stop latency over 2 stop moments, ms from the stop request to the exit:"
        )
        assert lines[-2].startswith("  original asyncio.Event pattern: median ")
        assert lines[-1].startswith("  stopscope on asyncio:           median ")


class TestDocumentedInstall:
    """The install the README and the docs give, run as written in a new environment.

    This one uses the package index, as a user's install does: pip builds the project
    from a copy of the work tree in an isolated build environment (setuptools from the
    index) and installs anyio and trio from the index.
    """

    COMMAND = 'pip install "./stopscope[trio]"'

    def test_the_docs_give_the_same_command(self) -> None:
        for page in ("README.md", "docs/index.md"):
            assert self.COMMAND in (ROOT / page).read_text(), page

    def test_install_from_a_clone_works(self, tmp_path: Path) -> None:
        shutil.copytree(ROOT, tmp_path / "stopscope", ignore=IGNORED, symlinks=True)
        env = tmp_path / "venv"
        venv.EnvBuilder(with_pip=True).create(env)
        bindir = env / ("Scripts" if os.name == "nt" else "bin")
        # the documented command word for word, run by the new environment's pip
        path = f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"
        proc = subprocess.run(
            self.COMMAND, shell=True, cwd=tmp_path, capture_output=True, text=True,
            timeout=600, check=False,
            env={**CLEAN_ENV, "PATH": path, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        script = (
            "import trio, stopscope\n"
            "async def main():\n"
            "    async with stopscope.TaskScope(grace=1) as scope:\n"
            "        scope.start_soon(scope.signal.wait, name='waiter')\n"
            "    print(scope.report.by_name('waiter').outcome.name, stopscope.__file__)\n"
            "trio.run(main)\n"
        )
        out = _run([str(bindir / "python"), "-c", script], cwd=tmp_path).stdout.split()
        assert out[0] == "STOPPED"
        assert Path(out[1]).is_relative_to(env)


class TestChangelog:
    def test_every_fragment_is_assembled(self) -> None:
        proc = _run([sys.executable, "-m", "towncrier", "build", "--draft", "--version",
                     "0.0.0", "--date", "unreleased"], cwd=ROOT)
        fragments = [p for p in (ROOT / "newsfragments").iterdir() if p.name != "README.md"]
        assert fragments
        draft = " ".join(proc.stdout.split())
        for fragment in fragments:
            assert " ".join(fragment.read_text().split()) in draft, fragment.name

    def test_changelog_holds_the_start_marker(self) -> None:
        text = (ROOT / "CHANGELOG.md").read_text()
        assert "<!-- towncrier release notes start -->\n" in text


def _dependency_closure(meta: Message) -> list[str]:
    """The distributions stopscope needs without extras, and theirs, on this Python."""
    seen: list[str] = []
    todo = [Requirement(r) for r in meta.get_all("Requires-Dist") or []]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = importlib.metadata.distribution(req.name).metadata["Name"]
        if name in seen:
            continue
        seen.append(name)
        todo += [Requirement(r) for r in importlib.metadata.requires(name) or []]
    assert "trio" not in {s.lower() for s in seen}
    return seen


def _link_distribution(name: str, into: Path) -> None:
    """Make the development environment's copy of ``name`` importable from ``into``."""
    dist = importlib.metadata.distribution(name)
    site = Path(sysconfig.get_path("purelib")).resolve()
    tops = set()
    for file in dist.files or []:
        located = Path(str(dist.locate_file(file))).resolve()
        if located.is_relative_to(site):
            tops.add(located.relative_to(site).parts[0])
    for top in sorted(tops - {"__pycache__"}):
        (into / top).symlink_to(site / top)
