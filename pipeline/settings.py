"""Settings: one frozen dataclass, built from an injected mapping.

`Settings.from_env(os.environ)` in handlers and the CLI; tests pass a dict. Explicit
values (keyword arguments) win over the environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from pipeline.errors import ConfigError

__all__ = ["Settings", "ENV_VARS", "DEFAULT_TIMEOUT_MARGIN_MS", "MIN_WORKING_MS"]

DEFAULT_TIMEOUT_MARGIN_MS = 10_000
MIN_WORKING_MS = 1_000  # an invocation must have at least this long to start images

# field name -> environment variable
ENV_VARS: dict[str, str] = {
    "table_name": "IMGPIPE_TABLE",
    "input_prefix": "IMGPIPE_INPUT_PREFIX",
    "output_prefix": "IMGPIPE_OUTPUT_PREFIX",
    "output_documents": "IMGPIPE_OUTPUT_DOCUMENTS",
    "output_bucket": "IMGPIPE_OUTPUT_BUCKET",
    "bucket": "IMGPIPE_BUCKET",
    "model_source": "IMGPIPE_MODEL",
    "model_cache_dir": "IMGPIPE_MODEL_CACHE",
    "batch_size": "IMGPIPE_BATCH_SIZE",
    "decode_workers": "IMGPIPE_DECODE_WORKERS",
    "fetch_workers": "IMGPIPE_FETCH_WORKERS",
    "max_pixels": "IMGPIPE_MAX_PIXELS",
    "max_object_bytes": "IMGPIPE_MAX_OBJECT_BYTES",
    "timeout_margin_ms": "IMGPIPE_TIMEOUT_MARGIN_MS",
    "function_timeout_s": "AWS_LAMBDA_FUNCTION_TIMEOUT",
    "endpoint_url": "AWS_ENDPOINT_URL",
    "region": "AWS_REGION",
}


OUTPUT_DOCUMENTS = ("per-image", "batch", "none")


@dataclass(frozen=True)
class Settings:
    table_name: str = "imgpipe-predictions"
    input_prefix: str = "incoming/"
    output_prefix: str = "predictions/"
    # per-image: one JSON document per image (the default); batch: one JSON Lines file per
    # invocation, each record pointing at its line; none: records only (no S3 PUT per image).
    output_documents: str = "per-image"
    output_bucket: str = ""  # empty: write next to the input object, in its bucket
    # The pipeline's bucket: S3 events naming another are refused (they would be read
    # without permission, or recorded for objects nobody reconciles). Empty: any bucket.
    bucket: str = ""
    model_source: str = ""  # empty: the packaged default; else a directory, manifest or s3://
    model_cache_dir: str = "/tmp/imgpipe-model"
    batch_size: int = 16
    decode_workers: int = 0  # 0: one per available CPU
    fetch_workers: int = 4  # concurrent S3 reads feeding the decoders
    max_pixels: int = 40_000_000
    max_object_bytes: int = 50 * 1024 * 1024
    timeout_margin_ms: int | None = None  # None: 10 s, at most a quarter of the timeout
    function_timeout_s: int = 0  # 0: learnt from the first invocation's context
    endpoint_url: str = ""  # empty: the real AWS endpoints
    region: str = "us-east-1"

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> Settings:
        values: dict[str, Any] = {}
        types = {f.name: f.type for f in fields(cls)}
        for name, var in ENV_VARS.items():
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            if types[name] in ("int", int, "int | None"):
                try:
                    values[name] = int(raw)
                except ValueError:
                    raise ConfigError(f"{var}={raw!r} is not a whole number") from None
            else:
                values[name] = raw
        if not values.get("region") and env.get("AWS_DEFAULT_REGION"):
            values["region"] = env["AWS_DEFAULT_REGION"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def validate(self) -> None:
        for name in ("input_prefix", "output_prefix"):
            value = getattr(self, name)
            if not value or not value.endswith("/") or value.startswith("/"):
                raise ConfigError(
                    f"{ENV_VARS[name]}={value!r}: a prefix must be non-empty, end with '/' "
                    f"and not start with '/' (for example 'incoming/')"
                )
        a, b = self.input_prefix, self.output_prefix
        if a.startswith(b) or b.startswith(a):
            raise ConfigError(
                f"input prefix {a!r} and output prefix {b!r} overlap: results would "
                f"trigger the pipeline again. Choose prefixes that are not nested."
            )
        if self.output_documents not in OUTPUT_DOCUMENTS:
            raise ConfigError(
                f"IMGPIPE_OUTPUT_DOCUMENTS={self.output_documents!r} must be one of "
                f"{', '.join(OUTPUT_DOCUMENTS)}")
        if not self.table_name:
            raise ConfigError("IMGPIPE_TABLE must name the DynamoDB table")
        for name in ("batch_size", "max_pixels", "max_object_bytes", "fetch_workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{ENV_VARS[name]} must be at least 1")
        if self.decode_workers < 0 or (self.timeout_margin_ms or 0) < 0:
            raise ConfigError("IMGPIPE_DECODE_WORKERS and IMGPIPE_TIMEOUT_MARGIN_MS must be >= 0")
        if self.function_timeout_s < 0:
            raise ConfigError("AWS_LAMBDA_FUNCTION_TIMEOUT must be a number of seconds >= 1")
        if self.function_timeout_s:
            self.check_timeout(self.function_timeout_s * 1000)

    def margin_ms(self, timeout_ms: int | None) -> int:
        """How long before the timeout no new image is started.

        IMGPIPE_TIMEOUT_MARGIN_MS when set; otherwise 10 s, but at most a quarter of the
        function's timeout (a 10 s function keeps 2.5 s), so short timeouts still work.
        """
        if self.timeout_margin_ms is not None:
            return self.timeout_margin_ms
        if timeout_ms is None:
            return DEFAULT_TIMEOUT_MARGIN_MS
        return min(DEFAULT_TIMEOUT_MARGIN_MS, timeout_ms // 4)

    def check_timeout(self, timeout_ms: int) -> None:
        """Refuse a function timeout that leaves no time to work after the margin."""
        margin = self.margin_ms(timeout_ms)
        if timeout_ms - margin >= MIN_WORKING_MS:
            return
        raise ConfigError(
            f"the function's timeout of {timeout_ms / 1000:g} s leaves no working time after "
            f"IMGPIPE_TIMEOUT_MARGIN_MS={margin}: every image would fail as 'close to its "
            f"timeout'. Raise the timeout (FunctionTimeout) to at least "
            f"{-(-(margin + MIN_WORKING_MS) // 1000)} s, or lower IMGPIPE_TIMEOUT_MARGIN_MS "
            f"(unset, it is 10 s but at most a quarter of the timeout)."
        )
