"""A user's own export against its checkpoint, measured in one run (issue 19; README "An exported folder").

`tests/fixtures/optimum/make.py --size check DIR` (in the optimum environment) writes a ~100M Llama
and a ~124M T5 as checkpoints and as optimum's ONNX and OpenVINO exports; then `slmbench run` with
`-m hf:DIR/NAME/checkpoint -m onnx:DIR/NAME/onnx` (or `-r openvino ... -m ov:DIR/NAME/ov`) measures
both interleaved, and

    python -m slmbench.tools.byo_check RESULTS.jsonl

prints, for each export, its median TTFT, TPOT and decode tok/s over those of the `hf:` row of the
same checkpoint (the folder beside it), runtime and run.
"""

from __future__ import annotations

import sys
from pathlib import Path

from slmbench.core.metrics import row_stat
from slmbench.results import read_rows

METRICS = ("ttft_s", "tpot_s", "decode_tps")


def checkpoint_of(row: dict) -> Path:
    """The model folder's parent: DIR/NAME for DIR/NAME/checkpoint, DIR/NAME/onnx and DIR/NAME/ov."""
    return Path(row["model"].split(":", 1)[1]).resolve().parent


def export_ratios(rows: list[dict]) -> list[dict]:
    """Per export row: its metrics over those of its checkpoint's hf: row in the same run."""
    ok = [r for r in rows if r.get("status") == "ok"]
    out = []
    for r in ok:
        if r["model"].split(":", 1)[0] not in ("onnx", "ov"):
            continue
        for h in ok:
            if (h["model"].startswith("hf:") and h["group"] == r["group"] and h["runtime"] == r["runtime"]
                    and checkpoint_of(h) == checkpoint_of(r)):
                out.append({"export": r["model"], "runtime": r["runtime"], "machine": r["machine"]["name"],
                            **{m: row_stat(r, m) / row_stat(h, m) for m in METRICS}})
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[0], "\nusage: python -m slmbench.tools.byo_check RESULTS.jsonl")
        return 2
    for r in export_ratios(read_rows([argv[0]])):
        print(f"{r['export']} ({r['runtime']}, {r['machine']}): export / hf: TTFT {r['ttft_s']:.3f}, "
              f"TPOT {r['tpot_s']:.3f}, decode tok/s {r['decode_tps']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
