"""The report in a real browser (Debian's chromium through tests/browser.py): the demo's
report shows its thumbnails, labels and charts and its filters work; a report of 10,000
images opens with one slice of the grid drawn and draws more as it scrolls."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from imgpipe.report import build_report
from pipeline.classifier import LabelScore
from pipeline.records import PredictionRecord
from tests.browser import artifact_path, open_page

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def open_report(page: Any, index: Path) -> list[str]:
    """Load the report; the page's errors (script errors, failed loads) are returned."""
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("requestfailed", lambda r: errors.append(f"failed: {r.url}"))
    page.goto(index.as_uri())
    page.wait_for_selector("body[data-ready='1']")
    return errors


def visible_keys(page: Any) -> list[str]:
    keys = page.eval_on_selector_all(".card .key", "els => els.map(e => e.textContent)")
    return [str(k) for k in keys]


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "report"
    env = {**os.environ, "HOME": str(tmp_path_factory.mktemp("home"))}
    env.pop("AWS_ENDPOINT_URL", None)
    done = subprocess.run([str(BIN / "imgpipe"), "demo", "--report", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"report: {(out / 'index.html').resolve()}" in done.stdout
    # no address of the demo's stack, which is gone when the command returns
    assert "http://127.0.0.1" not in done.stdout, done.stdout
    return out / "index.html"


def test_the_demo_report_shows_pictures_labels_and_charts(demo_report: Path) -> None:
    with open_page() as page:
        errors = open_report(page, demo_report)
        page.wait_for_function("Array.from(document.images).every(i => i.complete)")
        widths = page.eval_on_selector_all(".card img", "els => els.map(e => e.naturalWidth)")
        assert len(widths) == 6 and all(w > 0 for w in widths), widths  # 6 photos, 1 text
        text = page.inner_text("body")
        for label in ("espresso", "tiger cat", "moped"):
            assert label in text
        assert "not an image: the data is plain text" in text
        assert page.inner_text(".fact-images") == "7"
        assert page.inner_text(".fact-model") == "efficientnet-lite0@1"
        assert page.locator("#label-chart .row").count() == 6
        assert page.locator("#score-chart .col").count() == 10
        assert page.locator(".card").first.locator(".scores .row").count() == 3
        page.screenshot(path=str(artifact_path("demo-report.png")), full_page=True)

        page.select_option("#status-filter", "rejected")
        assert visible_keys(page) == ["notes/readme.txt"]
        page.select_option("#status-filter", "")
        page.click("#label-chart .row:has-text('espresso')")  # the chart filters too
        assert visible_keys(page) == ["coffee.jpg"]
        page.select_option("#label-filter", "")
        page.fill("#name-filter", "holiday")
        assert visible_keys(page) == ["holiday photos/café astronaut.jpg"]
        assert page.inner_text("#shown") == "1 of 7 image(s)"
        assert errors == []


def _tiny_jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 32), (i * 37 % 256, i * 91 % 256, 120)).save(buf, "JPEG")
    return buf.getvalue()


def test_ten_thousand_images_open_in_slices(tmp_path: Path) -> None:
    labels = ["espresso", "tabby", "seashore", "moped", "rocket"]
    records = []
    for i in range(10_000):
        status = "rejected" if i % 50 == 0 else "classified"
        top = tuple(LabelScore(labels[(i + j) % 5], (i + j) % 5, s)
                    for j, s in enumerate((0.5 + (i % 50) / 100, 0.2, 0.1)))
        records.append(PredictionRecord(
            image=f"s3://b/big/{i:05d}.jpg", model="m@1", status=status,  # type: ignore[arg-type]
            processed_at=f"2026-11-28T10:{i // 600 % 60:02d}:{i // 10 % 60:02d}.000Z",
            etag=f"{i:032x}",
            **({"label": top[0].label, "score": top[0].score, "top_k": top}
               if status == "classified" else {"error": "not an image: the data is plain text"})))
    shared = _tiny_jpeg(1)
    result = build_report(records, lambda r: shared, tmp_path / "big", source="s3://b/big/",
                          model="m@1")
    assert result.images == 10_000 and result.thumbnails == 9_800
    page_bytes = (tmp_path / "big" / "index.html").stat().st_size
    data_bytes = (tmp_path / "big" / "data.js").stat().st_size
    assert page_bytes < 4_000, "the page itself is small; the data is a file of its own"
    assert data_bytes < 1_200_000, data_bytes
    for name in ("index.html", "report.js", "report.css"):
        text = (tmp_path / "big" / name).read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text, f"{name} is offline"

    with open_page() as page:
        errors = open_report(page, result.index)
        first = page.locator(".card").count()
        assert 0 < first <= 240, "one or two slices, not 10,000 cards"
        lazy = page.eval_on_selector_all(".card img", "els => els.every(e => e.loading == 'lazy')")
        assert lazy
        page.mouse.wheel(0, 20_000)
        page.wait_for_function(f"document.querySelectorAll('.card').length > {first}")
        page.select_option("#status-filter", "rejected")
        assert page.inner_text("#shown") == "200 of 10000 image(s)"
        page.select_option("#status-filter", "")
        mopeds = sum(1 for r in records if r.label == "moped")
        page.select_option("#label-filter", label=f"moped ({mopeds})")
        assert set(page.eval_on_selector_all(
            ".card .label.first", "els => els.map(e => e.textContent)")) == {"moped"}
        assert errors == []


def test_a_report_beside_a_second_model_shows_both_and_filters_the_differences(
        tmp_path: Path) -> None:
    """`imgpipe report --compare-with B`: each card shows B's labels under A's, red where the
    top-1 differs; the header says the agreement; a filter keeps the differing images."""
    def record(i: int, model: str, label: str) -> PredictionRecord:
        top = (LabelScore(label, 0, 0.8), LabelScore("other", 1, 0.1))
        return PredictionRecord(image=f"s3://b/p/{i}.jpg", model=model, status="classified",
                                processed_at="2026-12-04T10:00:00.000Z", etag=f"{i:032x}",
                                label=label, score=0.8, top_k=top)

    a = [record(i, "a@1", "tabby") for i in range(4)]
    b = [record(i, "b@1", "tabby" if i < 3 else "lion") for i in range(3, -1, -1)][:3]
    result = build_report(a, lambda r: _tiny_jpeg(2), tmp_path / "cmp", source="s3://b/p/",
                          model="a@1", other=b, other_model="b@1")
    with open_page() as page:
        errors = open_report(page, result.index)
        assert page.inner_text(".fact-compared-with") == "b@1"
        assert page.inner_text(".fact-top-agreement") == "2 of 3 (66.7%)"
        others = page.eval_on_selector_all(".card .other", "els => els.map(e => e.textContent)")
        assert others == ["b@1: no result"] + ["b@1: tabby 80.0% · other 10.0%"] * 2 + \
            ["b@1: lion 80.0% · other 10.0%"]
        page.select_option("#status-filter", "differs")
        assert visible_keys(page) == ["3.jpg"]
        assert page.locator(".card .other.differs").count() == 1
        assert errors == []
