"""With the stack down or the export lines not pasted, a command said
`EndpointConnectionError ...4566` (or a traceback) or `NoCredentialsError`, and nothing about
what to do: the CLI's top-level handler says it in one sentence."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError, NoCredentialsError

import imgpipe.commands.backfill
import imgpipe.commands.reconcile
import imgpipe.commands.redrive
from imgpipe.cli import main
from pipeline.errors import ImgpipeError


def _fail_with(monkeypatch: pytest.MonkeyPatch, module: Any, error: Exception) -> None:
    def run(_args: Any) -> int:
        raise error

    monkeypatch.setattr(module, "run", run)


def test_a_stack_that_is_not_running_is_named(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    _fail_with(monkeypatch, imgpipe.commands.backfill,
               EndpointConnectionError(endpoint_url="http://127.0.0.1:4566/"))
    assert main(["backfill", "s3://imgpipe-local/old/"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("imgpipe backfill: nothing answers at http://127.0.0.1:4566/: is "
                          "`imgpipe local` running")


def test_a_wrapped_connection_error_gets_the_same_sentence(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        try:
            raise EndpointConnectionError(endpoint_url="https://dynamodb.us-east-1.amazonaws"
                                                       ".com/")
        except EndpointConnectionError as e:
            raise ImgpipeError("reading table imgpipe-predictions: ...") from e
    except ImgpipeError as wrapped:
        _fail_with(monkeypatch, imgpipe.commands.reconcile, wrapped)
    assert main(["reconcile"]) == 1
    err = capsys.readouterr().err
    assert "paste the export lines `imgpipe local` prints (AWS_ENDPOINT_URL=...)" in err
    assert "for AWS, check the network and --region" in err


def test_no_credentials_says_where_they_come_from(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    _fail_with(monkeypatch, imgpipe.commands.redrive, NoCredentialsError())
    assert main(["redrive"]) == 1
    err = capsys.readouterr().err
    assert "no AWS credentials in this terminal" in err and "AWS_ACCESS_KEY_ID=test" in err


def test_other_errors_are_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_with(monkeypatch, imgpipe.commands.redrive, RuntimeError("a bug"))
    with pytest.raises(RuntimeError, match="a bug"):
        main(["redrive"])
