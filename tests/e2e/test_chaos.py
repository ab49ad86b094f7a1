"""The fault-injection run (`python -m tools.chaos`), small: 40 photos through the local
stack while ingest workers are killed, DynamoDB replies are lost after the write and the
emulator is frozen for moments; every photo ends with one record and one document, and
reconcile is ok. The full run (1,000 photos) is the same command without --photos."""

from __future__ import annotations

import pytest

from tools.chaos import run_chaos

pytestmark = pytest.mark.e2e


def test_forty_photos_under_random_faults_end_with_one_record_and_document_each() -> None:
    lines: list[str] = []
    result = run_chaos(40, seed=3, lost_reply_rate=0.2, fault_every_s=2.0, timeout_s=600,
                       log=lines.append)
    assert result.ok, "\n".join(result.lines() + lines[-30:])
    assert (result.records, result.documents, dict(result.statuses)) == (
        40, 40, {"classified": 40})
    assert result.reconcile == "ok"
    assert result.faults["DynamoDB reply lost"] >= 1
    assert result.faults["worker killed"] + result.faults["emulator frozen"] >= 1
