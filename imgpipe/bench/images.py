"""The image sets a run measures: JPEGs made from the sample photos, cached on disk,
and how measurements read them.

Two sizes: 12 MP (4000x3000, like a phone camera's photo, ~3 MB) and web-size (800x600).
Each image is a different crop (and mirror) of a sample photo at the set's aspect, upscaled,
plus gaussian noise so it compresses like a real photo. The files are cached by
name/size/noise/quality, so only the first run pays for them.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from imgpipe.bench.context import SOURCE_ROOT, ImageSet, Progress

BIG_SIZE = (4000, 3000)
BIG_NOISE_SIGMA = 7.0
BIG_QUALITY = 90
WEB_SIZE = (800, 600)
WEB_NOISE_SIGMA = 2.0
WEB_QUALITY = 85


def _sample_paths() -> list[Path]:
    root = SOURCE_ROOT / "samples"
    paths = sorted(root.glob("*.jpg"))
    if not paths:
        raise FileNotFoundError(f"no sample photos in {root}")
    return paths


def generate_images(
    cache_dir: Path,
    name: str,
    count: int,
    size: tuple[int, int],
    sigma: float,
    quality: int,
    progress: Progress | None = None,
) -> ImageSet:
    """`count` JPEGs of `size`: sample photos cropped to the aspect, upscaled, plus noise.

    Files are cached by name/size/noise/quality, so only the first run pays for them.
    """
    from PIL import Image

    w, h = size
    folder = cache_dir / f"{name}-{w}x{h}-n{sigma:g}-q{quality}"
    folder.mkdir(parents=True, exist_ok=True)
    samples = _sample_paths()
    paths: list[Path] = []
    made = 0
    for i in range(count):
        path = folder / f"{i:04d}.jpg"
        paths.append(path)
        if path.is_file() and path.stat().st_size > 0:
            continue
        rng = np.random.default_rng(1000 + i)
        with Image.open(samples[i % len(samples)]) as src:
            im = src.convert("RGB")
        sw, sh = im.size
        # A different crop (and mirror) of the sample per image, at the target aspect.
        frac = 0.8 + 0.2 * rng.random()
        cw = min(sw, round(sh * w / h)) * frac
        ch = cw * h / w
        left = rng.random() * (sw - cw)
        top = rng.random() * (sh - ch)
        im = im.resize((w, h), Image.Resampling.BICUBIC, box=(left, top, left + cw, top + ch))
        if i // len(samples) % 2:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        arr = np.asarray(im, dtype=np.float32)
        arr = arr + rng.standard_normal(arr.shape, dtype=np.float32) * np.float32(sigma)
        np.clip(arr, 0, 255, out=arr)
        out = Image.fromarray(arr.astype(np.uint8))
        tmp = path.with_suffix(".part")
        out.save(tmp, "JPEG", quality=quality)
        os.replace(tmp, path)
        made += 1
        if progress and made % 8 == 0:
            progress(f"  generated {made} {name} images")
    mean = int(statistics.fmean(p.stat().st_size for p in paths)) if paths else 0
    return ImageSet(name=name, paths=tuple(paths), width=w, height=h, mean_bytes=mean)


def read_all(paths: Sequence[Path]) -> list[bytes]:
    """The files' bytes in memory (what decode timings start from)."""
    return [p.read_bytes() for p in paths]


def file_loader(path: Path) -> Callable[[], bytes]:
    """A loader for `classify_many` that reads the file when called, as the Lambda reads
    an object's bytes from S3."""
    def load() -> bytes:
        with open(path, "rb") as f:
            return f.read()

    return load

