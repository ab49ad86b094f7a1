"""The fault-injection run (`python -m tools.chaos`), small: 40 photos through the local
stack while ingest workers are killed, DynamoDB replies are lost after the write and the
emulator is frozen for moments, or the state directory's disk fills up; every photo ends
with one record and one document, and reconcile is ok. The full run (1,000 photos) is the
same command without --photos."""

from __future__ import annotations

import os

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


def test_a_disk_full_for_moments_loses_no_photo() -> None:
    # Only the full disk (the state directory's own tmpfs), often: what the emulator cannot
    # journal is refused and tried again; nothing answered is lost, nothing is doubled.
    lines: list[str] = []
    result = run_chaos(40, seed=5, lost_reply_rate=0.0, fault_every_s=2.0,
                       kinds=("disk full",), timeout_s=600, log=lines.append)
    assert result.ok, "\n".join(result.lines() + lines[-30:])
    assert (result.records, result.documents) == (40, 40)
    if os.geteuid() == 0:  # CI and the machines here: the tmpfs is mounted
        assert result.faults["disk full"] >= 1
    else:
        assert any("disk full not injected" in line for line in lines)
