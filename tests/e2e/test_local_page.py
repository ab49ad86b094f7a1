"""The upload page in a real browser (Debian's chromium through Playwright) on
`imgpipe local`: two photos and a text file go through presigned POSTs into the bucket and
the real event path; the page shows two results and one clear error."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import artifact_path, open_page
from tests.e2e.conftest import ROOT, LocalProcess, start_local, stop_local

pytestmark = pytest.mark.e2e

TEXT = b"These are holiday notes, not a photo.\n"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalProcess, str]]:
    lp = start_local(tmp_path_factory.mktemp("home"))
    url = next(line.split("=", 1)[1].strip() for line in lp.output
               if "export IMGPIPE_API_URL=" in line)
    yield lp, url
    stop_local(lp)


def _phone_photo(path: Path) -> Path:
    """A JPEG of 4.7-6 MB, as phones take: over the 4 MiB /classify body and over what
    Lambda takes in one request once base64 adds its third (AWS answers its own 413)."""
    import numpy as np
    from PIL import Image

    noise = np.random.default_rng(7).integers(0, 256, (1300, 1600, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, "JPEG", quality=95, subsampling=0)
    assert 4_700_000 < path.stat().st_size < 6_000_000, path.stat().st_size
    return path


def test_two_photos_and_a_text_file(stack: tuple[LocalProcess, str], tmp_path: Path) -> None:
    lp, url = stack
    photos = [ROOT / "samples" / "coffee.jpg", ROOT / "samples" / "chelsea.jpg"]
    # A text file saved with a photo's name: the browser calls it image/jpeg, the bucket
    # takes it, and the pipeline rejects it; its record's sentence is what the page shows.
    fake = tmp_path / "holiday-notes.jpg"
    fake.write_bytes(TEXT)
    big = _phone_photo(tmp_path / "phone.jpg")
    files = [*(shutil.copy(p, tmp_path / p.name) for p in photos), fake, big]

    with open_page() as page:
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        # The console too: each poll answered 404 until the record was there, and the
        # browser logged every one as "Failed to load resource".
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        api_paths: list[str] = []
        page.on("request", lambda r: api_paths.append(r.url.split("?")[0]))
        page.on("response", lambda r: errors.append(f"{r.status} {r.url}")
                if r.status >= 400 else None)
        forms: list[Any] = []  # the API's answers to POST /uploads: the forms the page sends
        page.on("response", lambda r: forms.append(r)
                if r.request.method == "POST" and r.url.endswith("/uploads") else None)
        page.goto(url + "/")
        page.set_input_files("#files", [str(f) for f in files])
        page.wait_for_function(
            "document.querySelectorAll('.item.classified, .item.rejected').length === 4",
            timeout=180_000)
        classified = page.locator(".item.classified")
        assert classified.count() == 3
        by_name = {classified.nth(i).get_attribute("data-name"):
                   classified.nth(i).locator(".labels li") for i in range(3)}
        assert set(by_name) == {"coffee.jpg", "chelsea.jpg", "phone.jpg"}
        for labels in by_name.values():
            assert labels.count() == 3  # top-3, each with a bar
            for i in range(3):
                width = labels.nth(i).locator(".bar").evaluate("e => e.style.width")
                assert width.endswith("%") and float(width[:-1]) > 0
        assert by_name["coffee.jpg"].first.locator(".label").inner_text() == "espresso"
        assert "cat" in by_name["chelsea.jpg"].first.locator(".label").inner_text()

        rejected = page.locator(".item.rejected")
        assert rejected.count() == 1
        assert rejected.get_attribute("data-name") == "holiday-notes.jpg"
        assert rejected.locator(".state").inner_text() == (
            "rejected: not an image: the data is plain text")
        page.screenshot(path=artifact_path("upload-page.png"), full_page=True)
        assert not errors, errors
        assert not [p for p in api_paths if p.endswith("/classify")]  # photos go via S3
        assert sum(p.endswith("/results") for p in api_paths) >= 4  # it did poll
        # Each upload was a SigV4 form (S3 refuses SigV2 for a bucket created today, and
        # so does the local emulator), with the form fields AWS documents for it.
        assert len(forms) == len(files)
        for answer in forms:
            fields = answer.json()["fields"]
            assert {"x-amz-algorithm", "x-amz-credential", "x-amz-date", "x-amz-signature",
                    "policy"} <= set(fields)
            assert fields["x-amz-algorithm"] == "AWS4-HMAC-SHA256"
            assert "signature" not in fields and "AWSAccessKeyId" not in fields

    # The real event path wrote the records the page showed.
    images = [i for i in lp.aws("dynamodb", "scan", "--table-name", "imgpipe-predictions",
                                "--query", "Items[].image.S")]
    assert len(images) == 4 and all("/incoming/uploads/" in i for i in images)


def test_a_file_the_api_will_not_take_is_an_error_before_any_upload(
        stack: tuple[LocalProcess, str], tmp_path: Path) -> None:
    lp, url = stack
    notes = tmp_path / "notes.txt"
    notes.write_bytes(TEXT)
    before = lp.aws("s3api", "list-objects-v2", "--bucket", "imgpipe-local",
                    "--query", "KeyCount")
    with open_page() as page:
        page.goto(url + "/")
        page.set_input_files("#files", [str(notes)])
        page.wait_for_selector(".item.rejected", timeout=60_000)
        assert page.locator(".item.rejected .state").inner_text().startswith(
            "notes.txt is text/plain, not an image this pipeline accepts")
    after = lp.aws("s3api", "list-objects-v2", "--bucket", "imgpipe-local",
                   "--query", "KeyCount")
    assert after == before
