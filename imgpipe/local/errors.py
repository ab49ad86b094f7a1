"""The local stack's deployment error (its own module: provision and its parts raise it)."""

from __future__ import annotations

from pipeline.errors import ImgpipeError

__all__ = ["ProvisionError"]


class ProvisionError(ImgpipeError):
    """The template could not be deployed into the emulator."""
