"""Lambda entry points: `handlers.ingest.handler` and `handlers.backfill.handler`.

A package built by tools/lambda_package.py carries `imgpipe-package.json` beside this
folder. Deployed on the other architecture than it was built for, the functions would fail
deep inside numpy's import with a misleading message, so that case is said plainly here.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

PACKAGE_INFO = Path(__file__).resolve().parent.parent / "imgpipe-package.json"
_MACHINES = {"x86_64": "x86_64", "arm64": "aarch64"}  # Lambda's names -> platform.machine()


def check_architecture(info: Path = PACKAGE_INFO) -> None:
    if not info.is_file():
        return  # running from the source tree
    built = json.loads(info.read_text(encoding="utf-8"))["architecture"]
    machine = platform.machine().lower()
    if _MACHINES.get(built, built) != machine:
        raise ImportError(
            f"this function's package was built for {built} but runs on {machine}: build and "
            f"deploy with the same Architecture parameter (`sam build --parameter-overrides "
            f"Architecture=...` and the same value for `sam deploy`)"
        )


check_architecture()
