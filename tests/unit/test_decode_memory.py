"""Peak memory of decoding hostile-but-legal images, measured in a child process.

tracemalloc does not see Pillow's C allocations, so each case runs in a fresh interpreter
that builds the classifier, reads the files, resets the kernel's high-water mark
(/proc/self/clear_refs) and reports how far VmHWM rose above the resident size while the
images went through `classify_many`. The images are generated here: a 6300x6300 float32
TIFF, the same as int32, a 6300x6300 16-bit RGBA PNG of ~300 KB that inflates to 317 MB
(a "bomb" under the 40 MP limit), and four float TIFFs in one call.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SIDE = 6300  # 39.7 MP, just under the 40 MP limit
MB = 1024 * 1024
ONE_IMAGE_BUDGET_MB = 300
DECODE_WORKERS = 2

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(),
                                reason="measures VmHWM, which only Linux reports")

CHILD = r"""
import json, sys
from pathlib import Path

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

from pipeline.classifier import Classifier
from pipeline.manifest import load_manifest

clf = Classifier(load_manifest(sys.argv[1]), decode_workers=int(sys.argv[2]))
datas = [Path(p).read_bytes() for p in sys.argv[3:]]
list(clf.classify_many([(0, lambda: Path(sys.argv[1], "reference", "coffee.png").read_bytes())]))
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
except OSError:
    pass
before = status("VmRSS")
results = list(clf.classify_many([(i, (lambda d=d: d)) for i, d in enumerate(datas)]))
print(json.dumps({"peak": status("VmHWM") - before,
                  "errors": [str(r.error) for r in results if r.error is not None]}))
"""


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _rgba16_png_bomb(path: Path) -> None:
    """A SIDE x SIDE 16-bit RGBA PNG of zeros, compressed row by row (never in memory)."""
    header = struct.pack(">IIBBBBB", SIDE, SIDE, 16, 6, 0, 0, 0)
    deflate = zlib.compressobj(9)
    row = bytes(1 + SIDE * 8)  # filter byte + 4 channels x 2 bytes
    idat = b"".join([deflate.compress(row) for _ in range(SIDE)] + [deflate.flush()])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
                     + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("big")
    gradient = Image.linear_gradient("L").resize((SIDE, SIDE))
    paths = {"float32 TIFF": d / "float.tif", "int32 TIFF": d / "int32.tif",
             "16-bit RGBA PNG": d / "rgba16.png"}
    for mode, key in (("F", "float32 TIFF"), ("I", "int32 TIFF")):
        with gradient.convert(mode) as im:
            im.save(paths[key], compression="tiff_adobe_deflate")
    gradient.close()
    _rgba16_png_bomb(paths["16-bit RGBA PNG"])
    return paths


def peak_mb(paths: list[Path]) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT / "model"), str(DECODE_WORKERS),
         *map(str, paths)],
        capture_output=True, text=True, env=env, check=True, timeout=600,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == [], result["errors"]
    return float(result["peak"]) / MB


@pytest.mark.parametrize("kind", ["float32 TIFF", "int32 TIFF", "16-bit RGBA PNG"])
def test_one_large_high_bit_depth_image_stays_within_its_budget(
        images: dict[str, Path], kind: str) -> None:
    assert images[kind].stat().st_size < 400_000, "small files: the pixels are the problem"
    peak = peak_mb([images[kind]])
    assert peak < ONE_IMAGE_BUDGET_MB, f"{kind}: {peak:.0f} MB above the idle process"


def test_four_float_tiffs_in_one_call_cost_at_most_one_budget_per_decoder(
        images: dict[str, Path]) -> None:
    peak = peak_mb([images["float32 TIFF"]] * 4)
    assert peak < DECODE_WORKERS * ONE_IMAGE_BUDGET_MB, f"{peak:.0f} MB above the idle process"
