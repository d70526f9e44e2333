"""What every benchmark shares: the machine it names in its figures, and writing those figures into README.md (the
block between ``<!-- bench:NAME:start -->`` and ``<!-- bench:NAME:end -->`` is replaced; a README without it is an
error, and so is a new block that would drop rows the README has)."""

from __future__ import annotations

import argparse
import platform
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


# Set to 1 to let a benchmark write a block that lacks rows the README has (a row renamed or retired on purpose).
DROP_ROWS_ENV = "LIFECYCLE_BENCH_DROP_ROWS"


def row_keys(block: str) -> list[str]:
    """The first cell of every data row of the markdown tables in ``block`` (header and separator rows left out), a
    trailing date in brackets dropped (``mr (2026-12-01)`` is row ``mr``: a re-run moves the date, not the row)."""
    keys, lines = [], block.splitlines()
    for index, line in enumerate(lines):
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if following.startswith("|") and set(following) <= set("|-: "):
            continue  # a header row: the separator comes next
        keys.append(re.sub(r"\s*\(\d{4}-\d{2}-\d{2}\)$", "", line.strip("|").split("|", 1)[0].strip()))
    return keys


def write_block(name: str, body: str, readme: Path = README) -> None:
    """Replace the ``bench:<name>`` block of ``readme`` with ``body``.

    A body whose tables lack rows the README's block has is refused (SystemExit naming them): a benchmark's results
    file under benchmarks/out/ is not kept with the project, so a run of one set would otherwise wipe the others'
    figures. Run those rows too, copy the new row in by hand (``--no-readme``), or set ``LIFECYCLE_BENCH_DROP_ROWS=1``.
    """
    import os

    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    text = readme.read_text(encoding="utf-8")
    pattern = re.escape(start) + r"(.*?)" + re.escape(end)
    found = re.findall(pattern, text, flags=re.S)
    if len(found) != 1:
        raise SystemExit(f"{readme.name} has no {start} ... {end} block")
    lost = [key for key in row_keys(found[0]) if key not in set(row_keys(body))]
    if lost and os.environ.get(DROP_ROWS_ENV) != "1":
        raise SystemExit(f"{readme.name} bench:{name}: the new table lacks the rows {', '.join(lost)} that the README "
                         f"has (their results are not in benchmarks/out/). Run them too, write this row in by hand "
                         f"(--no-readme), or set {DROP_ROWS_ENV}=1 to drop them.")
    block = f"{start}\n{body}\n{end}"
    readme.write_text(re.sub(pattern, lambda _: block, text, flags=re.S), encoding="utf-8")


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
