"""What every benchmark shares: the machine it names in its figures, and writing those figures into README.md (the
block between ``<!-- bench:NAME:start -->`` and ``<!-- bench:NAME:end -->`` is replaced; a README without it is an
error)."""

from __future__ import annotations

import argparse
import platform
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def write_block(name: str, body: str, readme: Path = README) -> None:
    """Replace the ``bench:<name>`` block of ``readme`` with ``body``."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    text = readme.read_text(encoding="utf-8")
    block = f"{start}\n{body}\n{end}"
    new, count = re.subn(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    if count != 1:
        raise SystemExit(f"{readme.name} has no {start} ... {end} block")
    readme.write_text(new, encoding="utf-8")


def cpu_model(flags: tuple[str, ...] = ()) -> str:
    """The CPU's model name from /proc/cpuinfo, with those of ``flags`` it has (e.g. avx512_bf16) when asked."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    model = model or platform.machine()
    if not flags:
        return model
    present = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    return f"{model}, {'/'.join(f for f in flags if f in present) or 'none of ' + '/'.join(flags)}"


def bench_parser(doc: str | None, results: str, only: str = "comma-separated set names (default: all)"
                 ) -> argparse.ArgumentParser:
    """The options every benchmark has: ``--only`` rows, ``--no-readme``, and ``--readme-only`` (from ``results``,
    the file under benchmarks/out/ that keeps finished rows)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help=only)
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite README.md")
    parser.add_argument("--readme-only", action="store_true", help=f"only rewrite README.md from {results}")
    return parser
