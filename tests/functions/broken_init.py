"""A handler module whose init fails, as a function with a missing model does."""

raise RuntimeError("the model is missing: /nowhere/manifest.json does not exist")


def handler(event: object, context: object) -> None:  # pragma: no cover - never reached
    pass
