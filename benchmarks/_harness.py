"""How the benchmarks measure: statistics, formatting, run metadata, progress.

Standard library only (the plot, in ``bench_stop_latency.py``, imports matplotlib lazily).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------- statistics


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of an already sorted sequence (``q`` in [0, 1])."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def ratio_of_medians(a: Sequence[float], b: Sequence[float]) -> float:
    mb = median(b)
    return median(a) / mb if mb else math.nan


def bootstrap_ratio_ci(
    a: Sequence[float],
    b: Sequence[float],
    rng: random.Random,
    *,
    paired: bool,
    resamples: int = 1000,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``median(a) / median(b)``.

    ``paired``: ``a[i]`` and ``b[i]`` come from the same repetition (the strategies are
    interleaved within it), so the repetitions are resampled together and noise that hit
    both sides alike cancels out.
    """
    if len(a) < 2 or len(b) < 2:
        r = ratio_of_medians(a, b)
        return (r, r)
    stats: list[float] = []
    if paired and len(a) == len(b):
        idx = range(len(a))
        for _ in range(resamples):
            pick = rng.choices(idx, k=len(a))
            mb = statistics.median([b[i] for i in pick])
            if mb:
                stats.append(statistics.median([a[i] for i in pick]) / mb)
    else:
        for _ in range(resamples):
            mb = statistics.median(rng.choices(b, k=len(b)))
            if mb:
                stats.append(statistics.median(rng.choices(a, k=len(a))) / mb)
    if not stats:
        return (math.nan, math.nan)
    stats.sort()
    tail = (1.0 - level) / 2.0
    return (quantile(stats, tail), quantile(stats, 1.0 - tail))


def mann_whitney_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the Mann-Whitney U test (normal approximation, tie-corrected).

    Small p: the two samples are unlikely to come from one distribution.
    """
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        return math.nan
    pooled = sorted([(x, 0) for x in a] + [(x, 1) for x in b])
    ranks = [0.0] * len(pooled)
    tie_term = 0.0
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        mid = (i + j) / 2.0 + 1.0
        for k in range(i, j + 1):
            ranks[k] = mid
        t = j - i + 1
        tie_term += t**3 - t
        i = j + 1
    r1 = sum(r for r, (_, side) in zip(ranks, pooled, strict=True) if side == 0)
    u1 = r1 - n1 * (n1 + 1) / 2.0
    mu = n1 * n2 / 2.0
    n = n1 + n2
    var = n1 * n2 / 12.0 * ((n + 1) - tie_term / (n * (n - 1))) if n > 1 else 0.0
    if var <= 0:
        return 1.0
    z = (abs(u1 - mu) - 0.5) / math.sqrt(var)
    return max(0.0, min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2.0))))


# --------------------------------------------------------------------------- formatting


def fmt_time(seconds: float) -> str:
    """A duration in the unit that keeps three significant digits readable."""
    if seconds is None or math.isnan(seconds):
        return "-"
    if seconds >= 1.0:
        return f"{seconds:.2f}s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g}ms"
    if seconds >= 1e-6:
        return f"{seconds * 1e6:.3g}us"
    return f"{seconds * 1e9:.3g}ns"


def fmt_ratio(r: float) -> str:
    if r is None or math.isnan(r):
        return "-"
    return f"{r:.2f}x"


def fmt_bytes(b: float) -> str:
    if math.isnan(b):
        return "-"
    if b >= 10_000:
        return f"{b / 1024:.1f}KiB"
    return f"{b:.0f}B"


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> str:
    """Left-align the first column, right-align the others."""
    widths = [len(h) for h in header]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return indent + "  ".join(parts).rstrip()

    out = [line(header), indent + "  ".join("-" * w for w in widths)]
    out.extend(line(row) for row in rows)
    return "\n".join(out)


# --------------------------------------------------------------------------- metadata


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(root: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                              text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def run_metadata(argv: Sequence[str], mode: str, root: Path) -> dict[str, object]:
    """The conditions of the run, recorded next to the numbers."""
    status = _git(root, "status", "--porcelain", "--", "src")
    return {
        # the library's source: commit, and whether src/ had uncommitted changes
        "git_commit": _git(root, "rev-parse", "HEAD"),
        "git_src_dirty": None if status is None else bool(status),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": mode,
        "argv": list(argv),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "python_build": " ".join(platform.python_build()),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "versions": {
            name: _version(name) for name in ("stopscope", "anyio", "trio", "uvloop", "matplotlib")
        },
        "gil_disabled": not getattr(sys, "_is_gil_enabled", lambda: True)(),
    }


# --------------------------------------------------------------------------- progress


class Progress:
    """Progress lines on stderr, so stdout carries only the table."""

    def __init__(self, enabled: bool = True) -> None:
        self.start = time.perf_counter()
        self.enabled = enabled

    def __call__(self, message: str) -> None:
        if self.enabled:
            elapsed = time.perf_counter() - self.start
            print(f"[{elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)


def split_evenly(total: int, parts: int, index: int) -> int:
    """How many of ``total`` repetitions round ``index`` of ``parts`` runs."""
    base, extra = divmod(total, parts)
    return base + (1 if index < extra else 0)


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _finite(obj: Any) -> Any:
    """NaN and infinities become null, so the file is strict JSON; other floats keep six
    significant digits (a microsecond in a second), which keeps the file small."""
    if isinstance(obj, float):
        return float(f"{obj:.6g}") if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def dump_json(doc: dict[str, Any]) -> str:
    """Indented JSON, with one line per raw sample (readable, and small in diffs)."""
    doc = _finite(doc)
    marker = "__SAMPLES__"
    text = json.dumps({**doc, "samples": marker}, indent=1, allow_nan=False)
    groups = []
    for kind, rows in doc["samples"].items():
        body = ",\n".join("   " + json.dumps(row, separators=(",", ":"), allow_nan=False)
                          for row in rows)
        groups.append(f'  "{kind}": [\n{body}\n  ]' if rows else f'  "{kind}": []')
    return text.replace(json.dumps(marker), "{\n" + ",\n".join(groups) + "\n }") + "\n"
