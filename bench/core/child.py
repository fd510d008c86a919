"""Run a function in a fresh (spawned) Python process and return its result.

An export builds the model in PyTorch and leaves gigabytes of freed, fragmented heap behind; a
runtime loaded into that process afterwards gets a different memory and huge-page layout than in
a clean one (make perf saw deconly-330m's decode change by that alone). So whatever measures
after an export runs the export here. Warnings raised in the child are raised again in the
caller; an exception comes back as itself; a child that dies (a signal, the OOM killer) is a
ChildDied naming how.
"""

from __future__ import annotations

import multiprocessing
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool


class ChildDied(RuntimeError):
    """The fresh process ended without a result (killed, or out of memory)."""


def _call(fn, args):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args)
    return result, [(str(w.message), w.category) for w in caught]


def in_fresh_process(fn, *args):
    """fn(*args) in a spawned process (fn and args picklable)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            result, caught = pool.submit(_call, fn, args).result()
        except BrokenProcessPool:
            raise ChildDied(f"the process running {fn.__name__} died without a result (killed by a signal, "
                            "or out of memory)") from None
    for message, category in caught:
        warnings.warn(message, category, stacklevel=2)
    return result
