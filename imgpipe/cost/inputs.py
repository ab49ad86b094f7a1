"""The benchmark's figures `imgpipe cost` needs: per-image CPU time for each photo size.

`imgpipe bench` (full run) writes them to `bench/cost-inputs.json`:

    {"format_version": 1, "written_by": "imgpipe bench", "date": "...", "machine": "...",
     "cpus": 2, "models": {"efficientnet-lite0@1": {"12mp": {"cpu_ms_per_image": 87.7,
     "decode_ms": 57.6, "inference_ms": 15.1, "width": 4000, "height": 3000,
     "mean_bytes": 3000000, "core_images_per_s": 22.8}, "web": {...}}}}

`cpu_ms_per_image` is the core's whole cost in CPU time: CPUs x 1000 / the core's
images/s end to end (fetch from memory, decode, batched inference), so it includes what
the pipeline loses to waiting, not only the decode and the model.

A run with the embedded stack adds, per photo size, what Lambda would bill
(`imgpipe/bench/latency.py`): each function's billed duration per image at 1 vCPU with the
emulator's AWS-like latency and without, and the core's CPU time per image in the same run:

    "billed": {"ingest": {"aws_ms": 41.0, "none_ms": 36.5, "cpu_ms": 33.9},
               "backfill": {...}}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError

__all__ = ["BilledDuration", "CostInputs", "PhotoCost", "cost_inputs_doc", "load_cost_inputs",
           "default_path"]

ROUTES = ("ingest", "backfill")


@dataclass(frozen=True)
class BilledDuration:
    """A function's billed duration per image measured on the local stack, at 1 vCPU."""

    aws_ms: float  # with the emulator's AWS-like latency (imgpipe/local/latency_aws.json)
    none_ms: float  # on loopback
    cpu_ms: float  # the core's CPU time per image, same run, same photos

    @property
    def wait_ms(self) -> float:
        """What Lambda bills beyond the core's CPU time: waiting for S3 and DynamoDB, and
        the function's own work around the core."""
        return max(0.0, self.aws_ms - self.cpu_ms)


@dataclass(frozen=True)
class PhotoCost:
    name: str  # "12mp" | "web"
    cpu_ms_per_image: float
    decode_ms: float
    inference_ms: float
    width: int
    height: int
    mean_bytes: int
    billed: Mapping[str, BilledDuration] = field(default_factory=dict)  # by route
    billed_from: str = ""  # the model whose billed-duration rows these are, if another's

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


@dataclass(frozen=True)
class CostInputs:
    source: str  # the file, and the run that wrote it
    date: str
    machine: str
    models: Mapping[str, Mapping[str, PhotoCost]]

    def photo(self, model: str, name: str) -> PhotoCost:
        try:
            return self.models[model][name]
        except KeyError:
            sizes = ", ".join(f"{m}: {', '.join(p)}" for m, p in self.models.items())
            raise ConfigError(f"no benchmark figures for {model} with {name} photos in "
                              f"{self.source} (it has {sizes}); run `imgpipe bench`, or give "
                              f"--cpu-ms") from None


def default_path() -> Path:
    return Path(__file__).resolve().parents[2] / "bench" / "cost-inputs.json"


def cost_inputs_doc(values: Mapping[str, float], cpus: int, sets: Mapping[str, Any],
                    model_id: str, machine: str, date: str) -> dict[str, Any]:
    """What a full benchmark run measured, as `bench/cost-inputs.json` holds it. `values`
    are the run's row values (`core.<set>.ips`, `decode.<set>.draft.ms`, `infer.1t.ms`),
    the same with `@<model id>` for the other models a run measured beside the default
    (int8, Lite2); `sets` the image sets (width, height, mean_bytes)."""
    others = sorted({k.split("@", 1)[1] for k in values if k.startswith("core.") and "@" in k})
    models = {model_id: _photos(values, cpus, sets, "")}
    models.update({other: _photos(values, cpus, sets, "@" + other) for other in others})
    return {"format_version": 1, "written_by": "imgpipe bench", "date": date,
            "machine": machine, "cpus": cpus, "models": models}


def _photos(values: Mapping[str, float], cpus: int, sets: Mapping[str, Any],
            suffix: str) -> dict[str, Any]:
    photos: dict[str, Any] = {}
    for name, s in sets.items():
        core = values.get(f"core.{name}.ips{suffix}")
        if not core:
            continue
        photos[name] = {
            "cpu_ms_per_image": round(cpus * 1000.0 / core, 2),
            "decode_ms": round(values.get(f"decode.{name}.draft.ms", 0.0), 2),
            "inference_ms": round(values.get(f"infer.1t.ms{suffix}", 0.0), 2),
            "core_images_per_s": round(core, 2),
            "width": s.width, "height": s.height, "mean_bytes": s.mean_bytes,
        }
        if suffix:  # the latency rows measure the default model only
            continue
        billed = {route: {"aws_ms": round(values[f"billed.{name}.{route}.aws.ms"], 2),
                          "none_ms": round(values[f"billed.{name}.{route}.none.ms"], 2),
                          "cpu_ms": round(values[f"latency.core.{name}.cpu_ms"], 2)}
                  for route in ROUTES if f"billed.{name}.{route}.aws.ms" in values}
        if billed:
            photos[name]["billed"] = billed
    return photos


def load_cost_inputs(path: Path | None = None) -> CostInputs:
    path = path or default_path()
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist: run `imgpipe bench` (it writes it), or "
                          "give --inputs FILE or --cpu-ms") from None
    except ValueError as e:
        raise ConfigError(f"{path} is not JSON ({e}): run `imgpipe bench` again") from None
    models: dict[str, dict[str, PhotoCost]] = {}
    try:
        for model, photos in doc["models"].items():
            models[model] = {name: PhotoCost(
                name=name, cpu_ms_per_image=float(p["cpu_ms_per_image"]),
                decode_ms=float(p.get("decode_ms", 0)),
                inference_ms=float(p.get("inference_ms", 0)), width=int(p["width"]),
                height=int(p["height"]), mean_bytes=int(p["mean_bytes"]),
                billed={route: BilledDuration(aws_ms=float(b["aws_ms"]),
                                              none_ms=float(b["none_ms"]),
                                              cpu_ms=float(b["cpu_ms"]))
                        for route, b in (p.get("billed") or {}).items()})
                for name, p in photos.items()}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ConfigError(f"{path} lacks {e} (format_version 1 expected): run `imgpipe "
                          "bench` again") from None
    _borrow_billed(models)
    return CostInputs(source=str(path), date=str(doc.get("date", "?")),
                      machine=f"{doc.get('machine', '?')}, {doc.get('cpus', '?')} CPU(s)",
                      models=models)


def _borrow_billed(models: dict[str, dict[str, PhotoCost]]) -> None:
    """A model the latency rows did not measure takes the measured model's figures for the
    same photos: what a function spends beyond the core (its requests' CPU and waiting) is
    per photo, not per network. A slower model hides more of the waiting behind its
    inference, so for it this errs high."""
    for model, photos in models.items():
        for name, photo in photos.items():
            if photo.billed:
                continue
            donor = next((m for m, ps in models.items() if m != model and name in ps
                          and ps[name].billed and not ps[name].billed_from), None)
            if donor is not None:
                photos[name] = replace(photo, billed=models[donor][name].billed,
                                       billed_from=donor)
