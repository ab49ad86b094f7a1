"""`imgpipe model check`: is a model folder usable, before it is deployed?

The folder is loaded as the functions load it (`pipeline.factory.build_classifier`: the
manifest's validation, the sha256, the session and its input/output checks), and photos go
through the classifier's own three stages (`preprocess`, `forward`, `postprocess`). What
would stop a function is an error (the model is not usable); what usually means a wrong
manifest (scores that are not probabilities for the chosen activation, every photo the same
label) is a warning.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ImgpipeError
from pipeline.manifest import ModelManifest
from pipeline.prediction import LabelScore
from pipeline.settings import Settings

__all__ = ["CheckReport", "PhotoResult", "check_model", "default_photos", "layout_problem"]

TIMING_BATCH = 16
TIMING_RUNS = 3
SHOWN = 3  # labels printed per photo


@dataclass(frozen=True)
class PhotoResult:
    name: str
    top: tuple[LabelScore, ...] = ()
    error: str | None = None


@dataclass
class CheckReport:
    source: str
    manifest: ModelManifest | None = None
    photos: list[PhotoResult] = field(default_factory=list)
    ms_per_image: float | None = None
    session_mb: float | None = None  # what loading the session added to the process's RSS
    memory_mb: float | None = None  # ... and then a batch of 16 (ONNX Runtime's arena grows)
    peak_mb: float | None = None  # the process's peak RSS afterwards
    threads: int | None = None
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return not self.errors and any(p.error is None for p in self.photos)


def default_photos() -> list[Path]:
    """The sample photos of a checkout (`samples/*.jpg`), or none."""
    folder = Path(__file__).resolve().parent.parent / "samples"
    return sorted(folder.glob("*.jpg"))


def check_model(source: str, photos: Sequence[Path], settings: Settings | None = None,
                s3_client: Any = None) -> CheckReport:
    """Load `source` as the functions do, classify `photos`, time a batch of 16."""
    from pipeline.factory import build_classifier

    settings = (settings or Settings()).with_(model_source=source)
    report = CheckReport(source=source)
    import onnxruntime  # noqa: F401 - imported first, so the memory measured is the session's

    rss_before = _rss_mb()
    try:
        classifier = build_classifier(settings, s3_client)
    except ImgpipeError as e:
        report.errors.append(str(e))
        problem = _layout_hint(source, settings, s3_client)
        if problem:
            report.errors.append(problem)
        return report
    report.session_mb = max(0.0, _rss_mb() - rss_before)
    manifest = classifier.manifest
    report.manifest = manifest
    report.threads = _threads(classifier.session)
    shape = next((i.shape for i in classifier.session.get_inputs()
                  if i.name == manifest.input_name), None)
    if shape is not None:
        problem = layout_problem(manifest, shape)
        if problem:
            report.errors.append(problem)
        elif _graph_layout(shape) is None:
            report.warnings.append(
                f"the graph's input {list(shape)} does not fix its channel axis, so the "
                f"manifest's layout {manifest.layout} cannot be checked against it")
    try:
        tensors: list[np.ndarray] = []
        names: list[str] = []
        for path in photos:
            try:
                tensors.append(classifier.preprocess(Path(path).read_bytes()).tensor)
                names.append(Path(path).name)
            except (OSError, ImgpipeError) as e:
                message = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                report.photos.append(PhotoResult(Path(path).name, error=message))
        if not tensors:
            report.errors.append("no photo could be read: give image files (JPEG, PNG, ...)")
            return report
        batch = np.stack(tensors)
        try:
            raw = classifier.forward(batch)
        except Exception as e:  # noqa: BLE001 - ONNX Runtime's error, said in one sentence
            report.errors.append(f"ONNX Runtime cannot run the model on a batch of {len(batch)} "
                                 f"photo(s): {e}" + _batch_hint(classifier.session, manifest))
            return report
        _check_scores(raw, manifest, names, report)
        if report.errors:
            return report
        shown = dataclasses.replace(manifest, top_k=max(SHOWN, manifest.top_k))
        from pipeline.classifier import postprocess

        for name, top in zip(names, postprocess(raw, shown), strict=True):
            report.photos.append(PhotoResult(name, tuple(top[:SHOWN])))
        labels = {p.top[0].label for p in report.photos if p.top}
        if len(names) >= 2 and len(labels) == 1:
            report.warnings.append(
                f"every photo got the label {labels.pop()!r}: usually a wrong 'normalize' or "
                "'layout' in the manifest, or labels out of order")
        report.ms_per_image = _time_batch(classifier, tensors, report)
        report.memory_mb = max(0.0, _rss_mb() - rss_before)
        report.peak_mb = _peak_rss_mb()
    finally:
        classifier.close()
    return report


def _check_scores(raw: np.ndarray, manifest: ModelManifest, names: Sequence[str],
                  report: CheckReport) -> None:
    width = raw.shape[1]
    if width != manifest.num_outputs:
        report.errors.append(
            f"the model gives {width} values per photo but the manifest has "
            f"{len(manifest.labels)} labels: the labels file must have one label per output, "
            "in order")
        return
    bad = [n for n, row in zip(names, raw, strict=True) if not np.isfinite(row).all()]
    if bad:
        report.errors.append(f"the model's outputs hold NaN or infinity for {', '.join(bad)}: "
                             "the ONNX file is broken (or its input needs another 'normalize')")
        return
    x = np.asarray(raw, dtype=np.float64)
    in_unit = bool(((x >= -1e-6) & (x <= 1 + 1e-6)).all())
    sums_to_one = in_unit and bool(np.allclose(x.sum(axis=1), 1.0, atol=1e-3))
    if manifest.activation == "softmax" and sums_to_one and width > 1:
        report.warnings.append(
            "the model's outputs already are probabilities (each photo's scores sum to 1), "
            "and softmax on them flattens every score: set \"activation\": \"none\"")
    elif manifest.activation == "sigmoid" and in_unit:
        report.warnings.append(
            "the model's outputs are already between 0 and 1 (does the graph end in a "
            "Sigmoid?), and the sigmoid on them squeezes every score into 0.5..0.73: set "
            "\"activation\": \"none\"" + (" or export the model without its last Sigmoid"
                                          if width == 1 else ""))
    elif manifest.activation == "none" and not in_unit:
        report.warnings.append(
            "the model's outputs are not between 0 and 1, so they are not probabilities: set "
            "\"activation\": \"softmax\" (one label per photo) or \"sigmoid\" (independent "
            "labels)")


def _time_batch(classifier: Any, tensors: list[np.ndarray], report: CheckReport) -> float | None:
    """Milliseconds per image of `forward` on a batch of 16 (the photos repeated), the median
    of a few runs after one warm-up."""
    batch = np.stack([tensors[i % len(tensors)] for i in range(TIMING_BATCH)])
    runs: list[float] = []
    try:
        for i in range(TIMING_RUNS + 1):
            started = time.perf_counter()
            classifier.forward(batch)
            if i:
                runs.append((time.perf_counter() - started) * 1000 / TIMING_BATCH)
    except Exception as e:  # noqa: BLE001 - said as the check's error
        report.errors.append(f"ONNX Runtime cannot run the model on a batch of "
                             f"{TIMING_BATCH}: {e}"
                             + _batch_hint(classifier.session, classifier.manifest))
        return None
    return statistics.median(runs)


def _graph_layout(shape: Sequence[Any]) -> str | None:
    from imgpipe.modelinit import GraphInfo

    return GraphInfo("", tuple(shape), "", ()).layout()


def layout_problem(manifest: ModelManifest, shape: Sequence[Any]) -> str:
    """A sentence when the graph's input shape says another layout than the manifest's."""
    found = _graph_layout(shape)
    if found and found != manifest.layout:
        return (f"layout: the manifest says {manifest.layout} but the graph's input "
                f"{list(shape)} is {found}: set \"layout\": \"{found}\"")
    return ""


def _layout_hint(source: str, settings: Settings, s3_client: Any) -> str:
    """After a failed load: the layout sentence, when the manifest loads and the graph's
    input disagrees with its layout."""
    from pipeline.modelstore import resolve_model

    try:
        manifest = resolve_model(source, settings.model_cache_dir, s3_client)
        from imgpipe.modelinit import read_graph

        graph = read_graph(manifest.onnx_path)
    except ImgpipeError:
        return ""
    if graph.input_name != manifest.input_name:
        return ""
    return layout_problem(manifest, graph.input_shape)


def _batch_hint(session: Any, manifest: ModelManifest) -> str:
    for inp in session.get_inputs():
        if inp.name == manifest.input_name and inp.shape and isinstance(inp.shape[0], int):
            return (f" (the graph's batch dimension is fixed at {inp.shape[0]}: export it with "
                    "a dynamic batch axis)")
    return ""


def _threads(session: Any) -> int | None:
    try:
        return int(session.get_session_options().intra_op_num_threads)
    except Exception:  # noqa: BLE001 - informational only
        return None


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        import os

        return pages * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        return _peak_rss_mb()


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1000  # KiB on Linux


def format_report(report: CheckReport) -> list[str]:
    """The lines `imgpipe model check` prints."""
    lines: list[str] = []
    m = report.manifest
    if m is not None:
        size = f"{m.input_size[0]}x{m.input_size[1]}"
        lines.append(f"model {m.model_id} from {report.source}: {m.layout} {size}, "
                     f"{m.resize.method}, {m.activation}, {len(m.labels)} labels")
    width = max([len(p.name) for p in report.photos] + [4])
    for p in report.photos:
        if p.error:
            lines.append(f"  {p.name.ljust(width)}  rejected: {p.error}")
        else:
            tops = "   ".join(f"{t.label} {t.score:.3f}" for t in p.top)
            lines.append(f"  {p.name.ljust(width)}  {tops}")
    if report.ms_per_image is not None:
        threads = f", {report.threads} thread(s)" if report.threads else ""
        lines.append(f"speed: {report.ms_per_image:.1f} ms per image at batch {TIMING_BATCH}"
                     f"{threads} (the model alone, photos already decoded)")
    if report.memory_mb is not None and report.peak_mb is not None:
        lines.append(f"memory: the session takes {report.session_mb or 0:.0f} MB, "
                     f"{report.memory_mb:.0f} MB once it has run a batch of {TIMING_BATCH}; "
                     f"the process peaked at {report.peak_mb:.0f} MB")
    lines += [f"warning: {w}" for w in report.warnings]
    lines += [f"error: {e}" for e in report.errors]
    if report.usable:
        lines.append("usable" + (" (read the warnings)" if report.warnings else ""))
    else:
        lines.append("not usable")
    return lines
