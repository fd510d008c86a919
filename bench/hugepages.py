"""Back a loaded model's weights with transparent huge pages (Linux), and say whether it worked.

Batch-1 decoding streams every weight once per token. With 4 KiB pages that is ~350,000 TLB
misses per token for a 330M fp32 model, each a page walk (two-level under a VM's nested
paging), and the hardware prefetcher stops at every page boundary. On this project's 2-core VM a
deconly-330m decode step took 74-120 ms on 4 KiB pages and 65 ms on 2 MiB pages, run to run
(bench/perf.py); numpy, which the bandwidth ceiling is measured with, already asks for huge
pages for its large arrays. Where THP is `madvise` (Ubuntu's default) the runtimes' weight
buffers get small pages unless someone asks, so after a load we ask: MADV_COLLAPSE (Linux 6.1+)
rebuilds the process's anonymous memory as huge pages synchronously, whatever the sysfs mode
(except `never`). It is best effort: what it achieved is recorded in every result row.
SLMBENCH_HUGE_PAGES=0 turns it off (to measure the small-page behaviour on purpose).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

MADV_HUGEPAGE, MADV_COLLAPSE = 14, 25
HUGE_PAGE = 2 << 20
SMALL_PAGE_SLACK = 8 << 20  # regions with less small-page memory than this are left alone
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


def _small_page_regions():
    """(start, end) of writable anonymous mappings holding >= SMALL_PAGE_SLACK in small pages,
    trimmed to huge-page boundaries."""
    region, rss, huge = None, 0, 0
    text = Path("/proc/self/smaps").read_text()
    for line in [*text.splitlines(), "0-0 ---- 0 0 0"]:  # a sentinel header flushes the last one
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:
            if region and rss - huge >= SMALL_PAGE_SLACK:
                start = (region[0] + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1)
                end = region[1] & ~(HUGE_PAGE - 1)
                if end > start:
                    yield start, end
            lo, hi = (int(x, 16) for x in head[0].split("-"))
            anonymous = head[4] == "0" and (len(head) == 5 or head[5] == "[heap]")
            region = (lo, hi) if anonymous and head[1].startswith("rw") else None
            rss = huge = 0
        elif head and head[0] == "Rss:":
            rss = int(head[1]) * 1024
        elif head and head[0] == "AnonHugePages:":
            huge = int(head[1]) * 1024


def back_with_huge_pages() -> dict:
    """Collapse this process's small-page anonymous memory (a just-loaded model) into huge pages.
    Returns what a result row records: the outcome, the time it took, the huge-page bytes after."""
    mode = thp_mode()
    if os.environ.get("SLMBENCH_HUGE_PAGES", "1") == "0":
        return {"status": "disabled (SLMBENCH_HUGE_PAGES=0)", "thp_mode": mode, "anon_huge_bytes": anon_huge_bytes()}
    if not sys.platform.startswith("linux") or mode in (None, "never"):
        return {"status": f"unavailable (THP {mode or 'absent'})", "thp_mode": mode, "anon_huge_bytes": None}
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    started = time.perf_counter()
    collapsed = refused = 0
    errors = set()
    for start, end in list(_small_page_regions()):
        libc.madvise(start, end - start, MADV_HUGEPAGE)  # later faults in the region too
        if libc.madvise(start, end - start, MADV_COLLAPSE) == 0:
            collapsed += end - start
        else:  # EAGAIN/ENOMEM: no free huge page; EINVAL: kernel < 6.1 or an unsuitable region
            refused += end - start
            errors.add(os.strerror(ctypes.get_errno()))
    status = "collapsed" if collapsed else ("refused" if refused else "nothing to do")
    return {"status": status, "thp_mode": mode, "collapsed_bytes": collapsed, "refused_bytes": refused,
            "errors": sorted(errors), "seconds": time.perf_counter() - started,
            "anon_huge_bytes": anon_huge_bytes()}
