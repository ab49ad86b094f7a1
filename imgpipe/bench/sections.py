"""The core's sections of a run, in the report's order: each takes the `BenchContext`,
measures, and returns its `Row`s (adding its figures to `ctx.values` and its raw
dataclasses to `ctx.details`).

- `section_model`: the model limit on pre-made tensors at batch 1/8/16/32, and 1-thread
  inference;
- `section_decode`: decode ms/image, draft (DCT scaling, the core's path) and full;
- `section_throughput`: per image set, the CPU bound, the core and the naive handler in
  paired rounds (`measure.measure_rounds`);
- `section_process`: cold start (the core, and the packaged handler when built) and peak
  RSS, in fresh processes.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from imgpipe.bench.context import CORE_BATCH, SOURCE_ROOT, BenchContext, Row, Section
from imgpipe.bench.measure import measure_decode, measure_model, measure_rounds
from imgpipe.bench.processes import measure_cold_start, measure_peak_rss, packaged_runtime
from imgpipe.bench.timing import QUIET_OTHER_LOAD, select_rounds

MODEL_BATCHES = (1, 8, 16, 32)


def section_model(ctx: BenchContext) -> list[Row]:
    rows = []
    cpus = ctx.machine.cpus_available
    for b in MODEL_BATCHES:
        ctx.progress(f"model limit: batch {b} on {cpus} thread(s)")
        m = measure_model(ctx.manifest, b, cpus, ctx.repeats, min_images=32 if ctx.quick else 96)
        ctx.details[f"model.b{b}"] = m
        rows.append(Row(f"model.b{b}.ips", f"model limit, pre-made tensors, batch {b}, "
                        f"{cpus} intra-op thread(s)", m.images_per_s, "img/s",
                        section="model"))
    ctx.progress("inference: batch 16 on 1 intra-op thread")
    one = measure_model(ctx.manifest, CORE_BATCH, 1, ctx.repeats,
                        min_images=32 if ctx.quick else 64)
    ctx.details["model.1t"] = one
    rows.append(Row("infer.1t.ms", "inference, batch 16 on 1 intra-op thread, per image",
                    one.ms_per_image, "ms/img", section="model"))
    return rows


def section_decode(ctx: BenchContext) -> list[Row]:
    rows = []
    full_limit = 4 if ctx.quick else 8
    for name, s in ctx.sets.items():
        for path in ("draft", "full"):
            ctx.progress(f"decode {name}: {path}, 1 thread")
            d = measure_decode(ctx.manifest, s, path, ctx.repeats,
                               limit=full_limit if path == "full" else None)
            ctx.details[f"decode.{name}.{path}"] = d
            ref = ratio = ""
            if path == "full":
                draft = ctx.values[f"decode.{name}.draft.ms"]
                ref = f"draft {draft:.1f} ms/img"
                ratio = f"draft is {d.ms_per_image / draft:.1f}x faster"
            label = ("decode, draft (DCT scaling, core path), 1 thread" if path == "draft"
                     else "decode, full (same crop + bicubic), 1 thread")
            rows.append(Row(f"decode.{name}.{path}.ms", f"{label}, {s.name}",
                            d.ms_per_image, "ms/img", ref, ratio, section=name))
            ctx.values[f"decode.{name}.{path}.ms"] = d.ms_per_image
    return rows


def section_throughput(ctx: BenchContext) -> list[Row]:
    rows = []
    cpus = ctx.machine.cpus_available
    for name, s in ctx.sets.items():
        big = name == "12mp"
        n_rounds = 2 if ctx.quick else 7
        ctx.progress(f"{name}: {n_rounds} rounds of [draft decode, 1-thread inference, core "
                     f"(classify_many, batch {CORE_BATCH}), naive handler]")
        rounds = measure_rounds(
            ctx.manifest, s, n_rounds, cpus,
            draft_limit=16 if big else None,
            naive_limit=(2 if ctx.quick else 8) if big else (4 if ctx.quick else 16),
        )
        ctx.details[f"rounds.{name}"] = rounds
        used, quiet = select_rounds(rounds)
        which = (f"{len(used)} of {len(rounds)} rounds with other load <= "
                 f"{100 * QUIET_OTHER_LOAD:.0f} %" if quiet else
                 f"all {len(rounds)} rounds (too few quiet ones: results are noisy)")
        ctx.details[f"rounds.{name}.used"] = which
        med = statistics.median
        d_ms, i_ms = med(r.draft_ms for r in used), med(r.infer_ms for r in used)
        bound = med(r.bound_ips for r in used)
        core = med(r.core_ips for r in used)
        naive = med(r.naive_ips for r in used)
        vs_bound = med(r.core_ips / r.bound_ips for r in used)
        vs_naive = med(r.core_ips / r.naive_ips for r in used)
        vs_left = med(r.core_ips / r.bound_left_ips for r in used)
        ctx.values.update({
            f"bound.{name}.ips": bound, f"core.{name}.ips": core, f"naive.{name}.ips": naive,
            f"core_vs_bound.{name}": vs_bound, f"core_vs_naive.{name}": vs_naive,
            f"quiet.{name}": 1.0 if quiet else 0.0,
        })
        ctx.details[f"rounds.{name}.noisy"] = not quiet
        rows += [
            Row(f"bound.{name}.ips", f"CPU bound, {name}: {cpus} CPU(s) x 1000 / (draft decode "
                "+ 1-thread inference ms/img)", bound, "img/s",
                f"{d_ms:.1f} + {i_ms:.1f} ms/img in the same rounds", section=name),
            Row(f"core.{name}.ips", f"core end to end (classify_many, batch {CORE_BATCH}), "
                f"{name}", core, "img/s", f"CPU bound {bound:.1f} img/s; {which}",
                f"{100 * vs_bound:.0f} % of bound ({100 * vs_left:.0f} % of the bound on the "
                "CPU other processes left)", section=name),
            Row(f"naive.{name}.ips", f"naive per-image handler, {name}", naive, "img/s",
                f"core {core:.1f} img/s", f"core is {vs_naive:.1f}x faster", section=name),
        ]
    return rows


def section_process(ctx: BenchContext) -> list[Row]:
    big = ctx.sets["12mp"]
    repeats = 2 if ctx.quick else 5
    ctx.progress(f"cold start: {repeats} fresh processes, one 12 MP photo each")
    cold = measure_cold_start(big.paths[0], repeats)
    ctx.details["cold_start"] = cold
    ctx.values["cold_start.s"] = cold.seconds
    rows = [Row("cold_start.s", "cold start: process spawn -> first prediction (12 MP photo)",
                cold.seconds, "s",
                f"import {cold.import_s:.3f} + session {cold.session_s:.3f} + first "
                f"prediction {cold.first_prediction_s:.3f} s", section="process")]
    packaged = packaged_runtime()
    if packaged is None:
        ctx.progress("packaged cold start skipped: run `make package runtime-venv` first")
    else:
        ctx.progress(f"cold start of the ingest handler: {repeats} fresh processes each, "
                     "packaged (python3.12) and from the source tree")
        pcold = measure_cold_start(big.paths[0], repeats, packaged)
        # The same child on the source tree: what the package itself adds or saves.
        hcold = measure_cold_start(big.paths[0], repeats, (Path(sys.executable), SOURCE_ROOT))
        ctx.details["cold_start.packaged"] = pcold
        ctx.details["cold_start.handler_tree"] = hcold
        ctx.values["cold_start.packaged.s"] = pcold.seconds
        rows.append(Row(
            "cold_start.packaged.s", "cold start, packaged ingest handler (python3.12, "
            "runtime-only venv): spawn -> first prediction", pcold.seconds, "s",
            f"same handler from the source tree {hcold.seconds:.3f} s (core alone "
            f"{cold.seconds:.3f} s)",
            f"import {pcold.import_s:.3f} + service {pcold.session_s:.3f} + first "
            f"prediction {pcold.first_prediction_s:.3f} s", section="process"))
    work = Path(ctx.details["out_dir"])
    for batch in (CORE_BATCH, 32):
        ctx.progress(f"peak RSS: fresh process, core over the 12 MP set at batch {batch}")
        rss = measure_peak_rss(big, batch, work)
        ctx.details[f"rss.b{batch}"] = rss
        ctx.values[f"rss.b{batch}.mib"] = rss.peak_mib
        rows.append(Row(f"rss.b{batch}.mib", f"peak RSS, core over {rss.images} x 12 MP, "
                        f"batch {batch}", rss.peak_mib, "MiB",
                        f"after imports + session {rss.after_load_mib:.0f} MiB",
                        section="process"))
    return rows


SECTIONS: list[Section] = [section_model, section_decode, section_throughput, section_process]
