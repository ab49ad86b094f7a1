"""Write the sample photos from scikit-image's bundled public-domain images.

    python samples/make_samples.py

Only needed to regenerate `samples/*.jpg` (they are committed); see samples/README.md.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
# skimage.data file -> our sample name
SOURCES = {
    "chelsea.png": "chelsea",
    "coffee.png": "coffee",
    "rocket.jpg": "rocket",
    "motorcycle_left.png": "motorcycle",
    "astronaut.png": "astronaut",
    "hubble_deep_field.jpg": "hubble",
}


def main() -> None:
    import skimage.data

    data_dir = Path(skimage.data.__file__).parent
    for source, name in SOURCES.items():
        im = Image.open(data_dir / source).convert("RGB")
        im.save(HERE / f"{name}.jpg", "JPEG", quality=92)
        print(f"{name}.jpg  {im.size[0]}x{im.size[1]}  from skimage.data/{source}")


if __name__ == "__main__":
    main()
