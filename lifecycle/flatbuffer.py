"""Reading a TFLite flatbuffer's tables with struct: no schema module, no flatbuffers package.

The generated schema module would add 4 MB to a serving process, and a serving process reads only two things: the
operator table (lifecycle.litert, before it lets the runtime see a file) and the buffer table (lifecycle.litepack).
"""

from __future__ import annotations

import struct
from typing import Any


class Reader:
    """Offsets and scalars of a flatbuffer in ``buf`` (bytes, bytearray or an mmap); ValueError when out of range."""

    def __init__(self, buf: Any) -> None:
        self.buf = buf
        self.size = len(buf)

    def read(self, fmt: str, at: int) -> Any:
        """The scalar of struct format ``fmt`` at ``at``."""
        if at < 0 or at + struct.calcsize(fmt) > self.size:
            raise ValueError(f"offset {at} outside the buffer")
        return struct.unpack_from(fmt, self.buf, at)[0]

    def field(self, table: int, index: int) -> int | None:
        """Where a table's field ``index`` is stored (None when absent, i.e. its default)."""
        vtable = table - self.read("<i", table)
        slot = 4 + 2 * index
        if slot + 2 > self.read("<H", vtable):
            return None
        offset = self.read("<H", vtable + slot)
        return table + offset if offset else None

    def target(self, at: int) -> int:
        """The table or vector an offset at ``at`` points to."""
        return int(at + self.read("<I", at))

    def root(self) -> int:
        """The root table (for a TFLite file: its Model)."""
        return self.target(0)

    def vector(self, at: int) -> tuple[int, int]:
        """(start of the elements, count) of the vector the offset at ``at`` points to."""
        vector = self.target(at)
        return vector + 4, int(self.read("<I", vector))
