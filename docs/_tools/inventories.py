"""Make the inventories in docs/_inventories/ again: Python's, anyio's and trio's.

    .venv/bin/python docs/_tools/inventories.py

An inventory (``objects.inv``) maps each documented name of a project to its page and
anchor; Sphinx's intersphinx uses it to link ``anyio.CancelScope`` into anyio's docs.
They are committed so that the site builds without a network (``dev.py test`` builds
it); the links still point at the projects' own sites.

* anyio and trio: the sdist of the installed version (``pip download``) carries its docs
  sources; they are built here with autodoc alone (their own themes and extensions are
  not needed for names and anchors), which yields the same pages and anchors as their
  published docs for the API.  Run it after upgrading anyio or trio.
* Python: Debian's ``python3-doc`` package ships the standard library's inventory
  (``apt-get install python3-doc``); without it, the committed one is kept.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "_inventories"
#: project -> its docs folder inside the sdist
PROJECTS = {"anyio": "docs", "trio": "docs/source"}
PYTHON_DOC = sorted(Path("/usr/share/doc").glob("python3*/html/objects.inv"))

CONF = """\
extensions = ["sphinx.ext.autodoc"]
root_doc = "index"
autodoc_default_options = {"members": True}
autodoc_mock_imports = ["_typeshed", "pytest", "_pytest"]
"""


def build(project: str, docs_dir: str, work: Path) -> None:
    wanted = f"{project}=={version(project)}"
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--no-binary", ":all:", "-d", str(work), wanted], check=True)
    (sdist,) = work.glob(f"{project}-*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(work, filter="data")
    source = next(work.glob(f"{project}-*/")) / docs_dir
    (work / "conf.py").write_text(CONF, encoding="utf-8")
    # their own roles and directives are unknown here: that noise is expected
    subprocess.run([sys.executable, "-m", "sphinx", "-q", "-b", "html", "-c", str(work),
                    str(source), str(work / "html")], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.copyfile(work / "html" / "objects.inv", OUT / f"{project}.inv")
    print(f"{OUT / f'{project}.inv'}: {wanted}")


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for project, docs_dir in PROJECTS.items():
        with tempfile.TemporaryDirectory() as work:
            build(project, docs_dir, Path(work))
    if PYTHON_DOC:
        shutil.copyfile(PYTHON_DOC[-1], OUT / "python.inv")
        print(f"{OUT / 'python.inv'}: {PYTHON_DOC[-1]}")
    else:
        print("python3-doc is not installed: python.inv kept as it is")
    return 0


if __name__ == "__main__":
    sys.exit(main())
