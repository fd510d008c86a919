"""Back a loaded model's weights with transparent huge pages (Linux), and say whether it worked.

Batch-1 decoding streams every weight once per token. With 4 KiB pages that is ~350,000 TLB
misses per token for a 330M fp32 model, each a page walk (two-level under a VM's nested
paging), and the hardware prefetcher stops at every page boundary. On this project's 2-core VM a
deconly-330m decode step took 74-120 ms on 4 KiB pages and 65 ms on 2 MiB pages, run to run
(bench/tools/perf.py); numpy, which the bandwidth ceiling is measured with, already asks for huge
pages for its large arrays. Where THP is `madvise` (Ubuntu's default) the runtimes' weight
buffers get small pages unless someone asks, so after a load we ask: MADV_COLLAPSE (Linux 6.1+)
rebuilds fully resident 2 MiB ranges of the process's anonymous memory as huge pages,
synchronously, whatever the sysfs mode (except `never`). Before that, glibc's malloc_trim hands
back what the runtime freed during the load (ONNX Runtime parses the whole graph, copies the
initializers and prepacks them: without the trim the freed copies stayed resident in some runs,
1.22x vs 1.9x the weights for the same deconly-330m artifact). Best effort; what it achieved is
recorded in every result row. SLMBENCH_HUGE_PAGES=0 keeps small pages (the trim still runs).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

MADV_COLLAPSE = 25
HUGE_PAGE = 2 << 20
SMALL_PAGE = 4096
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode() -> str | None:
    """The system's THP setting, e.g. 'madvise' (the bracketed word of the sysfs file)."""
    try:
        text = THP_MODE.read_text()
    except OSError:
        return None
    return text[text.find("[") + 1:text.find("]")] if "[" in text else text.strip()


def anon_huge_bytes() -> int | None:
    """This process's anonymous memory currently in huge pages."""
    try:
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _anonymous_regions():
    """(start, end) of this process's writable anonymous mappings, the heap included."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        head = line.split()
        if len(head) >= 5 and head[4] == "0" and head[1].startswith("rw") and (len(head) == 5 or head[5] == "[heap]"):
            lo, hi = (int(x, 16) for x in head[0].split("-"))
            if hi - lo >= HUGE_PAGE:
                yield lo, hi


def _dense_ranges(lo: int, hi: int, pagemap) -> list[tuple[int, int]]:
    """Runs of huge-page-aligned 2 MiB ranges in [lo, hi) whose every 4 KiB page is resident.
    Only those are collapsed: a huge page over a partly empty range (a heap with freed holes)
    would fill the holes and grow the RSS."""
    import numpy as np

    start, end = (lo + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1), hi & ~(HUGE_PAGE - 1)
    if end <= start:
        return []
    pagemap.seek(start // SMALL_PAGE * 8)
    entries = np.frombuffer(pagemap.read((end - start) // SMALL_PAGE * 8), np.uint64)
    dense = ((entries >> np.uint64(63)) == 1).reshape(-1, HUGE_PAGE // SMALL_PAGE).all(axis=1)
    runs, first = [], None
    for i, full in enumerate([*dense.tolist(), False]):
        if full and first is None:
            first = i
        elif not full and first is not None:
            runs.append((start + first * HUGE_PAGE, start + i * HUGE_PAGE))
            first = None
    return runs


def _trim_heap(libc) -> int:
    """Give freed heap memory back to the kernel (glibc's malloc_trim): a runtime's load-time
    copies, freed but still resident, are not the model's memory. Returns the RSS released."""
    from slmbench.host.memory import current_rss

    trim = getattr(libc, "malloc_trim", None)
    if trim is None:  # not glibc
        return 0
    before = current_rss() or 0
    trim(0)
    return max(0, before - (current_rss() or 0))


def back_with_huge_pages() -> dict:
    """After a load: return freed heap memory, then rebuild the model's memory as huge pages.
    Returns what a result row records: the outcome, the bytes moved and released, the time."""
    mode = thp_mode()
    if not sys.platform.startswith("linux"):
        return {"status": "unavailable (not Linux)", "thp_mode": None, "anon_huge_bytes": None}
    import ctypes

    from slmbench.host.memory import libc_with_madvise

    libc = libc_with_madvise()
    started = time.perf_counter()
    trimmed = _trim_heap(libc)
    if os.environ.get("SLMBENCH_HUGE_PAGES", "1") == "0" or mode in (None, "never"):
        why = "disabled (SLMBENCH_HUGE_PAGES=0)" if mode not in (None, "never") else f"unavailable (THP {mode})"
        return {"status": why, "thp_mode": mode, "trimmed_bytes": trimmed, "anon_huge_bytes": anon_huge_bytes()}
    huge_before, refused, errors = anon_huge_bytes() or 0, 0, set()
    with open("/proc/self/pagemap", "rb") as pagemap:
        ranges = [r for lo, hi in list(_anonymous_regions()) for r in _dense_ranges(lo, hi, pagemap)]
    # No MADV_HUGEPAGE: with THP defrag `madvise` (the default) it makes every later fault in the
    # range compact memory synchronously, which stalled prefill's allocations (TTFT).
    for start, end in ranges:  # ranges already on huge pages return at once
        if libc.madvise(start, end - start, MADV_COLLAPSE) != 0:
            # EAGAIN/ENOMEM: no free huge page; EINVAL: kernel < 6.1 or an unsuitable range
            refused += end - start
            errors.add(os.strerror(ctypes.get_errno()))
    collapsed = max(0, (anon_huge_bytes() or 0) - huge_before)
    status = "collapsed" if collapsed else ("refused" if refused else "nothing to do")
    return {"status": status, "thp_mode": mode, "collapsed_bytes": collapsed, "refused_bytes": refused,
            "errors": sorted(errors), "trimmed_bytes": trimmed, "seconds": time.perf_counter() - started,
            "anon_huge_bytes": anon_huge_bytes()}
