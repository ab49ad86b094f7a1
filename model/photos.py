"""The real photographs the int8 model is calibrated and judged on.

Every photo comes from a package registry, so a clean machine can rebuild the set with the
project's own set-up (`make model` / `make model-check`):

- Debian desktop-background packages (`apt-get download`, unpacked with `dpkg-deb -x` into
  `.cache/model-photos/`; nothing is installed system-wide, and a file already installed
  under `/usr/share` is used as it is);
- sample photos shipped inside PyPI packages (scikit-image, matplotlib, scikit-learn),
  installed into `.venv-export` by the Makefile.

Only photographs are listed (no drawings or renders). Each photo becomes `len(CROPS)`
images: the whole frame and crops of several sizes and positions. Calibration and held-out
images are split by SOURCE PHOTO: no crop of a calibration photo is ever held out. The
split, the crops and each source's sha256 are written to `photos.json` beside the int8
model, so the set is recorded and a changed package is noticed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "model-photos"

# Debian package -> (folder inside it, photographs in that folder).
DEBIAN: dict[str, tuple[str, tuple[str, ...]]] = {
    "lomiri-wallpapers-16.04": ("usr/share/backgrounds", (
        "Bridge_by_Sander_Klootwijk.jpg", "Dragonfly_by_Bolly.jpg",
        "Picture_0B_by_freespace.jpg", "Picture_1A_by_freespace.jpg",
        "Wine_by_Jakkub_Mede.jpg", "aitzgorri_by_Aitzol_Berasategi.jpg",
        "analogpattern_by_Peter_Nerlich.jpg", "free_by_Peter_Nerlich.jpg",
        "friends_by_Aitzol_Berasategi.jpg", "greentock_by_Peter_Nerlich.jpg",
        "life_by_Aitzol_Berasategi.jpg", "picosdeeuropa_by_Aitzol_Berasategi.jpg",
        "seeding_by_Clements_Engelhardt.jpg", "sunset_by_Aitzol_Berasategi.jpg",
    )),
    "lomiri-wallpapers-20.04": ("usr/share/backgrounds", ("Kleiber_by_Lukas_Baubkus.jpg",)),
    "mate-backgrounds": ("usr/share/backgrounds/mate/nature", tuple(
        f"{n}.jpg" for n in ("Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow",
                             "LadyBird", "RainDrops", "Storm", "TwoWings", "Wood",
                             "YellowFlower"))),
    "plasma-workspace-wallpapers": ("usr/share/wallpapers", tuple(
        f"{n}/contents/images/2560x1600.jpg" for n in (
            "BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow",
            "FallenLeaf", "Grey", "Kite", "OneStandsOut", "Path", "summer_1am"))),
}

# PyPI package -> (importable module, folder inside it, photographs in that folder).
PYPI: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "scikit-image": ("skimage", "data", (
        "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
        "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "camera.png", "coins.png",
        "moon.png", "grass.png", "gravel.png", "brick.png", "page.png")),
    "matplotlib": ("matplotlib", "mpl-data/sample_data", ("grace_hopper.jpg",)),
    "scikit-learn": ("sklearn", "datasets/images", ("china.jpg", "flower.jpg")),
}

# The photos behind samples/*.jpg stay held out, so tests on the samples judge the model
# on photos it was not calibrated on.
SAMPLE_SOURCES = {"astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg",
                  "motorcycle_left.png", "hubble_deep_field.jpg"}

# (left, top, right, bottom) as fractions of the frame: the whole photo, four centred
# crops, 60 % and 40 % corners, and four half-size crops at the edges' middles.
CROPS: tuple[tuple[float, float, float, float], ...] = (
    (0.0, 0.0, 1.0, 1.0),
    (0.1, 0.1, 0.9, 0.9), (0.2, 0.2, 0.8, 0.8), (0.275, 0.275, 0.725, 0.725),
    (0.35, 0.35, 0.65, 0.65),
    (0.0, 0.0, 0.6, 0.6), (0.4, 0.0, 1.0, 0.6), (0.0, 0.4, 0.6, 1.0), (0.4, 0.4, 1.0, 1.0),
    (0.0, 0.0, 0.4, 0.4), (0.6, 0.0, 1.0, 0.4), (0.0, 0.6, 0.4, 1.0), (0.6, 0.6, 1.0, 1.0),
    (0.0, 0.25, 0.5, 0.75), (0.5, 0.25, 1.0, 0.75), (0.25, 0.0, 0.75, 0.5),
    (0.25, 0.5, 0.75, 1.0),
)


def photo_ids() -> list[str]:
    """Every source photo, in a fixed order."""
    ids = [f"debian:{pkg}/{folder}/{name}" for pkg, (folder, names) in DEBIAN.items()
           for name in names]
    ids += [f"pypi:{pkg}/{folder}/{name}" for pkg, (_, folder, names) in PYPI.items()
            for name in names]
    return ids


def is_calibration(index: int, source: str) -> bool:
    """Every third photo calibrates (never a sample's source); the others are held out."""
    return index % 3 == 1 and source.rsplit("/", 1)[-1] not in SAMPLE_SOURCES


def locate(source: str) -> Path:
    """The file behind a photo id, fetching its Debian package into the cache if needed."""
    kind, _, rest = source.partition(":")
    pkg, _, rel = rest.partition("/")
    if kind == "pypi":
        module = PYPI[pkg][0]
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise SystemExit(f"photo set: the PyPI package {pkg} is not installed here; run "
                             "`make model-check` (it installs it into .venv-export)")
        return Path(spec.origin).parent / rel
    installed = Path("/") / rel
    if installed.is_file():
        return installed
    unpacked = CACHE / pkg / rel
    if not unpacked.is_file():
        _fetch_debian(pkg)
    return unpacked


def _fetch_debian(pkg: str) -> None:
    """`apt-get download` the package and unpack it (no install, no root needed)."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise SystemExit(f"photo set: the Debian package {pkg} is needed and this machine "
                         "has no apt-get/dpkg-deb; use a Debian or Ubuntu machine")
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    for attempt in range(2):
        got = subprocess.run(["apt-get", "download", pkg], cwd=debs, capture_output=True,
                             text=True)
        if got.returncode == 0:
            break
        if attempt == 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
            print("photo set: apt-get update (package lists are missing or old)", flush=True)
            subprocess.run(["apt-get", "update", "-qq"], check=False)
            continue
        raise SystemExit(f"photo set: `apt-get download {pkg}` failed: "
                         f"{got.stderr.strip()[-300:]} (as root, run `apt-get update` first)")
    (deb,) = sorted(debs.glob(f"{pkg}_*.deb"))[-1:]
    subprocess.run(["dpkg-deb", "-x", str(deb), str(CACHE / pkg)], check=True)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record() -> dict[str, object]:
    """What `photos.json` holds: each source, its sha256 and role, and the crops."""
    photos = []
    for i, source in enumerate(photo_ids()):
        photos.append({"source": source, "sha256": sha256_of(locate(source)),
                       "role": "calibration" if is_calibration(i, source) else "held-out"})
    return {"crops": [list(c) for c in CROPS], "photos": photos}


def check_record(recorded: dict[str, object]) -> None:
    """Stop with a clear message if the photos differ from the recorded ones."""
    fresh = record()
    if fresh != recorded:
        old = {p["source"]: p for p in recorded["photos"]}  # type: ignore[index,union-attr]
        changed = [p["source"] for p in fresh["photos"]  # type: ignore[union-attr]
                   if old.get(p["source"]) != p]
        raise SystemExit("photo set: these photos differ from photos.json (a package "
                         f"changed?): {changed or 'the crop list'}")


def pixels(source: str, manifest: object) -> Iterator[np.ndarray]:
    """The model-size uint8 pixels of every crop of one photo, through the pipeline's own
    decode path (the crop is handed over as a lossless PNG)."""
    sys.path.insert(0, str(ROOT))
    from pipeline.decode import prepare_pixels

    Image.MAX_IMAGE_PIXELS = None
    with Image.open(locate(source)) as im:
        rgb = im.convert("RGB")
    w, h = rgb.size
    for left, top, right, bottom in CROPS:
        crop = rgb.crop((round(left * w), round(top * h), round(right * w), round(bottom * h)))
        buf = io.BytesIO()
        crop.save(buf, "PNG", compress_level=1)
        yield prepare_pixels(buf.getvalue(), manifest)[0]  # type: ignore[arg-type]


def load_split(manifest: object) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(calibration pixels, held-out pixels, held-out source of each image), in order."""
    cal: list[np.ndarray] = []
    held: list[np.ndarray] = []
    held_src: list[str] = []
    for i, source in enumerate(photo_ids()):
        crops = list(pixels(source, manifest))
        if is_calibration(i, source):
            cal += crops
        else:
            held += crops
            held_src += [source] * len(crops)
    return np.stack(cal), np.stack(held), held_src
