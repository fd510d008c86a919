"""slmbench against Hugging Face optimum on the same checkpoints, side by side (issue 18).

optimum is never a dependency: it runs in a throwaway environment (docs/environment.md lists a set
that installs together) with slmbench installed there without dependencies, for its metric
definitions only. Three commands:

- `checkpoint` (in the optimum environment): random-weight Llama and T5 checkpoints, so both tools
  read the same files;
- `optimum` (in the optimum environment): one process timing optimum's generate() with slmbench's
  definitions: t_0 before generate(), t_i when token i reaches the streamer (greedy, fixed length);
- `compare` (in slmbench's environment): whole processes alternating, slmbench `run -m hf:DIR`
  then optimum, per model and configuration, for `--rounds`; prints and writes the slmbench /
  optimum ratios of median TTFT (lower is better) and decode tok/s (higher is better).

Example:
  /tmp/peers/bin/python -m slmbench.tools.peers checkpoint --out /tmp/ckpt
  .venv/bin/python -m slmbench.tools.peers compare --peer-python /tmp/peers/bin/python --ckpt /tmp/ckpt
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

# (slmbench precision, optimum's compile config): f32 pinned on both sides, and each side's bf16 /
# default; ONNX Runtime has one (f32).
CONFIGS = {
    "onnxruntime": [("fp32", "f32")],
    "openvino": [("fp32", "f32"), ("bf16", "default")],
}


@click.group()
def main():
    """slmbench against optimum, interleaved processes on the same checkpoints."""


@main.command()
@click.option("--out", type=click.Path(path_type=Path), required=True)
def checkpoint(out: Path):
    """Random-weight checkpoints: a ~290M Llama and a ~285M T5 (transformers' own classes)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    llama = LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=20, num_attention_heads=16,
                        num_key_value_heads=16, vocab_size=32000, max_position_embeddings=2048,
                        tie_word_embeddings=True)
    t5 = T5Config(d_model=1024, d_ff=2048, d_kv=64, num_heads=16, num_layers=10, num_decoder_layers=10,
                  vocab_size=32128, feed_forward_proj="gated-gelu", tie_word_embeddings=True,
                  decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    for name, model in (("llama", LlamaForCausalLM(llama)), ("t5", T5ForConditionalGeneration(t5))):
        model.eval().save_pretrained(out / name)
        click.echo(f"{out / name}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters")


class _Stamps:
    """A streamer that records when each generated token reaches it (the first put is the prompt)."""

    def __init__(self):
        self.stamps, self.seen_prompt = [], False

    def put(self, value):
        if self.seen_prompt:
            self.stamps.append(time.perf_counter_ns())
        self.seen_prompt = True

    def end(self):
        pass


def _optimum_model(ckpt: Path, runtime: str, compute: str, threads: int, cache: Path):
    """optimum's model for `ckpt`, exported once into `cache` and loaded from there."""
    seq2seq = (ckpt / "config.json").read_text().find('"T5ForConditionalGeneration"') >= 0
    if runtime == "onnxruntime":
        import onnxruntime as ort
        from optimum.onnxruntime import ORTModelForCausalLM, ORTModelForSeq2SeqLM

        cls = ORTModelForSeq2SeqLM if seq2seq else ORTModelForCausalLM
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        kwargs = {"session_options": options}
    else:
        from optimum.intel import OVModelForCausalLM, OVModelForSeq2SeqLM

        cls = OVModelForSeq2SeqLM if seq2seq else OVModelForCausalLM
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        if compute == "f32":
            config.update(INFERENCE_PRECISION_HINT="f32", KV_CACHE_PRECISION="f32")
        kwargs = {"ov_config": config}
        if seq2seq:  # optimum-intel 1.27's stateful seq2seq export fails ("!get_names().empty()")
            kwargs["stateful"] = False
    folder = cache / f"{ckpt.name}-{runtime}"
    if not folder.exists():
        cls.from_pretrained(str(ckpt), export=True, **kwargs).save_pretrained(folder)
    return cls.from_pretrained(str(folder), **kwargs), seq2seq


@main.command()
@click.option("--ckpt", type=click.Path(path_type=Path), required=True)
@click.option("--runtime", type=click.Choice(sorted(CONFIGS)), required=True)
@click.option("--compute", type=click.Choice(["f32", "default"]), default="f32")
@click.option("-i", "--input-len", type=int, default=256)
@click.option("-o", "--output-len", type=int, default=64)
@click.option("--reps", type=int, default=5)
@click.option("--threads", type=int, default=2)
@click.option("--cache", type=click.Path(path_type=Path), required=True)
def optimum(ckpt, runtime, compute, input_len, output_len, reps, threads, cache):
    """Time optimum's generate() with slmbench's metric definitions; prints one JSON line."""
    import torch

    from slmbench.core.metrics import repetition_metrics

    model, _ = _optimum_model(ckpt, runtime, compute, threads, cache)
    ids = torch.as_tensor(np.random.default_rng(0).integers(1, 32000, (1, input_len)))
    found = []
    for rep in range(reps + 1):  # the first is the cold run, left out
        streamer = _Stamps()
        t0 = time.perf_counter_ns()
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=output_len,
                       min_new_tokens=output_len, do_sample=False, streamer=streamer)
        if rep:
            found.append(repetition_metrics([0] + [s - t0 for s in streamer.stamps], None, 1))
    click.echo(json.dumps({k: float(np.median([m[k] for m in found])) for k in ("ttft_s", "decode_tps")}))


def _child(cmd: list[str]) -> str:
    """Run one measuring process; its failure is one line naming it and the last line it printed."""
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise click.ClickException(f"{' '.join(cmd[1:5])} ... exited {done.returncode}: {last}")
    return done.stdout


def _slmbench(ckpt: Path, runtime: str, precision: str, input_len: int, output_len: int, reps: int, threads: int,
              results: Path) -> dict:
    cmd = [sys.executable, "-m", "slmbench.cli", "run", "-m", f"hf:{ckpt}", "--runtime", runtime, "-p", precision,
           "-i", str(input_len), "-o", str(output_len), "--min-reps", str(reps), "--min-time", "0",
           "--threads", str(threads), "--results", str(results)]
    _child(cmd)
    row = json.loads(results.read_text().splitlines()[-1])
    return {k: row["metrics"][k]["median"] for k in ("ttft_s", "decode_tps")}


@main.command()
@click.option("--peer-python", type=click.Path(exists=True, path_type=Path), required=True)
@click.option("--ckpt", type=click.Path(exists=True, path_type=Path), required=True)
@click.option("-i", "--input-len", type=int, default=256)
@click.option("-o", "--output-len", type=int, default=64)
@click.option("--reps", type=int, default=5)
@click.option("--rounds", type=int, default=2)
@click.option("--threads", type=int, default=2)
@click.option("--runtime", "runtimes", multiple=True, type=click.Choice(sorted(CONFIGS)),
              help="Only these runtimes (default: all).")
@click.option("--model", "names", multiple=True,
              help="Only the checkpoints under --ckpt with this folder name, e.g. t5 (default: all): rounds "
                   "spent where a ratio is in doubt.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("results/peers/peers.jsonl"))
def compare(peer_python, ckpt, input_len, output_len, reps, rounds, threads, runtimes, names, out):
    """slmbench / optimum ratios, whole processes alternating, on every checkpoint under --ckpt."""
    from slmbench.host.environment import environment, this_machine

    models = sorted(p for p in ckpt.iterdir() if (p / "config.json").exists() and (not names or p.name in names))
    if not models:
        raise click.UsageError(f"no checkpoint {'named ' + ', '.join(names) + ' ' if names else ''}under {ckpt}")
    cache = Path(tempfile.mkdtemp(prefix="slmbench-peers-"))
    out.parent.mkdir(parents=True, exist_ok=True)
    for model in models:
        for runtime, configs in CONFIGS.items():
            if runtimes and runtime not in runtimes:
                continue
            for precision, compute in configs:
                ours, theirs = [], []
                for _ in range(rounds):
                    ours.append(_slmbench(model, runtime, precision, input_len, output_len, reps, threads,
                                          cache / "rows.jsonl"))
                    peer = _child([str(peer_python), "-m", "slmbench.tools.peers", "optimum", "--ckpt", str(model),
                                   "--runtime", runtime, "--compute", compute, "-i", str(input_len), "-o",
                                   str(output_len), "--reps", str(reps), "--threads", str(threads), "--cache",
                                   str(cache)])
                    theirs.append(json.loads(peer.strip().splitlines()[-1]))
                med = lambda xs, k: float(np.median([x[k] for x in xs]))
                line = {"model": model.name, "runtime": runtime, "slmbench_precision": precision,
                        "optimum_compute": compute, "input_len": input_len, "output_len": output_len,
                        "rounds": rounds, "slmbench": ours, "optimum": theirs,
                        "ttft_ratio": med(ours, "ttft_s") / med(theirs, "ttft_s"),
                        "decode_ratio": med(ours, "decode_tps") / med(theirs, "decode_tps"),
                        "machine": this_machine(), "environment": environment()}
                with open(out, "a") as f:  # each comparison as it completes: a later failure loses none
                    f.write(json.dumps(line) + "\n")
                click.echo(f"{model.name:6s} {runtime:12s} slmbench {precision} vs optimum {compute}: TTFT ratio "
                           f"{line['ttft_ratio']:.2f}, decode tok/s ratio {line['decode_ratio']:.2f}")


if __name__ == "__main__":
    main()
