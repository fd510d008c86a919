"""The memory-bandwidth ceiling of batch-1 decoding.

Each decode step reads every weight it uses once (and the KV cache so far), so tokens/s cannot
exceed bandwidth / bytes read per token. Bandwidth is measured on the spot with a STREAM-like
read (sum) and copy over buffers much larger than the last-level cache, on `threads` threads.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

BYTES_PER_PARAM = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "int4": 0.5}


def measure_bandwidth(threads: int = 2, megabytes: int = 512, trials: int = 5) -> dict:
    """Best-of-`trials` read and copy bandwidth in bytes/s (numpy releases the GIL in both)."""
    n = megabytes * (1 << 20) // 4
    src = np.ones(n, np.float32)
    dst = np.empty_like(src)
    chunks = np.array_split(np.arange(n), threads)
    bounds = [(c[0], c[-1] + 1) for c in chunks]

    def timed(work) -> float:
        best = float("inf")
        with ThreadPoolExecutor(threads) as pool:
            for _ in range(trials):
                started = time.perf_counter()
                list(pool.map(work, bounds))
                best = min(best, time.perf_counter() - started)
        return best

    read_s = timed(lambda b: float(src[b[0]:b[1]].sum()))
    copy_s = timed(lambda b: np.copyto(dst[b[0]:b[1]], src[b[0]:b[1]]))
    return {"read_bytes_per_s": src.nbytes / read_s, "copy_bytes_per_s": 2 * src.nbytes / copy_s,
            "buffer_bytes": src.nbytes, "threads": threads}


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


def host_bandwidth(threads: int, refresh: bool = False) -> dict:
    """This host's read bandwidth, measured once per (host, CPU, threads) and cached beside the
    artifact cache, so every result row can state its ceiling without re-measuring. A reading
    taken while the machine was busy is low: `make perf` measures afresh (refresh=True)."""
    import json

    from slmbench.environment import environment
    from slmbench.exporters.artifact import default_cache_dir

    env = environment()
    key = f"{env['host']}|{env['cpu']}|{threads}"
    path = default_cache_dir().parent / "bandwidth.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if refresh or key not in known:
        known[key] = {**measure_bandwidth(threads, megabytes=256, trials=3),
                      "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(known, indent=1))
        except OSError:
            pass
    return known[key]


def row_roofline(cfg, precision: str, input_len: int, output_len: int, threads: int,
                 decode_tps: float | None = None, batch: int = 1) -> dict:
    """The ceiling a result row is read against: bytes per decode token at the mean position of
    the generation, the host's bandwidth, the tokens/s those allow at batch 1, and (given the
    measured decode tokens/s) the fraction of that ceiling reached."""
    if cfg.is_encoder_decoder:
        need = decode_bytes_per_token(cfg, precision, position=output_len // 2, source_len=input_len)
    else:
        need = decode_bytes_per_token(cfg, precision, position=input_len + output_len // 2)
    bandwidth = host_bandwidth(threads)["read_bytes_per_s"]
    ceiling = ceiling_tokens_per_s(need["bytes_per_token"], bandwidth)
    return {**need, "read_bandwidth_bytes_per_s": bandwidth, "ceiling_tokens_per_s": ceiling,
            "fraction_of_ceiling": decode_tps / batch / ceiling if decode_tps else None}
