"""The measurement: one greedy fixed-length loop over a runner's primitives, and the timing.

Timestamps come from `time.perf_counter_ns` at exactly these points (docs/metrics.md):
t_0 when the input (the image's pixels first, for a vision model, then the ids) is handed to the
runtime; for a vision model, t_vis when the tower's image embeddings are ready; for an
encoder-decoder, t_enc when the encoder (with the cross-attention K/V) is done; t_i when generated
token i is on the host. EOS is ignored;
generation always produces `output_len` tokens. Several subjects (models, runtimes) measured
together are interleaved repetition by repetition, so machine drift hits them alike.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from slmbench.config import RunSettings
from slmbench.core.metrics import ROW_METRICS, repetition_metrics
from slmbench.core.stats import is_noisy, median_ci, summarize
from slmbench.host.contention import Snapshot, Tally
from slmbench.host.contention import warning as contention_warning


@dataclass
class Repetition:
    """Raw timestamps of one generation, in ns relative to t_0 (t_0 itself is 0)."""

    timestamps_ns: list[int]
    encoder_end_ns: int | None = None
    vision_end_ns: int | None = None

    @property
    def tokens(self) -> int:
        return len(self.timestamps_ns) - 1

    def metrics(self, batch: int) -> dict[str, float | None]:
        return repetition_metrics(self.timestamps_ns, self.encoder_end_ns, batch, self.vision_end_ns)

    def record(self) -> dict:
        """The raw timestamps as a row keeps them."""
        return {"timestamps_ns": self.timestamps_ns, "encoder_end_ns": self.encoder_end_ns,
                **({"vision_end_ns": self.vision_end_ns} if self.vision_end_ns is not None else {})}

    def itl_s(self) -> list[float]:
        t = np.asarray(self.timestamps_ns, dtype=np.float64) * 1e-9
        return list(np.diff(t[1:]))


def generate(runner, input_ids: np.ndarray, output_len: int, encoder_decoder: bool,
             start_token: int, pixels: np.ndarray | None = None) -> tuple[Repetition, np.ndarray]:
    """One timed greedy generation of exactly `output_len` tokens, after the image through the
    vision tower when there is one. Returns raw times and tokens."""
    runner.start(input_ids, output_len)
    clock = time.perf_counter_ns
    tokens = np.empty((input_ids.shape[0], output_len), np.int64)
    stamps = [0] * (output_len + 1)
    encoder_end = vision_end = None
    # The decoder's first input is built before t_0: nothing but the runtime's work is timed.
    first = np.full((input_ids.shape[0], 1), start_token, np.int64) if encoder_decoder else input_ids
    t0 = clock()
    if pixels is not None:
        runner.encode_image(pixels)
        vision_end = clock()
    if encoder_decoder:
        runner.encode(input_ids)
        encoder_end = clock()
    step = runner.decode(first)
    stamps[1] = clock()
    tokens[:, 0] = step
    for i in range(1, output_len):
        step = runner.decode(tokens[:, i - 1:i])
        stamps[i + 1] = clock()
        tokens[:, i] = step
    stamps[0] = t0
    since = lambda t: None if t is None else t - t0
    return Repetition([s - t0 for s in stamps], since(encoder_end), since(vision_end)), tokens


def memory_by_phase(runner, input_ids: np.ndarray, output_len: int, encoder_decoder: bool,
                    start_token: int, loaded_rss: int | None, pixels: np.ndarray | None = None) -> dict:
    """One untimed generation on a just-loaded runner, reading the process's memory high-water mark
    around each phase: how far above the RSS after loading (`loaded_rss`) the first token (the
    vision tower if any, encoder + first step, or the prefill) and the decoding take it. On a
    device with memory of its own (CUDA), also the process's device memory after loading and how
    far each phase grew it: the runtimes' pools (ONNX Runtime's arena, torch's caching allocator)
    keep what they reserve, so the reading after a phase is the high-water mark up to it. Run it in
    a process of its own (an arena keeps what earlier generations allocated), never inside timed
    repetitions."""
    from slmbench.host.memory import peak_rss, reset_peak_rss

    runner.start(input_ids, output_len)
    host = loaded_rss is not None and reset_peak_rss()
    device_loaded = runner.device_memory_in_use()
    first = np.full((input_ids.shape[0], 1), start_token, np.int64) if encoder_decoder else input_ids
    if pixels is not None:
        runner.encode_image(pixels)
    if encoder_decoder:
        runner.encode(input_ids)
    step = runner.decode(first)
    first_peak, first_device = peak_rss(), runner.device_memory_in_use()
    reset_peak_rss()
    for _ in range(1, output_len):
        step = runner.decode(np.ascontiguousarray(step, dtype=np.int64).reshape(-1, 1))
    decode_peak, decode_device = peak_rss(), runner.device_memory_in_use()
    above = lambda reading, base: None if reading is None or base is None else max(0, reading - base)
    phases = {"first_token_bytes": above(first_peak, loaded_rss) if host else None,
              "decode_bytes": above(decode_peak, loaded_rss) if host else None}
    if device_loaded is not None:
        phases["device"] = {"loaded_bytes": device_loaded, "first_token_bytes": above(first_device, device_loaded),
                            "decode_bytes": above(decode_device, device_loaded),
                            "source": "NVML per-process reading after each phase (nvidia-smi)"}
    return phases


@dataclass
class Subject:
    """One thing to measure: a loaded runner with its model."""

    label: str
    runner: object
    encoder_decoder: bool
    start_token: int = 0
    pixels: np.ndarray | None = None  # a vision model's image, the same every repetition
    cold: Repetition | None = None
    warmups: list[Repetition] = field(default_factory=list)
    reps: list[Repetition] = field(default_factory=list)
    tokens: np.ndarray | None = None
    contention: Tally = field(default_factory=Tally)  # what others took of the CPU during the reps

    @property
    def measured_s(self) -> float:
        return sum(r.timestamps_ns[-1] for r in self.reps) * 1e-9


def make_inputs(settings: RunSettings, vocab: int) -> np.ndarray:
    """Token ids from a fixed seed; no tokenizer in the timed path. Id 0 is avoided (padding)."""
    rng = np.random.default_rng(settings.seed)
    return rng.integers(1, vocab, size=(settings.batch, settings.input_len), dtype=np.int64)


def measure(groups: list[list[Subject]], settings: RunSettings, run, progress=None, seed: int = 0) -> None:
    """Cold run and warm-ups of every subject, then rounds of one repetition each until every
    subject has `min_reps` repetitions and `min_time_s` of measured time (or `max_reps`), and,
    with `target_ci`, until its confidence intervals are that tight.

    `run(subject)` returns (Repetition, tokens). Each round runs the groups in a fresh random
    order, and each group's members (the sides of a same-run ratio) back to back, also in random
    order: members stay moments apart, so their per-repetition ratio cancels the machine's drift,
    and a periodic disturbance (another job's time slice) cannot land on the same subject round
    after round, so under no real difference the repetitions are exchangeable, as the rank tests
    of the regression gate assume.
    """
    rng = np.random.default_rng(seed)
    subjects = [s for group in groups for s in group]
    for s in subjects:
        s.cold, s.tokens = run(s)
    for _ in range(settings.warmup):
        for s in subjects:
            s.warmups.append(run(s)[0])

    def pending(s: Subject) -> bool:
        if len(s.reps) >= settings.max_reps:
            return False
        if len(s.reps) < settings.min_reps or s.measured_s < settings.min_time_s:
            return True
        return settings.target_ci is not None and not ci_is_tight(s.reps, settings.target_ci)

    while any(pending(s) for s in subjects):
        for g in rng.permutation(len(groups)):
            for i in rng.permutation(len(groups[g])):
                s = groups[g][i]
                if pending(s):
                    before = Snapshot.now()  # outside generate's t_0..t_N: a few syscalls
                    s.reps.append(run(s)[0])
                    s.contention.add(before, Snapshot.now())
                    if progress:
                        progress(s.label, len(s.reps))


def ci_is_tight(reps: list[Repetition], target: float) -> bool:
    """Whether the order-statistic 95% CI of the median TTFT and TPOT lies within +-target of it.
    Not before 6 repetitions: below that no distribution-free 95% CI of a median exists (a bootstrap
    of 3 values gives about [min, max] and stopped runs after 3)."""
    for metric in ("ttft_s", "tpot_s"):
        values = np.array([v for r in reps if (v := r.metrics(1)[metric]) is not None])
        interval = median_ci(values)
        if interval is None:
            return False
        median = float(np.median(values))
        if max(median - interval[0], interval[1] - median) > target * median:
            return False
    return True


def summarize_subject(subject: Subject, batch: int) -> tuple[dict, list[str]]:
    """Metric statistics over the warm repetitions, plus the warnings a reader must see."""
    per_rep = [r.metrics(batch) for r in subject.reps]
    metrics = {name: summarize([m[name] for m in per_rep if m[name] is not None]) for name in ROW_METRICS}
    metrics["itl_s"] = summarize([x for r in subject.reps for x in r.itl_s()])
    warnings = []
    for name in ("ttft_s", "tpot_s"):
        if is_noisy(metrics[name]):
            m = metrics[name]
            warnings.append(f"{name} is noisy: stdev {m['stdev']:.3g}s is {100 * m['stdev'] / m['mean']:.0f}% "
                            f"of the mean over {m['count']} repetitions")
    if busy := contention_warning(subject.contention.summary()):
        warnings.append(busy)
    return metrics, warnings
