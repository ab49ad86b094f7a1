"""`imgpipe redrive` and `imgpipe reconcile` against moto in-process (no model needed)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from imgpipe.cli import main
from imgpipe.local.poller import SqsPoller
from imgpipe.reconcile import ReconcileReport, reconcile
from imgpipe.redrive import RedriveError, redrive
from pipeline.aws import Clients, S3ObjectStore
from pipeline.classifier import LabelScore, Prediction
from pipeline.events import ObjectRef
from pipeline.keys import output_key_for
from pipeline.records import classified_record, gone_record, rejected_record
from pipeline.table import PredictionsTable
from tests.functional.conftest import BUCKET, MODEL, TABLE

QUEUE = "imgpipe-ingest"
DLQ = "imgpipe-ingest-dlq"


@dataclass
class Env:
    clients: Clients
    sqs: Any
    queue_url: str
    dlq_url: str

    @property
    def s3(self) -> Any:
        return self.clients.s3

    def depth(self, url: str) -> int:
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages",
                                          "ApproximateNumberOfMessagesNotVisible"])
        return sum(int(v) for v in attrs["Attributes"].values())

    def drain(self, url: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while got := self.sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10,
                MessageAttributeNames=["All"]).get("Messages", []):
            out.extend(got)
            self.sqs.delete_message_batch(QueueUrl=url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)])
        return out

    # ---- a pipeline state built by hand -----------------------------------------------

    def upload(self, key: str, data: bytes = b"\xff\xd8 a photo") -> ObjectRef:
        resp = self.s3.put_object(Bucket=BUCKET, Key=key, Body=data)
        return ObjectRef(BUCKET, key, etag=resp["ETag"], size=len(data))

    def classified(self, ref: ObjectRef, model: str = MODEL, write_output: bool = True) -> None:
        prediction = Prediction(label="espresso", score=0.91,
                                top_k=(LabelScore("espresso", 967, 0.91),),
                                width=600, height=400, format="JPEG")
        record = classified_record(ref, model, prediction,
                                   output_key_for(ref.key, model, "predictions/"))
        assert record.output_key is not None
        if write_output:
            S3ObjectStore(self.s3).put_json(BUCKET, record.output_key, record.to_document())
        assert PredictionsTable(self.clients.dynamodb, TABLE).put(record, None)

    def rejected(self, ref: ObjectRef) -> None:
        record = rejected_record(ref, MODEL, "not an image: plain text")
        assert PredictionsTable(self.clients.dynamodb, TABLE).put(record, None)

    def check(self, queues: bool = True) -> ReconcileReport:
        return reconcile(self.s3, self.clients.dynamodb, bucket=BUCKET,
                         input_prefix="incoming/", output_prefix="predictions/", table=TABLE,
                         model=MODEL, queue_url=self.queue_url if queues else None,
                         dlq_url=self.dlq_url if queues else None, sqs_client=self.sqs)


@pytest.fixture
def env(aws: Clients) -> Env:
    import boto3

    sqs = boto3.client("sqs", region_name="us-east-1")
    dlq_url = sqs.create_queue(QueueName=DLQ)["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    queue_url = sqs.create_queue(QueueName=QUEUE, Attributes={
        "VisibilityTimeout": "30",
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 5}),
    })["QueueUrl"]
    return Env(clients=aws, sqs=sqs, queue_url=queue_url, dlq_url=dlq_url)


def dead_letters(env: Env, n: int) -> list[str]:
    bodies = [json.dumps({"Records": [{"n": i, "key": f"incoming/caf\u00e9 {i}.jpg"}]})
              + "\n  " for i in range(n)]
    for start in range(0, n, 10):
        env.sqs.send_message_batch(QueueUrl=env.dlq_url, Entries=[
            {"Id": str(i), "MessageBody": b,
             "MessageAttributes": {"n": {"DataType": "Number", "StringValue": str(start + i)}}}
            for i, b in enumerate(bodies[start:start + 10])])
    return bodies


# ---- redrive -----------------------------------------------------------------------------


def test_redrive_moves_every_message_back_intact(env: Env) -> None:
    bodies = dead_letters(env, 23)
    moved: list[str] = []
    count = redrive(env.sqs, env.dlq_url, env.queue_url, wait_s=0,
                    on_moved=lambda m: moved.append(m["Body"]))
    assert count == 23 and sorted(moved) == sorted(bodies)
    assert env.depth(env.dlq_url) == 0
    back = env.drain(env.queue_url)
    assert sorted(m["Body"] for m in back) == sorted(bodies), "bodies byte-for-byte"
    assert {m["MessageAttributes"]["n"]["StringValue"] for m in back} == {
        str(i) for i in range(23)}


def test_redrive_stops_at_max_and_on_an_empty_dlq(env: Env) -> None:
    dead_letters(env, 15)
    assert redrive(env.sqs, env.dlq_url, env.queue_url, max_messages=12, wait_s=0) == 12
    assert (env.depth(env.dlq_url), env.depth(env.queue_url)) == (3, 12)
    assert redrive(env.sqs, env.dlq_url, env.queue_url, max_messages=0, wait_s=0) == 0
    assert redrive(env.sqs, env.dlq_url, env.queue_url, wait_s=0) == 3
    assert redrive(env.sqs, env.dlq_url, env.queue_url, wait_s=0) == 0


class HalfBrokenSqs:
    """Sends fail for bodies containing "n\": 1" (entry-level failures, as SQS reports them)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> Any:  # noqa: N803
        bad = [e for e in Entries if '"n": 1,' in e["MessageBody"]]
        good = [e for e in Entries if e not in bad]
        resp = self.inner.send_message_batch(QueueUrl=QueueUrl, Entries=good) if good else {}
        return {"Successful": resp.get("Successful", []),
                "Failed": [{"Id": e["Id"], "SenderFault": False, "Code": "InternalError",
                            "Message": "try again"} for e in bad]}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_redrive_deletes_only_what_was_sent(env: Env) -> None:
    bodies = dead_letters(env, 3)
    with pytest.raises(RedriveError, match="InternalError") as info:
        redrive(HalfBrokenSqs(env.sqs), env.dlq_url, env.queue_url, wait_s=0)
    assert info.value.moved == 2
    left = env.drain(env.dlq_url)  # released at once, not hidden for the visibility timeout
    assert [m["Body"] for m in left] == [bodies[1]]
    assert sorted(m["Body"] for m in env.drain(env.queue_url)) == [bodies[0], bodies[2]]


def test_a_poison_message_can_be_redriven_and_processed(env: Env) -> None:
    env.sqs.send_message(QueueUrl=env.queue_url, MessageBody="poison \u2620")
    healthy = False
    handled: list[str] = []

    def handler(event: dict[str, Any], context: Any) -> Any:
        ids = [r["messageId"] for r in event["Records"]]
        handled.extend(r["body"] for r in event["Records"])
        return {"batchItemFailures": [] if healthy else [{"itemIdentifier": i} for i in ids]}

    poller = SqsPoller(env.sqs, env.queue_url, handler, retry_visibility_s=0)
    while poller.poll_once(wait_s=0) is not None:
        pass
    assert (env.depth(env.queue_url), env.depth(env.dlq_url)) == (0, 1)
    assert redrive(env.sqs, env.dlq_url, env.queue_url, wait_s=0) == 1
    healthy = True
    result = poller.poll_once(wait_s=0)
    assert result is not None and result.deleted == 1
    assert handled == ["poison \u2620"] * 6
    assert (env.depth(env.queue_url), env.depth(env.dlq_url)) == (0, 0)


def test_redrive_command(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    dead_letters(env, 4)
    assert main(["redrive", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "holds about 4 message(s)" in out and env.depth(env.dlq_url) == 4
    assert main(["redrive", "--queue", QUEUE, "--max", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len([line for line in lines if line.startswith("moved ")]) == 4, lines
    assert lines[-1].startswith("moved 3 message(s) from ")
    assert main(["redrive", "--queue", env.queue_url, "--dlq", DLQ]) == 0
    assert "moved 1 message(s)" in capsys.readouterr().out
    assert (env.depth(env.queue_url), env.depth(env.dlq_url)) == (4, 0)
    assert main(["redrive", "--queue", "no-such-queue"]) == 1
    assert "no queue named 'no-such-queue'" in capsys.readouterr().err


# ---- reconcile ---------------------------------------------------------------------------


def consistent(env: Env) -> dict[str, ObjectRef]:
    refs = {
        "a": env.upload("incoming/a.jpg", b"\xff\xd8 coffee"),
        "b": env.upload("incoming/deep/er/b c+d.jpg", b"\xff\xd8 cat"),
        "txt": env.upload("incoming/notes.txt", b"not a photo"),
    }
    env.upload("incoming/photos/", b"")  # a folder marker: no record expected
    env.classified(refs["a"])
    env.classified(refs["b"])
    env.rejected(refs["txt"])
    return refs


def test_a_consistent_state_is_ok(env: Env) -> None:
    consistent(env)
    report = env.check()
    assert report.ok, report.problems()
    assert (report.objects, report.records, report.outputs) == (3, 3, 2)
    assert dict(report.statuses) == {"classified": 2, "rejected": 1}
    assert report.problems() == []
    assert (report.queue_depth, report.dlq_depth) == (0, 0)
    json.dumps(report.to_dict())


def _missing_record(env: Env, refs: dict[str, ObjectRef]) -> None:
    env.upload("incoming/new.jpg")


def _stale_record(env: Env, refs: dict[str, ObjectRef]) -> None:
    env.upload("incoming/a.jpg", b"\xff\xd8 a newer photo")


def _gone_record_but_object_is_back(env: Env, refs: dict[str, ObjectRef]) -> None:
    ref = env.upload("incoming/back.jpg")
    PredictionsTable(env.clients.dynamodb, TABLE).put(gone_record(ref, MODEL), None)


def _missing_output(env: Env, refs: dict[str, ObjectRef]) -> None:
    env.s3.delete_object(Bucket=BUCKET, Key=output_key_for("incoming/a.jpg", MODEL,
                                                           "predictions/"))


def _classified_without_output(env: Env, refs: dict[str, ObjectRef]) -> None:
    env.classified(env.upload("incoming/c.jpg"), write_output=False)


def _orphaned_output(env: Env, refs: dict[str, ObjectRef]) -> None:
    S3ObjectStore(env.s3).put_json(BUCKET, f"predictions/{MODEL}/incoming/ghost.jpg.json", {})


def _dlq(env: Env, refs: dict[str, ObjectRef]) -> None:
    env.sqs.send_message(QueueUrl=env.dlq_url, MessageBody="{}")


@pytest.mark.parametrize(("break_it", "kind", "example"), [
    (_missing_record, "missing-record", f"s3://{BUCKET}/incoming/new.jpg"),
    (_stale_record, "stale-record", f"s3://{BUCKET}/incoming/a.jpg"),
    (_gone_record_but_object_is_back, "stale-record", f"s3://{BUCKET}/incoming/back.jpg"),
    (_missing_output, "missing-output", f"predictions/{MODEL}/incoming/a.jpg.json"),
    (_classified_without_output, "missing-output", f"predictions/{MODEL}/incoming/c.jpg.json"),
    (_orphaned_output, "orphaned-output", f"predictions/{MODEL}/incoming/ghost.jpg.json"),
    (_dlq, "dlq", None),
])
def test_each_inconsistency_is_found(
    env: Env, break_it: Callable[[Env, dict[str, ObjectRef]], None], kind: str,
    example: str | None,
) -> None:
    refs = consistent(env)
    break_it(env, refs)
    report = env.check()
    assert not report.ok
    [(found, count, examples, _meaning)] = report.problems()
    assert (found, count) == (kind, 1)
    if example is not None:
        assert examples == (example,)


def test_a_missing_record_with_messages_in_the_queue_is_in_flight(env: Env) -> None:
    consistent(env)
    env.upload("incoming/new.jpg")
    assert not env.check().in_flight
    env.sqs.send_message(QueueUrl=env.queue_url, MessageBody="{}")
    report = env.check()
    assert report.in_flight and not report.ok
    assert "still in the queue" in report.problems()[0][3]


def test_deleted_objects_and_other_models_are_no_problem(env: Env) -> None:
    refs = consistent(env)
    env.s3.delete_object(Bucket=BUCKET, Key="incoming/a.jpg")
    env.classified(refs["b"], model="other-model@2")  # another model's record and output
    env.classified(env.upload("elsewhere/x.jpg"))  # a record outside the input prefix
    report = env.check()
    assert report.ok, report.problems()
    assert report.deleted_objects == (f"s3://{BUCKET}/incoming/a.jpg",)
    # Like with like: the 3 objects' records and documents, the one elsewhere apart.
    assert (report.records, report.outputs) == (3, 2)
    assert (report.other_records, report.other_outputs) == (1, 1)


def test_the_command_counts_objects_records_and_documents_of_one_prefix(
        env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """A backfill elsewhere in the bucket used to be added to the records next to the
    objects of the input prefix ("3 object(s), 5 record(s)")."""
    consistent(env)
    env.classified(env.upload("old/x.jpg"))
    env.classified(env.upload("old/y.jpg"))
    assert main(["reconcile", "--model", MODEL]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].strip() == ("3 object(s) under incoming/, 3 record(s) of them "
                                "(2 classified, 1 rejected), 2 output document(s) of them")
    assert lines[2].strip().startswith("elsewhere in the bucket: 2 record(s) and 2 output "
                                       "document(s) of ")


def test_without_queues_the_dlq_is_not_asked(env: Env) -> None:
    consistent(env)
    _dlq(env, {})
    report = env.check(queues=False)
    assert report.ok and report.dlq_depth is None and report.queue_depth is None


def test_reconcile_command(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    consistent(env)
    assert main(["reconcile", "--model", MODEL]) == 0
    assert "ok: everything agrees" in capsys.readouterr().out

    for i in range(7):
        env.upload(f"incoming/new-{i}.jpg")
    _orphaned_output(env, {})
    assert main(["reconcile", "--model", MODEL]) == 1
    lines = capsys.readouterr().out.splitlines()
    missing = [line for line in lines if line.startswith("missing-record: 7 ")]
    assert len(missing) == 1 and "(+2 more)" in missing[0]
    assert any(line.startswith("orphaned-output: 1 ") for line in lines)
    assert lines[-1] == "NOT OK: 2 kind(s) of problem"

    assert main(["reconcile", "--model", MODEL, "--json", "--queue", ""]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and len(doc["missing_records"]) == 7
    assert doc["dlq_depth"] is None


def test_an_empty_bucket_and_table_is_empty_not_consistent(
        env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reconcile", "--model", MODEL]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith("empty: no objects under s3://imgpipe-local/incoming/")
    assert "everything agrees" not in out
    consistent(env)
    assert main(["reconcile", "--model", MODEL]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "ok: everything agrees"


@pytest.mark.parametrize(("args", "sentence"), [
    (["--table", "nope"], "imgpipe reconcile: table 'nope' does not exist: check --table"),
    (["--bucket", "nope-bucket"],
     "imgpipe reconcile: bucket 'nope-bucket' does not exist: check --bucket"),
    (["--queue", "nope-queue"],
     "imgpipe reconcile: no queue named 'nope-queue' in this account/region"),
])
def test_reconcile_names_what_does_not_exist_in_one_line(
        env: Env, capsys: pytest.CaptureFixture[str], args: list[str], sentence: str) -> None:
    assert main(["reconcile", "--model", MODEL, *args]) == 1
    captured = capsys.readouterr()
    [line] = captured.err.splitlines()
    assert line.startswith(sentence), line
    assert "Traceback" not in captured.out + captured.err


def test_redrive_sends_batches_under_sqss_256_kib_limit(env: Env) -> None:
    """Ten 60 KB bodies are 600 KB: one SendMessageBatch would be BatchRequestTooLong."""
    bodies = [json.dumps({"Records": [], "pad": str(i) * 60_000}) for i in range(10)]
    for b in bodies:
        env.sqs.send_message(QueueUrl=env.dlq_url, MessageBody=b)
    sizes: list[int] = []

    class Measuring:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def send_message_batch(self, **kwargs: Any) -> Any:
            sizes.append(sum(len(e["MessageBody"].encode()) for e in kwargs["Entries"]))
            return self.inner.send_message_batch(**kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    assert redrive(Measuring(env.sqs), env.dlq_url, env.queue_url, wait_s=0) == 10
    assert sizes and max(sizes) <= 262_144 and sum(sizes) == sum(len(b) for b in bodies)
    assert sorted(m["Body"] for m in env.drain(env.queue_url)) == sorted(bodies)
    assert env.depth(env.dlq_url) == 0


def test_redrive_says_when_the_dlqs_messages_are_in_flight(
        env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    dead_letters(env, 3)
    received = env.sqs.receive_message(QueueUrl=env.dlq_url, MaxNumberOfMessages=10,
                                       VisibilityTimeout=600)["Messages"]
    assert len(received) == 3  # someone else holds them now
    assert main(["redrive"]) == 1
    captured = capsys.readouterr()
    assert "moved 0 message(s)" in captured.out
    assert "3 more message(s)" in captured.err and "in flight" in captured.err
    assert len(captured.err.strip().splitlines()) == 1
