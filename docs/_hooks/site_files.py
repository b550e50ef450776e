"""MkDocs hook: put the committed benchmark plot into the site at its repository path.

The plot lives in ``benchmarks/results/`` next to the JSON it was drawn from, not in
``docs/``.  Rather than keep a copy that would go stale, the build adds the file itself
as ``benchmarks/results/stop_latency.png``, so a page at the top of ``docs/`` shows it
with ``![...](benchmarks/results/stop_latency.png)``, the same path as in the README.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
SHARED = ("benchmarks/results/stop_latency.png",)


def on_files(files: Files, config: Any) -> Files:
    for rel in SHARED:
        source = ROOT / rel
        if not source.is_file():
            raise FileNotFoundError(f"the docs show {rel}, which is missing from the repository")
        files.append(File.generated(config, rel, abs_src_path=str(source)))
    return files
