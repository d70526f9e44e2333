"""The one place benchmarks write their figures into README.md: the block between ``<!-- bench:NAME:start -->`` and
``<!-- bench:NAME:end -->`` is replaced, and a README without that block is an error."""

from __future__ import annotations

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
