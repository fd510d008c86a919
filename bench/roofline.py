"""The memory-bandwidth ceiling of batch-1 decoding.

Each decode step reads every weight it uses once (and the KV cache so far), so tokens/s cannot
exceed bandwidth / bytes read per token. A ceiling must be a true bound, so the bandwidth is the
best of several read kernels over buffers far above the last-level cache, at the run's thread
count: numpy's sum, and ONNX Runtime's own MatMul streaming a 512 MiB fp32 matrix against a vector
(measured on an AMD EPYC VM: numpy sum 29.8 GB/s, ORT matrix-vector 40-46 GB/s; numpy alone was no
bound, and even the best kernel is below the ~52 GB/s deconly-330m's decode implies there, so the
report flags any fraction above 1). It is measured on a quiet machine (checked),
stored per machine identity and thread count under the artifact cache's folder, with a lock, and
every row says how and when it was measured.
"""

from __future__ import annotations

import fcntl
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

BYTES_PER_PARAM = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "int4": 0.5}


def _best(work, trials: int) -> float:
    best = float("inf")
    for _ in range(trials):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def _numpy_kernels(src: np.ndarray, threads: int, trials: int) -> dict[str, float]:
    dst = np.empty_like(src)
    bounds = [(c[0], c[-1] + 1) for c in np.array_split(np.arange(src.size), threads)]
    with ThreadPoolExecutor(threads) as pool:  # numpy releases the GIL in both
        read = _best(lambda: list(pool.map(lambda b: float(src[b[0]:b[1]].sum()), bounds)), trials)
        copy = _best(lambda: list(pool.map(lambda b: np.copyto(dst[b[0]:b[1]], src[b[0]:b[1]]), bounds)), trials)
    return {"numpy_sum": src.nbytes / read, "numpy_copy": 2 * src.nbytes / copy}


def _ort_matvec(weights: np.ndarray, threads: int, trials: int) -> float | None:
    """Read bytes/s of ONNX Runtime's MatMul of a [1, K] vector by constant [K, N] weights: the
    decode's own kernel, weights prepacked as the model's are. None without onnxruntime."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    k, n = weights.shape
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "matvec",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
                              initializer=[numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    del model, graph
    feed = {"x": np.ones((1, k), np.float32)}
    session.run(None, feed)
    return weights.nbytes / _best(lambda: session.run(None, feed), trials)


def measure_bandwidth(threads: int = 2, megabytes: int = 512, trials: int = 5) -> dict:
    """Read bandwidth in bytes/s: the best kernel's best of `trials`, with every kernel's figure."""
    src = np.ones(megabytes * (1 << 20) // 4, np.float32)
    kernels = _numpy_kernels(src, threads, trials)
    matvec = _ort_matvec(src.reshape(-1, 16384), threads, trials)
    if matvec is not None:
        kernels["onnxruntime_matvec"] = matvec
    reads = {k: v for k, v in kernels.items() if k != "numpy_copy"}
    best = max(reads, key=reads.get)
    return {"read_bytes_per_s": reads[best], "copy_bytes_per_s": kernels["numpy_copy"], "method": best,
            "kernels": kernels, "buffer_bytes": src.nbytes, "threads": threads}


def decode_bytes_per_token(cfg, precision: str = "fp32", position: int = 0, source_len: int = 0) -> dict:
    """Bytes one batch-1 decode step must read: decoder weights, the LM head, and the KV cache.

    The encoder's weights are not read while decoding, nor the embedding table beyond one row
    (but a tied LM head reads the whole table). KV bytes count fp32 caches at `position`.
    """
    weights = cfg.parameter_count()
    if cfg.is_encoder_decoder:
        encoder = cfg.encoder_layers * cfg.encoder_layer_parameters + cfg.hidden  # with its final norm
        cross_kv = cfg.decoder_layers * 2 * cfg.hidden * cfg.kv_heads * cfg.head_dim
        weights -= encoder + cross_kv  # cross K/V projections run once per request, not per token
    if not cfg.tie_embeddings:
        weights -= cfg.vocab_size * cfg.hidden  # the input table is looked up, not streamed
    kv_row = 2 * cfg.kv_heads * cfg.head_dim * 4 * cfg.decoder_layers
    kv_bytes = kv_row * position + (kv_row * source_len if cfg.is_encoder_decoder else 0)
    weight_bytes = weights * BYTES_PER_PARAM[precision]
    return {"weight_bytes": int(weight_bytes), "kv_bytes": int(kv_bytes),
            "bytes_per_token": int(weight_bytes + kv_bytes)}


def ceiling_tokens_per_s(bytes_per_token: float, bandwidth: float) -> float:
    return bandwidth / bytes_per_token


def host_bandwidth(threads: int, refresh: bool = False, cache_dir: Path | str | None = None) -> dict:
    """This machine's read bandwidth at `threads`, measured once on a quiet machine and stored in
    `bandwidth.json` beside the artifact cache, keyed by machine identity and threads (under a lock:
    two sweeps may ask at once). A reading the machine was too busy for is used but not stored."""
    from slmbench.contention import MachineBusy, wait_until_quiet
    from slmbench.environment import this_machine
    from slmbench.exporters.artifact import default_cache_dir

    key = f"{this_machine()['id']}|t{threads}"
    path = Path(cache_dir).parent / "bandwidth.json" if cache_dir else default_cache_dir().parent / "bandwidth.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            known = json.loads(path.read_text())
        except (OSError, ValueError):
            known = {}
        if not refresh and key in known:
            return known[key]
        try:
            wait_until_quiet(max_wait_s=30.0, log=lambda m: None)
            quiet = True
        except MachineBusy:
            quiet = False
        reading = {**measure_bandwidth(threads, megabytes=512, trials=3), "quiet": quiet,
                   "machine": this_machine()["name"], "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if quiet:
            known[key] = reading
            path.write_text(json.dumps(known, indent=1))
        return reading


def row_roofline(cfg, precision: str, input_len: int, output_len: int, threads: int,
                 decode_tps: float | None = None, batch: int = 1, cache_dir=None) -> dict:
    """The ceiling a result row is read against: bytes per decode token at the mean position of
    the generation, the machine's bandwidth, the tokens/s those allow at batch 1, and (given the
    measured decode tokens/s) the fraction of that ceiling reached (above 1: the ceiling is no
    bound, and the report says so)."""
    if cfg.is_encoder_decoder:
        need = decode_bytes_per_token(cfg, precision, position=output_len // 2, source_len=input_len)
    else:
        need = decode_bytes_per_token(cfg, precision, position=input_len + output_len // 2)
    reading = host_bandwidth(threads, cache_dir=cache_dir)
    bandwidth = reading["read_bytes_per_s"]
    ceiling = ceiling_tokens_per_s(need["bytes_per_token"], bandwidth)
    return {**need, "read_bandwidth_bytes_per_s": bandwidth, "ceiling_tokens_per_s": ceiling,
            "bandwidth_method": reading.get("method", "numpy_sum"), "bandwidth_measured": reading.get("measured"),
            "bandwidth_quiet": reading.get("quiet"),
            "fraction_of_ceiling": decode_tps / batch / ceiling if decode_tps else None}
