"""Process memory high-water mark (Linux VmHWM, resettable; getrusage elsewhere)."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")
MADV_DONTNEED = 4


def libc_with_madvise():
    """The C library with madvise typed (Linux), for the memory calls of this package."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter so the next reading covers only what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_field(name: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def current_rss() -> int | None:
    return _status_field("VmRSS")


def peak_rss() -> int:
    hwm = _status_field("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def release_mapped_files(paths) -> int:
    """Drop this process's resident pages of read-only mappings of `paths` (MADV_DONTNEED), and
    return how much the RSS fell. A runtime that maps a weights file and then builds its own copy
    of the weights keeps the file's pages counted in the RSS though it no longer reads most of
    them; what it still reads faults back in from the page cache. Only mappings without write
    permission are touched: for those, dropping a page can never lose data."""
    wanted = {str(Path(p).resolve()) for p in paths}
    if not sys.platform.startswith("linux") or not wanted:
        return 0
    libc, before = libc_with_madvise(), current_rss() or 0
    for line in Path("/proc/self/maps").read_text().splitlines():
        head = line.split(maxsplit=5)
        if len(head) == 6 and head[5] in wanted and "w" not in head[1]:
            lo, hi = (int(x, 16) for x in head[0].split("-"))
            libc.madvise(lo, hi - lo, MADV_DONTNEED)
    return max(0, before - (current_rss() or 0))
