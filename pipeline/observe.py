"""What the functions tell CloudWatch and X-Ray, kept out of the core's logic.

- `Spans`: the core opens a span around each image's fetch, decode, its batch's inference
  and its writes. `NO_SPANS` (the default) does nothing; the handlers pass `XRaySpans` over
  Powertools' X-Ray recorder. Fetch, decode and writes run in pool threads, which have no
  X-Ray context of their own: each span there hangs under the invocation's segment, taken
  in the handler's thread by `bind()` at the start of every invocation.
- `create_metrics`: the handlers' Powertools `Metrics`, silent when metrics are disabled.
- `add_outcome_metrics`: the invocation's EMF metrics from its outcomes (images per
  status, batch size, each image's fetch, decode and inference time and event-to-record
  latency), for any object with Powertools' `add_metric(name=, unit=, value=)`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Protocol

__all__ = ["Spans", "NO_SPANS", "XRaySpans", "add_outcome_metrics", "TIMING_METRICS",
           "create_metrics"]

# record field -> metric name (unit: milliseconds)
TIMING_METRICS = {"fetch_ms": "FetchMs", "decode_ms": "DecodeMs",
                  "inference_ms": "InferenceMs", "event_to_record_ms": "EventToRecordMs"}


class Spans(Protocol):
    def span(self, name: str) -> AbstractContextManager[Any]: ...


class _NoSpans:
    def span(self, name: str) -> AbstractContextManager[Any]:
        return nullcontext()


NO_SPANS: Spans = _NoSpans()


class XRaySpans:
    """Subsegments of the current invocation, from any thread."""

    def __init__(self, recorder: Any) -> None:
        self._recorder = recorder
        self._parent: Any = None
        self._local = threading.local()

    def bind(self) -> None:
        """Call in the handler's thread at the start of an invocation."""
        try:
            self._parent = self._recorder.get_trace_entity()
        except Exception:  # noqa: BLE001 - no segment (tracing off): spans are no-ops
            self._parent = None

    @contextmanager
    def span(self, name: str) -> Iterator[None]:
        parent = self._parent
        if parent is None:
            yield
            return
        if getattr(self._local, "parent", None) is not parent:
            self._recorder.set_trace_entity(parent)  # a pool thread joins the invocation
            self._local.parent = parent
        with self._recorder.in_subsegment(f"## {name}"):
            yield


def add_outcome_metrics(metrics: Any, outcomes: Iterable[Any], batch_size: int,
                        prefix: str = "") -> None:
    """`outcomes` are the service's `Outcome`s (status, and the record when one was
    written). Counts are `Images<Status>` and `BatchSize` (ingest), or `Backfill<Status>`
    and `BackfillBatchSize` with `prefix="Backfill"`; the timings have one name for both."""
    metrics.add_metric(name=f"{prefix}BatchSize", unit="Count", value=batch_size)
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
        record = outcome.record
        if record is None or outcome.status in ("skipped", "superseded"):
            continue  # a record written by someone else: its time is not this invocation's
        for field, metric in TIMING_METRICS.items():
            value = getattr(record, field, None)
            if value is not None:
                metrics.add_metric(name=metric, unit="Milliseconds", value=float(value))
    for status, count in counts.items():
        metrics.add_metric(name=f"{prefix or 'Images'}{status.capitalize()}", unit="Count",
                           value=count)


def create_metrics(namespace: str = "imgpipe", service: str = "imgpipe") -> Any:
    """Powertools' `Metrics`, with nothing kept, printed or warned about while
    POWERTOOLS_METRICS_DISABLED is true (the local stack sets it: no CloudWatch there).
    Powertools honours the setting when an invocation ends, but keeps the values it did not
    print, and its flush at a metric's 100th value prints regardless: a warm backfill worker
    wrote a 2 KB EMF line into the stack's output every other batch."""
    from aws_lambda_powertools import Metrics
    from aws_lambda_powertools.metrics.functions import is_metrics_disabled
    from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import (
        AmazonCloudWatchEMFProvider,
    )

    class QuietWhenDisabled(AmazonCloudWatchEMFProvider):
        def add_metric(self, *args: Any, **kwargs: Any) -> None:
            if not is_metrics_disabled():
                super().add_metric(*args, **kwargs)

        def flush_metrics(self, raise_on_empty_metrics: bool = False) -> None:
            if is_metrics_disabled():
                self.clear_metrics()
                return
            super().flush_metrics(raise_on_empty_metrics=raise_on_empty_metrics)

    return Metrics(provider=QuietWhenDisabled(namespace=namespace, service=service))
