"""What the functions report: EMF metrics per invocation from the handler, and X-Ray
subsegments around each fetch, decode, inference and write, from the pool threads too."""

from __future__ import annotations

import json
from typing import Any

import pytest

import handlers.ingest
from pipeline.classifier import Classifier
from pipeline.factory import build_service
from pipeline.ingest import process_messages
from pipeline.observe import XRaySpans
from pipeline.settings import Settings
from tests.functional.conftest import (
    TABLE,
    Clients,
    Context,
    Harness,
    s3_event,
    sample,
    sqs_event,
)

PHOTOS = ("coffee.jpg", "chelsea.jpg", "rocket.jpg")


def emf_documents(text: str) -> list[dict[str, Any]]:
    docs = []
    for line in text.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            docs.append(json.loads(line))
    return docs


def test_each_invocation_writes_its_metrics_as_emf(
    harness: Harness, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    objs = [harness.upload(f"incoming/{n}", sample(n)) for n in PHOTOS]
    objs.append(harness.upload("incoming/notes.txt", b"not a photo"))
    event, _ = sqs_event(*(s3_event(o) for o in objs))
    capsys.readouterr()
    handlers.ingest.handler(event, Context())
    [doc] = emf_documents(capsys.readouterr().out)
    [directive] = doc["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "imgpipe"
    units = {m["Name"]: m["Unit"] for m in directive["Metrics"]}

    def values(name: str) -> list[float]:
        value = doc[name]
        return [float(v) for v in (value if isinstance(value, list) else [value])]

    assert units["BatchSize"] == "Count" and values("BatchSize") == [4]
    assert values("ImagesClassified") == [3] and values("ImagesRejected") == [1]
    for name in ("FetchMs", "DecodeMs", "InferenceMs"):
        assert units[name] == "Milliseconds"
        assert len(values(name)) == 3 and all(v > 0 for v in values(name)), name  # a photo
    assert len(values("EventToRecordMs")) == 4  # every record written has an event time
    assert doc["service"] == "imgpipe"


class Emitter:
    """Collects what the X-Ray recorder would send to the daemon."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send_entity(self, entity: Any) -> None:
        self.sent.append(entity)

    def set_daemon_address(self, address: str) -> None:  # the recorder's interface
        pass

    @property
    def ip(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return 2000


def names(entity: Any) -> list[str]:
    out = []
    for sub in entity.subsegments:
        out.append(sub.name)
        out.extend(names(sub))
    return out


@pytest.fixture
def xray_on() -> Any:
    """Powertools turns the X-Ray SDK off outside Lambda; these tests want it on."""
    from aws_xray_sdk import global_sdk_config

    was = global_sdk_config.sdk_enabled()
    global_sdk_config.set_sdk_enabled(True)
    yield
    global_sdk_config.set_sdk_enabled(was)


def test_spans_hang_under_the_invocation_from_every_thread(
    aws: Clients, classifier: Classifier, harness: Harness, xray_on: None,
) -> None:
    from aws_xray_sdk.core import AWSXRayRecorder
    from aws_xray_sdk.core.sampling.local.sampler import LocalSampler

    recorder = AWSXRayRecorder()
    emitter = Emitter()
    recorder.configure(sampling=False, context_missing="RUNTIME_ERROR", emitter=emitter,
                       sampler=LocalSampler(), streaming_threshold=1000)
    spans = XRaySpans(recorder)
    clf = Classifier(classifier.manifest, classifier.session, batch_size=2,
                     decode_workers=2, fetch_workers=2, spans=spans)
    service = build_service(Settings(table_name=TABLE), clients=aws, classifier=clf,
                            spans=spans)
    objs = [harness.upload(f"incoming/{n}", sample(n)) for n in PHOTOS]
    segment = recorder.begin_segment("imgpipe-ingest")
    spans.bind()
    report = process_messages(service, [(f"m{i}", s3_event(o)) for i, o in enumerate(objs)])
    recorder.end_segment()
    clf.close()
    assert report.counts() == {"classified": 3}
    found = names(segment)
    # context_missing=RUNTIME_ERROR: a span in a thread without the invocation's context
    # would have raised and failed the images.
    assert found.count("## fetch") == 3 and found.count("## decode") == 3
    # The model runs on whatever is decoded (at most 2 at a time): 2 or 3 runs for 3 photos.
    assert 2 <= found.count("## inference") <= 3
    assert found.count("## write") == 3
    assert all(sub.end_time >= sub.start_time for sub in segment.subsegments)


def test_without_a_segment_spans_do_nothing(xray_on: None) -> None:
    from aws_xray_sdk.core import AWSXRayRecorder

    recorder = AWSXRayRecorder()
    recorder.configure(context_missing="LOG_ERROR")
    spans = XRaySpans(recorder)
    spans.bind()  # no segment: tracing off (local stack, tests)
    with spans.span("fetch"):
        pass


def test_no_metric_is_printed_while_metrics_are_disabled(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The local stack disables metrics; a warm backfill worker still printed EMF lines:
    Powertools kept the unprinted values and flushed at a metric's 100th, regardless."""
    import handlers.backfill
    import handlers.summary

    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    for module in (handlers.ingest, handlers.backfill, handlers.summary):
        metrics = module.metrics

        @metrics.log_metrics  # type: ignore[misc]
        def invocation(event: Any, context: Any, metrics: Any = metrics) -> None:
            for _ in range(64):  # one backfill batch's FetchMs values
                metrics.add_metric(name="FetchMs", unit="Milliseconds", value=1.0)

        for _ in range(3):  # a warm worker's batches
            invocation({}, Context())
    assert emf_documents(capsys.readouterr().out) == []

    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED")  # on AWS: printed as before
    handlers.summary.metrics.add_metric(name="FetchMs", unit="Milliseconds", value=1.0)
    handlers.summary.metrics.flush_metrics()
    assert len(emf_documents(capsys.readouterr().out)) == 1
