"""IMGPIPE_OUTPUT_DOCUMENTS is one strategy, chosen once from the settings."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.errors import ConfigError
from pipeline.events import ObjectRef
from pipeline.outputs import (
    BatchDocuments,
    NoDocuments,
    PerImageDocuments,
    output_documents_for,
)
from pipeline.settings import Settings

REF = ObjectRef("photos", "incoming/cat.jpg", etag="e")


class Untouchable:
    """A store or table that no strategy but per-image may call."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"called {name}")


@pytest.mark.parametrize(("mode", "kind", "collects", "key"), [
    ("per-image", PerImageDocuments, False, "predictions/efficientnet@1/incoming/cat.jpg.json"),
    ("batch", BatchDocuments, True, None),
    ("none", NoDocuments, False, None),
])
def test_each_mode_is_its_own_strategy(mode: str, kind: type, collects: bool,
                                       key: str | None) -> None:
    settings = Settings(table_name="t", output_documents=mode)
    documents = output_documents_for(settings, Untouchable(), Untouchable())  # type: ignore[arg-type]
    assert isinstance(documents, kind)
    assert documents.collects is collects
    assert documents.output_key(REF, "efficientnet@1") == key


@pytest.mark.parametrize("mode", ["batch", "none"])
def test_modes_without_a_document_per_image_never_touch_s3_after_the_record(mode: str) -> None:
    from pipeline.records import gone_record

    documents = output_documents_for(Settings(table_name="t", output_documents=mode),
                                     Untouchable(), Untouchable())  # type: ignore[arg-type]
    record = gone_record(REF, "m@1")
    documents.follow(REF, record, just_written=True)
    documents.ensure(REF, record)


def test_an_unknown_mode_is_refused_with_the_variable_named() -> None:
    settings = Settings(table_name="t")
    object.__setattr__(settings, "output_documents", "sometimes")
    with pytest.raises(ConfigError, match="IMGPIPE_OUTPUT_DOCUMENTS='sometimes'"):
        output_documents_for(settings, Untouchable(), Untouchable())  # type: ignore[arg-type]
