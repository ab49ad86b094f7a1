"""`imgpipe bench`: what the pipeline does on this machine, measured side by side in one run.

Everything the report says comes from ONE run on the same (possibly shared, possibly
noisy) machine, and the target ratios pair figures taken seconds apart (paired rounds):

- the *model limit*: raw ONNX Runtime throughput on pre-made tensors, batch 1/8/16/32;
- decode ms/image, single thread, with DCT scaling (`Image.draft`, the core's path) and
  with a full decode of the same file and the same crop/resize recipe;
- the *CPU bound*: n_cpus / (draft decode ms + 1-thread batch-16 inference ms per image),
  i.e. the throughput if every CPU did nothing but decode-then-infer without overhead;
- the core end to end (`Classifier.classify_many`, loaders reading file bytes as the Lambda
  reads S3 bytes) and a naive per-image handler written as tutorials write it;
- cold start (fresh process to first prediction) and peak RSS, each in fresh subprocesses;
- `imgpipe bench` adds the int8 model next to fp32, short runs, the local stack and the
  functions' billed duration under AWS-like latency.

A run is a list of *sections*: callables taking the `BenchContext` and returning `Row`s.
Add rows next to the core's figure with `run_benchmark(..., extra_sections=[...])`;
`ctx.values` holds every figure measured so far under its row's stable key (`Row.key`).
Timings: warm-up first, then several repeats, the median reported; the report records the
load average before and after the run.

The modules, each with one job (read them in this order):

- `context`: the shared vocabulary: `Machine`, `ImageSet`, `Row`, `Target`, `BenchContext`;
- `images`: the generated 12 MP and web-size image sets, cached on disk;
- `timing`: repeats and medians, and how busy the rest of the machine was (quiet rounds);
- `measure`: measurements in this process (model, decode, core, naive, paired rounds);
- `processes`: measurements in fresh processes (cold start, packaged cold start, peak RSS);
- `sections`: the core's sections, which turn measurements into the report's rows;
- `targets`: the issue's targets, PASS/FAIL;
- `report`: REPORT.md, results.json and the cost inputs;
- `run`: `run_benchmark`, one run from the image sets to the written report;
- `int8`: sections for the int8 model next to fp32, and short runs (first result);
- `stack`: sections on the embedded stack (`imgpipe local`): ingest and backfill;
- `latency`: the functions' billed duration per photo under AWS-like latency, and none.
"""

from imgpipe.bench.context import (
    BenchContext,
    BenchResult,
    ImageSet,
    Machine,
    Row,
    Section,
    Target,
    describe_machine,
)
from imgpipe.bench.images import generate_images
from imgpipe.bench.measure import (
    DecodeTiming,
    ModelThroughput,
    Throughput,
    measure_core,
    measure_decode,
    measure_model,
    measure_naive,
)
from imgpipe.bench.processes import measure_cold_start, measure_peak_rss, packaged_runtime
from imgpipe.bench.report import render_table, render_targets
from imgpipe.bench.run import default_bench_dir, run_benchmark
from imgpipe.bench.sections import SECTIONS

__all__ = [
    "BenchContext",
    "BenchResult",
    "DecodeTiming",
    "ImageSet",
    "Machine",
    "ModelThroughput",
    "Row",
    "SECTIONS",
    "Section",
    "Target",
    "Throughput",
    "default_bench_dir",
    "describe_machine",
    "generate_images",
    "measure_cold_start",
    "measure_core",
    "measure_decode",
    "measure_model",
    "measure_naive",
    "measure_peak_rss",
    "packaged_runtime",
    "render_table",
    "render_targets",
    "run_benchmark",
]
