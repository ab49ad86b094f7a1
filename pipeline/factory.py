"""Wiring: builds the clients, the model session and the service from settings.

The only place that decides which concrete adapters the core gets; handlers, the CLI and
the local stack all come through here, and tests can pass their own clients.
"""

from __future__ import annotations

from typing import Any

from pipeline.api import HttpApi
from pipeline.aws import (
    Clients,
    S3ObjectStore,
    create_clients,
    presigning_client,
)
from pipeline.classifier import Classifier
from pipeline.decode import DecodeLimits
from pipeline.modelstore import resolve_model
from pipeline.observe import NO_SPANS, Spans
from pipeline.outputs import output_documents_for
from pipeline.service import ClassificationService
from pipeline.settings import Settings
from pipeline.table import PredictionsTable

__all__ = ["build_api", "build_classifier", "build_service"]


def build_classifier(settings: Settings, s3_client: Any = None,
                     spans: Spans = NO_SPANS) -> Classifier:
    manifest = resolve_model(settings.model_source, settings.model_cache_dir, s3_client)
    return Classifier(
        manifest,
        batch_size=settings.batch_size,
        decode_workers=settings.decode_workers or None,
        fetch_workers=settings.fetch_workers,
        limits=DecodeLimits(max_pixels=settings.max_pixels,
                            max_bytes=settings.max_object_bytes),
        spans=spans,
    )


def build_service(
    settings: Settings,
    clients: Clients | None = None,
    classifier: Classifier | None = None,
    logger: Any = None,
    spans: Spans = NO_SPANS,
) -> ClassificationService:
    """The service for `settings`; fails fast (ModelError) if the model is missing or corrupt.
    `spans`: X-Ray subsegments (the handlers' `XRaySpans`), none by default."""
    clients = clients or create_clients(settings)
    classifier = classifier or build_classifier(settings, clients.s3, spans)
    store = S3ObjectStore(clients.s3)
    table = PredictionsTable(clients.dynamodb, settings.table_name)
    return ClassificationService(
        classifier, store, table, settings, logger=logger, spans=spans,
        documents=output_documents_for(settings, store, table),
    )


def build_api(settings: Settings, bucket: str, clients: Clients | None = None,
              classifier: Classifier | None = None, session: Any = None) -> HttpApi:
    """The HTTP API for `settings` and the pipeline's `bucket`; its upload forms are signed
    with SigV4 (`presigning_client`), whatever `clients` are."""
    clients = clients or create_clients(settings, session)
    return HttpApi(
        classifier or build_classifier(settings, clients.s3), clients.s3, clients.dynamodb,
        bucket=bucket, input_prefix=settings.input_prefix, table=settings.table_name,
        max_object_bytes=settings.max_object_bytes,
        presigner=presigning_client(settings, bucket, session),
    )
