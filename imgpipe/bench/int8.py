"""Benchmark sections: other models next to fp32 Lite0 (issues 11 and 22), and short runs.

- `section_int8`, `section_lite2`: the other model's limit, the core with it and with fp32
  on each image set in paired rounds (with each model's CPU bound), cold start, peak RSS
  and file size;
- `section_short_runs`: time to the first result and throughput of `classify_many` for
  3, 16, 48 and 512 photos, with today's batching (the model runs on whatever is decoded
  whenever it is free) and, as the reference, the batching before it (the model waits for
  a full batch), alternated in the same run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgpipe.bench.context import CORE_BATCH, BenchContext, ImageSet, Row
from imgpipe.bench.images import file_loader
from imgpipe.bench.measure import core_runner, draft_decoder, measure_model, one_thread_inference
from imgpipe.bench.processes import measure_cold_start, measure_peak_rss
from imgpipe.bench.targets import TARGET_INT8_VS_FP32_WEB
from imgpipe.bench.timing import cpu_snapshot, other_load_between, select_rounds, time_once
from pipeline.classifier import Classifier, _Pending

__all__ = ["INT8_MODEL", "INT8_SECTIONS", "TARGET_INT8_VS_FP32_WEB", "FullBatchClassifier",
           "ModelRound", "ShortRun", "model_beside_fp32", "section_int8", "section_lite2",
           "section_short_runs"]

INT8_MODEL = "efficientnet-lite0-int8"
LITE2_DIR = Path(__file__).resolve().parents[2] / "model" / "efficientnet-lite2"
SHORT_RUNS = (3, 16, 48, 512)


@dataclass(frozen=True)
class ModelRound:
    """One paired round on one image set: both models' CPU-bound parts and cores (fp32
    Lite0, and the second model: int8 or Lite2)."""

    draft_ms: float
    fp32_infer_ms: float  # batch 16, 1 intra-op thread, per image
    second_infer_ms: float
    fp32_core_ips: float
    second_core_ips: float
    other_load: float

    def bound(self, cpus: int, infer_ms: float) -> float:
        return cpus * 1000.0 / (self.draft_ms + infer_ms)


@dataclass(frozen=True)
class ShortRun:
    image_set: str
    photos: int
    batching: str  # "eager" (today) | "full batches" (before)
    first_result_s: float  # median
    images_per_s: float  # median, whole call
    samples_first: tuple[float, ...]
    samples_ips: tuple[float, ...]


def measure_model_rounds(fp32: Any, second: Any, image_set: ImageSet, rounds: int,
                         draft_limit: int | None) -> list[ModelRound]:
    draft = draft_decoder(fp32, image_set, draft_limit)
    infer_f, infer_q = one_thread_inference(fp32), one_thread_inference(second)
    core_f, close_f = core_runner(fp32, image_set.paths, CORE_BATCH)
    core_q, close_q = core_runner(second, image_set.paths, CORE_BATCH)
    out = []
    try:
        for fn in (draft, infer_f, infer_q, core_f, core_q):  # warm-up
            fn()
        for i in range(rounds):
            before = cpu_snapshot()
            d, i_f, i_q = time_once(draft), time_once(infer_f), time_once(infer_q)
            # alternate which model goes first, so a drift in load favours neither
            cores = (core_f, core_q) if i % 2 == 0 else (core_q, core_f)
            a, b = time_once(cores[0]), time_once(cores[1])
            c_f, c_q = (a, b) if i % 2 == 0 else (b, a)
            out.append(ModelRound(1000.0 / d, 1000.0 / i_f, 1000.0 / i_q, c_f, c_q,
                                  other_load_between(before, cpu_snapshot())))
    finally:
        close_f()
        close_q()
    return out


def section_int8(ctx: BenchContext) -> list[Row]:
    return model_beside_fp32(ctx, INT8_MODEL, "int8", "int8")


def section_lite2(ctx: BenchContext) -> list[Row]:
    """EfficientNet-Lite2 (issue 22), from its folder: it is not packaged."""
    return model_beside_fp32(ctx, str(LITE2_DIR), "lite2", "Lite2")


def model_beside_fp32(ctx: BenchContext, source: str, key: str, label: str) -> list[Row]:
    """Another model next to the default (fp32 Lite0): its limit, the core with each model
    on each image set in paired rounds (with each one's CPU bound), cold start, peak RSS
    and file size. Rows are keyed `<key>.*`; the other model's core figures also go to
    `imgpipe cost`'s inputs (`core.<set>.ips@<model id>`). Long because it is one
    measurement after another, each with its row."""
    from pipeline.modelstore import resolve_model

    fp32 = ctx.manifest
    other = resolve_model(source)
    cpus = ctx.machine.cpus_available
    rows: list[Row] = []
    ctx.progress(f"{key}: model limit, batch {CORE_BATCH} on {cpus} thread(s) and on 1")
    lim = measure_model(other, CORE_BATCH, cpus, ctx.repeats, min_images=32 if ctx.quick else 96)
    lim_f = ctx.values.get(f"model.b{CORE_BATCH}.ips") or measure_model(
        fp32, CORE_BATCH, cpus, ctx.repeats).images_per_s
    rows.append(Row(f"{key}.model.b16.ips", f"{label} model limit, pre-made tensors, batch "
                    f"{CORE_BATCH}, {cpus} thread(s)", lim.images_per_s, "img/s",
                    f"fp32 {lim_f:.1f} img/s", f"{lim.images_per_s / lim_f:.2f}x fp32",
                    section=key))
    for name, s in ctx.sets.items():
        n_rounds = 2 if ctx.quick else 5
        ctx.progress(f"{key} {name}: {n_rounds} paired rounds of [draft decode, 1-thread "
                     f"inference fp32 and {label}, core fp32, core {label}]")
        rounds = measure_model_rounds(fp32, other, s, n_rounds,
                                      draft_limit=16 if name == "12mp" else None)
        ctx.details[f"{key}.rounds.{name}"] = rounds
        used, quiet = select_rounds(rounds)
        med = statistics.median
        ratio = med(r.second_core_ips / r.fp32_core_ips for r in used)
        core_q, core_f = med(r.second_core_ips for r in used), med(r.fp32_core_ips for r in used)
        bound_q = med(r.bound(cpus, r.second_infer_ms) for r in used)
        bound_f = med(r.bound(cpus, r.fp32_infer_ms) for r in used)
        of_q = med(r.second_core_ips / r.bound(cpus, r.second_infer_ms) for r in used)
        of_f = med(r.fp32_core_ips / r.bound(cpus, r.fp32_infer_ms) for r in used)
        ctx.values[f"{key}_vs_fp32.core.{name}"] = ratio
        ctx.values[f"core.{name}.ips@{other.model_id}"] = core_q
        ctx.values[f"infer.1t.ms@{other.model_id}"] = med(r.second_infer_ms for r in used)
        note = "" if quiet else "; noisy rounds"
        rows += [
            Row(f"{key}.core.{name}.ips", f"core end to end with {label}, {name}", core_q,
                "img/s", f"fp32 core {core_f:.1f} img/s in the same rounds{note}",
                f"{ratio:.2f}x fp32", section=key),
            Row(f"{key}.bound.{name}.ips", f"CPU bound with {label}, {name} (draft decode "
                f"{med(r.draft_ms for r in used):.1f} + inference "
                f"{med(r.second_infer_ms for r in used):.2f} ms/img)", bound_q, "img/s",
                f"fp32 bound {bound_f:.1f} img/s (inference "
                f"{med(r.fp32_infer_ms for r in used):.2f} ms/img)",
                f"core is {100 * of_q:.0f} % of its bound (fp32: {100 * of_f:.0f} %)",
                section=key),
        ]
    big = ctx.sets["12mp"]
    repeats = 2 if ctx.quick else 5
    ctx.progress(f"{key}: cold start, {repeats} fresh processes")
    cold = measure_cold_start(big.paths[0], repeats, model=source)
    cold_f = ctx.values.get("cold_start.s")
    rows.append(Row(f"{key}.cold_start.s", f"{label} cold start: process spawn -> first "
                    "prediction", cold.seconds, "s", f"fp32 {cold_f:.3f} s" if cold_f else "",
                    f"session {cold.session_s:.3f} s", section=key))
    ctx.progress(f"{key}: peak RSS, core over the 12 MP set at batch 16")
    rss = measure_peak_rss(big, CORE_BATCH, Path(ctx.details["out_dir"]), model=source)
    rss_f = ctx.values.get("rss.b16.mib")
    rows.append(Row(f"{key}.rss.b16.mib", f"{label} peak RSS, core over {rss.images} x 12 MP, "
                    "batch 16", rss.peak_mib, "MiB", f"fp32 {rss_f:.1f} MiB" if rss_f else "",
                    section=key))
    size_q, size_f = other.onnx_path.stat().st_size, fp32.onnx_path.stat().st_size
    rows.append(Row(f"{key}.model.mib", f"model file size, {label}", size_q / 2**20, "MiB",
                    f"fp32 {size_f / 2**20:.1f} MiB", f"{size_q / size_f:.2f}x fp32's",
                    section=key))
    return rows


class FullBatchClassifier(Classifier):
    """The batching before issue 11, kept as the benchmark's reference: the session runs
    only on a full batch of decoded photos, or on the rest once every queued photo is
    decoded."""

    def _take_decoded(self, pending: Iterable[_Pending[Any]]) -> list[_Pending[Any]]:
        waiting = [p for p in pending if p.result is None]
        done = sum(p.decoded.done() for p in waiting)
        if done < min(self.batch_size, len(waiting)):
            return []
        return super()._take_decoded(waiting)


def _short_run(clf: Classifier, paths: list[Path]) -> tuple[float, float]:
    t0 = time.perf_counter()
    first = 0.0
    for n, result in enumerate(clf.classify_many((p, file_loader(p)) for p in paths)):
        if result.prediction is None:
            raise RuntimeError(f"core failed on {result.key}: {result.error}")
        if n == 0:
            first = time.perf_counter() - t0
    return first, len(paths) / (time.perf_counter() - t0)


def section_short_runs(ctx: BenchContext) -> list[Row]:
    rows: list[Row] = []
    rounds = 1 if ctx.quick else 3
    counts = (3, 16) if ctx.quick else SHORT_RUNS
    eager = Classifier(ctx.manifest, batch_size=CORE_BATCH)
    full = FullBatchClassifier(ctx.manifest, batch_size=CORE_BATCH)
    try:
        for name, s in ctx.sets.items():
            for n in counts:
                ctx.progress(f"short runs {name}: {n} photos, {rounds} round(s) of "
                             "[full batches, eager]")
                paths = [s.paths[i % len(s.paths)] for i in range(n)]
                got: dict[str, list[tuple[float, float]]] = {"full batches": [], "eager": []}
                _short_run(eager, paths[:3])  # warm both pools and the session
                _short_run(full, paths[:3])
                for i in range(rounds):
                    order = (("full batches", full), ("eager", eager))
                    for label, clf in order if i % 2 == 0 else order[::-1]:
                        got[label].append(_short_run(clf, paths))
                runs = {label: ShortRun(name, n, label,
                                        statistics.median(f for f, _ in v),
                                        statistics.median(r for _, r in v),
                                        tuple(f for f, _ in v), tuple(r for _, r in v))
                        for label, v in got.items()}
                ctx.details[f"short.{name}.{n}"] = list(runs.values())
                now, before = runs["eager"], runs["full batches"]
                rows.append(Row(
                    f"short.{name}.{n}.first_s", f"{n} photos ({name}): time to first result",
                    now.first_result_s, "s", f"before (full batches) "
                    f"{before.first_result_s:.3f} s",
                    f"{before.first_result_s / now.first_result_s:.1f}x sooner",
                    section="short runs"))
                rows.append(Row(
                    f"short.{name}.{n}.ips", f"{n} photos ({name}): throughput, whole call",
                    now.images_per_s, "img/s", f"before {before.images_per_s:.1f} img/s",
                    f"{now.images_per_s / before.images_per_s:.2f}x", section="short runs"))
    finally:
        eager.close()
        full.close()
    return rows


INT8_SECTIONS = [section_int8, section_lite2, section_short_runs]
