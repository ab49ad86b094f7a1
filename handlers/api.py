"""Lambda entry point for the HTTP API behind the function URL (payload format 2.0):
POST /classify, POST /uploads, GET /results and the upload page (`pipeline.api`)."""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger

from pipeline.api import HttpApi
from pipeline.factory import build_api
from pipeline.settings import Settings

logger = Logger(service="imgpipe")
_api: HttpApi | None = None


def get_api() -> HttpApi:
    """Built once per container: the model loads here, as in the ingest function."""
    global _api
    if _api is None:
        _api = build_api(Settings.from_env(os.environ), bucket=os.environ["IMGPIPE_BUCKET"])
    return _api


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    response = get_api().handle(event)
    logger.info("request", extra={"method": event.get("requestContext", {}).get(
        "http", {}).get("method"), "path": event.get("rawPath"),
        "status": response["statusCode"]})
    return response


if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
    get_api()
