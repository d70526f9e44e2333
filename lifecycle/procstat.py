"""Memory figures of a process from Linux ``/proc/<pid>/status``, in bytes.

Standard library only: the benchmarks read a baseline with it before importing anything they measure.
"""

from __future__ import annotations

FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile")


def memory_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS (resident), VmHWM (peak resident), RssAnon (private memory) and RssFile (mapped files such as
    shared-library code and model flatbuffers) of a process, in bytes; zeros where /proc or a field is missing."""
    found = dict.fromkeys(FIELDS, 0)
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in found:
                    found[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return found
