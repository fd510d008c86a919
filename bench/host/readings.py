"""A machine's best quiet reading of a ceiling (bandwidth, peak FLOP/s), kept between runs.

A single reading of a peak is no bound (the same kernel read 39-47 GB/s run to run here), so what
a row is read against is the best quiet reading this machine has given for that key: stored in a
JSON file beside the artifact cache, keyed by machine identity and the reading's own key, under a
lock (two sweeps may ask at once). A reading taken while the machine was busy is used if it is the
best, but never stored.
"""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Callable
from pathlib import Path


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def stored_best(file_name: str, key: str, measure: Callable[[], dict], value: str, cache_dir: Path | str,
                refresh: bool = False) -> dict:
    """The best stored reading for `key` in `<cache parent>/file_name`, measured first if none is
    stored; `refresh` measures again and keeps the better (higher `value`) of the two."""
    from slmbench.host.contention import MachineBusy, wait_until_quiet
    from slmbench.host.environment import this_machine

    key = f"{this_machine()['id']}|{key}"
    path = Path(cache_dir).parent / file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            known = json.loads(path.read_text())
        except (OSError, ValueError):
            known = {}
        previous = known.get(key)
        if previous is not None and not refresh:
            return previous
        try:
            wait_until_quiet(max_wait_s=30.0, log=lambda m: None)
            quiet = True
        except MachineBusy:
            quiet = False
        reading = {**measure(), "quiet": quiet, "machine": this_machine()["name"], "measured": _stamp()}
        best = reading if previous is None or reading[value] > previous[value] else previous
        best = {**best, "readings": (previous or {}).get("readings", 1 if previous else 0) + 1,
                "latest": {value: reading[value], "method": reading.get("method"),
                           "measured": reading["measured"], "quiet": quiet}}
        if quiet:
            known[key] = best
            path.write_text(json.dumps(known, indent=1))
        return best
