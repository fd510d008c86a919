"""The compute ceiling of the first token.

An encoder pass or a prefill of hundreds of tokens is matrix-matrix work, so its time is at least
its FLOPs (models/cost.py) over the peak FLOP/s this machine reaches with the runtime's own MatMul,
at the run's threads and compute precision. The peak is the best of model-shaped products (a
330M-class prefill's [tokens x 1024] by [1024 x 4096] and back, a square 2048 one, and a 100M-class
[256 x 768] by [768 x 2048], which stays in cache and so runs fastest), weights constant as a
model's are (so the runtimes prepack them), best of 20 trials (OpenVINO's first few calls of a
compiled MatMul run up to a quarter slower: best of 5 read 145 GFLOP/s where 20 read 192 on the EPYC
VM), and kept as the machine's best quiet reading (host/readings.py). A first token faster than its ceiling
re-measures once; a fraction still above 1 is marked `exceeded` (the ceiling was no bound).

Measured for the compute a CPU run really uses: ONNX Runtime fp32 graphs (f32), and OpenVINO's
compiled INFERENCE_PRECISION_HINT (f32, bf16). Other kernels (int8 dynamic quantisation, int4
MatMulNBits, fp16 on a CPU) have other peaks, not measured: their rows say so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slmbench.host.roofline import openvino_chain_seconds, ort_chain_seconds

SHAPES = ((512, 1024, 4096), (512, 4096, 1024), (2048, 2048, 2048), (256, 768, 2048))  # rows x inner x columns


def _weights(k: int, n: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((k, n), np.float32) * 0.03


def _flops_per_s(m: int, k: int, n: int, seconds: float | None) -> float | None:
    return None if seconds is None else 2 * m * k * n / seconds


def _onnxruntime(m: int, k: int, n: int, compute: str, threads: int, trials: int) -> float | None:
    if compute != "f32":  # the CPU provider's MatMul computes in the graph's f32
        return None
    return _flops_per_s(m, k, n, ort_chain_seconds([_weights(k, n)], threads, trials, rows=m))


def _openvino(m: int, k: int, n: int, compute: str, threads: int, trials: int) -> float | None:
    return _flops_per_s(m, k, n, openvino_chain_seconds([_weights(k, n)], threads, trials, rows=m, compute=compute))


KERNELS = {"onnxruntime": _onnxruntime, "openvino": _openvino}


def measure_peak_flops(runtime: str, compute: str, threads: int, trials: int = 20) -> dict:
    """FLOP/s of `runtime`'s MatMul at `compute` precision: the best shape's best of `trials`."""
    kernel = KERNELS[runtime]
    found = {"x".join(map(str, shape)): kernel(*shape, compute, threads, trials) for shape in SHAPES}
    found = {k: v for k, v in found.items() if v is not None}
    if not found:
        return {"flops_per_s": None, "method": None, "kernels": {}}
    best = max(found, key=found.get)
    return {"flops_per_s": found[best], "method": f"{runtime} MatMul {best} {compute}", "kernels": found,
            "threads": threads}


def host_peak_flops(runtime: str, compute: str, threads: int, cache_dir: Path | str, refresh: bool = False) -> dict:
    """This machine's best quiet peak for (runtime, compute, threads), in `compute.json` beside the
    artifact cache (host/readings.py)."""
    from slmbench.host.readings import stored_best

    return stored_best("compute.json", f"{runtime}|{compute}|t{threads}",
                       lambda: measure_peak_flops(runtime, compute, threads), "flops_per_s", cache_dir, refresh)


def row_compute_ceiling(first_token_flops: int, runtime: str, compute: str | None, threads: int,
                        cache_dir: Path | str, ttft_s: float | None) -> dict:
    """The compute ceiling a row's TTFT is read against: the first token's FLOPs (encoder + first
    step, or the prefill, x batch), the machine's peak for this runtime and compute precision, the
    shortest TTFT that allows, and (given the measured TTFT) the fraction of that ceiling reached."""
    if runtime not in KERNELS or compute is None:
        return {"first_token_flops": first_token_flops, "fraction_of_ceiling": None,
                "bound": f"none: no peak measured for {runtime} at this compute precision"}
    reading, remeasured = host_peak_flops(runtime, compute, threads, cache_dir), False
    peak = reading.get("flops_per_s")
    if peak and ttft_s and first_token_flops / ttft_s > peak:
        reading, remeasured = host_peak_flops(runtime, compute, threads, cache_dir, refresh=True), True
        peak = reading.get("flops_per_s")
    if not peak:
        return {"first_token_flops": first_token_flops, "fraction_of_ceiling": None,
                "bound": f"none: {runtime} does not compute in {compute} here"}
    ceiling_s = first_token_flops / peak
    fraction = ceiling_s / ttft_s if ttft_s else None
    return {"first_token_flops": first_token_flops, "compute_precision": compute, "peak_flops_per_s": peak,
            "peak_method": reading.get("method"), "peak_measured": reading.get("measured"),
            "peak_quiet": reading.get("quiet"), "peak_readings": reading.get("readings", 1),
            "ceiling_ttft_s": ceiling_s, "fraction_of_ceiling": fraction, "remeasured": remeasured,
            "exceeded": bool(fraction and fraction > 1)}
