"""The memory-bandwidth ceiling of batch-1 decoding.

Each decode step reads every weight it uses once (and the KV cache so far), so tokens/s cannot
exceed bandwidth / bytes read per token. A ceiling must be a true bound, so the bandwidth is the
best of several read kernels over 512 MiB (far above the last-level cache), at the run's thread
count: numpy's sum, ONNX Runtime's MatMul of a vector by one large prepacked matrix, and a chain
of model-shaped layers (1024x4096 and 4096x1024 matrices, as a decode step reads them) in ONNX
Runtime and in OpenVINO. On this project's 2-core AMD EPYC VM numpy read 26-44 GB/s, the large
matrix-vector product 39-47 GB/s run to run, and the 330M models decoded at ~43 GB/s: a single
reading is no bound, so the stored ceiling is the best reading this machine has given at these
threads, and a row that decodes faster than it re-measures before it is recorded (a fraction
above 1 that survives that is marked in the row and in the report). A model whose bytes per token
fit a few times in the last-level cache has no DRAM ceiling, and its rows say so instead.
Readings are taken on a quiet machine (checked), stored per machine identity and thread count
beside the artifact cache (host/readings.py), and every row says how and when its ceiling was measured.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

CACHE_MULTIPLE = 4  # bytes per token below this many last-level caches: no DRAM ceiling
LAYER_SHAPE = (1024, 4096)  # the 330M presets' MLP: a decode step's typical matrices


def last_level_cache_bytes() -> int | None:
    """The largest CPU cache this process's CPU 0 sees (Linux sysfs), or None."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KMG")) * scale)
    return max(sizes) if sizes else None


def best_seconds(work, trials: int) -> float:
    """The shortest of `trials` timed calls of `work` (a peak's reading: the least disturbed call)."""
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
        read = best_seconds(lambda: list(pool.map(lambda b: float(src[b[0]:b[1]].sum()), bounds)), trials)
        copy = best_seconds(lambda: list(pool.map(lambda b: np.copyto(dst[b[0]:b[1]], src[b[0]:b[1]]), bounds)), trials)
    return {"numpy_sum": src.nbytes / read, "numpy_copy": 2 * src.nbytes / copy}


def _layers(total_bytes: int) -> list[np.ndarray]:
    """Model-shaped weights, alternately [h, f] and [f, h], `total_bytes` in all. Each matrix has
    its own random values: ONNX Runtime shares identical initializers, and a chain of equal
    matrices read one copy from cache (178 GB/s 'bandwidth' here)."""
    h, f = LAYER_SHAPE
    rng = np.random.default_rng(0)
    count = max(2, total_bytes // (h * f * 4))
    return [rng.standard_normal((h, f) if i % 2 == 0 else (f, h), np.float32) * 0.03 for i in range(count)]


def ort_chain_seconds(weights: list[np.ndarray], threads: int, trials: int, rows: int = 1) -> float | None:
    """Best seconds of ONNX Runtime multiplying a [rows, K] input through constant matrices in turn
    (the model's own kernel, weights prepacked as the model's are; one untimed run first). None
    without onnxruntime."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    names = [f"w{i}" for i in range(len(weights))]
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"y{i - 1}", w], [f"y{i}"]) for i, w in enumerate(names)]
    graph = helper.make_graph(
        nodes, "matmuls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, weights[0].shape[0]])],
        [helper.make_tensor_value_info(f"y{len(weights) - 1}", TensorProto.FLOAT, [rows, weights[-1].shape[1]])],
        initializer=[numpy_helper.from_array(w, n) for w, n in zip(weights, names, strict=True)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    del model, graph
    feed = {"x": np.ones((rows, weights[0].shape[0]), np.float32)}
    session.run(None, feed)
    return best_seconds(lambda: session.run(None, feed), trials)


def openvino_chain_seconds(weights: list[np.ndarray], threads: int, trials: int, rows: int = 1,
                           compute: str = "f32") -> float | None:
    """The same chain compiled by OpenVINO's CPU plugin at `compute` (INFERENCE_PRECISION_HINT).
    None without openvino, or where the plugin would not compute in `compute` here."""
    try:
        import openvino as ov
        from openvino import opset13 as ops
    except ImportError:
        return None
    x = ops.parameter([rows, weights[0].shape[0]], np.float32)
    y = x
    for w in weights:
        y = ops.matmul(y, ops.constant(w), False, False)
    compiled = ov.Core().compile_model(ov.Model([y], [x]), "CPU", {
        "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": compute, "NUM_STREAMS": 1})
    got = compiled.get_property("INFERENCE_PRECISION_HINT")
    if (got.get_type_name() if hasattr(got, "get_type_name") else str(got)) != compute:
        return None
    request, feed = compiled.create_infer_request(), {0: np.ones((rows, weights[0].shape[0]), np.float32)}
    request.infer(feed)
    return best_seconds(lambda: request.infer(feed), trials)


def _bytes_per_s(weights: list[np.ndarray], seconds: float | None) -> float | None:
    return None if seconds is None else sum(w.nbytes for w in weights) / seconds


def measure_bandwidth(threads: int = 2, megabytes: int = 512, trials: int = 5) -> dict:
    """Read bandwidth in bytes/s: the best kernel's best of `trials`, with every kernel's figure."""
    src = np.ones(megabytes * (1 << 20) // 4, np.float32)
    kernels = _numpy_kernels(src, threads, trials)
    matrix = [src.reshape(-1, 16384)]
    found = {"onnxruntime_matvec": _bytes_per_s(matrix, ort_chain_seconds(matrix, threads, trials))}
    del src, matrix
    layers = _layers(megabytes << 20)
    found["onnxruntime_layers"] = _bytes_per_s(layers, ort_chain_seconds(layers, threads, trials))
    found["openvino_layers"] = _bytes_per_s(layers, openvino_chain_seconds(layers, threads, trials))
    kernels.update({k: v for k, v in found.items() if v is not None})
    reads = {k: v for k, v in kernels.items() if k != "numpy_copy"}
    best = max(reads, key=reads.get)
    return {"read_bytes_per_s": reads[best], "copy_bytes_per_s": kernels["numpy_copy"], "method": best,
            "kernels": kernels, "buffer_bytes": megabytes << 20, "threads": threads}


def ceiling_tokens_per_s(bytes_per_token: float, bandwidth: float) -> float:
    return bandwidth / bytes_per_token


def host_bandwidth(threads: int, cache_dir: Path | str, refresh: bool = False) -> dict:
    """This machine's read bandwidth at `threads`: the best quiet reading it has given, stored in
    `bandwidth.json` beside the artifact cache `cache_dir` (host/readings.py); `refresh` measures
    again and keeps the better of the two."""
    from slmbench.host.readings import stored_best

    return stored_best("bandwidth.json", f"t{threads}", lambda: measure_bandwidth(threads, megabytes=512, trials=3),
                       "read_bytes_per_s", cache_dir, refresh)


def row_roofline(need: dict, threads: int, cache_dir: Path | str, decode_tps: float | None = None,
                 batch: int = 1) -> dict:
    """The ceiling a result row is read against: the bytes one decode step reads (`need`, from
    models/cost.mean_decode_bytes), the machine's bandwidth, the tokens/s those allow at batch 1,
    and (given the measured decode tokens/s) the fraction of that ceiling reached. A decode faster
    than the ceiling re-measures the bandwidth once; a fraction still above 1 is marked `exceeded`."""
    llc = last_level_cache_bytes()
    if llc and need["bytes_per_token"] < CACHE_MULTIPLE * llc:
        return {**need, "ceiling_tokens_per_s": None, "fraction_of_ceiling": None, "last_level_cache_bytes": llc,
                "bound": f"none: {need['bytes_per_token'] >> 20} MiB per token fits in {CACHE_MULTIPLE}x the "
                         f"{llc >> 20} MiB last-level cache, so DRAM bandwidth does not bound it"}
    per_sequence = decode_tps / batch if decode_tps else None
    reading, remeasured = host_bandwidth(threads, cache_dir), False
    if per_sequence and per_sequence > ceiling_tokens_per_s(need["bytes_per_token"], reading["read_bytes_per_s"]):
        reading, remeasured = host_bandwidth(threads, cache_dir, refresh=True), True
    bandwidth = reading["read_bytes_per_s"]
    ceiling = ceiling_tokens_per_s(need["bytes_per_token"], bandwidth)
    fraction = per_sequence / ceiling if per_sequence else None
    return {**need, "read_bandwidth_bytes_per_s": bandwidth, "ceiling_tokens_per_s": ceiling,
            "bandwidth_method": reading.get("method", "numpy_sum"), "bandwidth_measured": reading.get("measured"),
            "bandwidth_quiet": reading.get("quiet"), "bandwidth_readings": reading.get("readings", 1),
            "remeasured": remeasured, "exceeded": bool(fraction and fraction > 1), "fraction_of_ceiling": fraction,
            "last_level_cache_bytes": llc}
