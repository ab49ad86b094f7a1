"""`imgpipe model init|check|publish`: bring an ONNX classifier of your own."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from imgpipe.commands import add_aws_options, settings_from

HELP = "make, check and publish a model folder of your own ONNX classifier"


def register(sub: Any) -> None:
    p = sub.add_parser("model", help=HELP, description=HELP + ": `init` writes its manifest, "
                       "`check` tries it as the functions would, `publish` uploads it to S3 "
                       "for ModelSource or `imgpipe backfill --model s3://...`.")
    msub = p.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    i = msub.add_parser(
        "init", help="write manifest.json for an ONNX classifier",
        description="Write manifest.json beside FILE.onnx (and the labels file there too): "
        "sha256, input and output names, size and layout from the ONNX graph; resize and "
        "normalisation from the preset of the framework the model was trained with. "
        "Exit 0 when written, 1 when something cannot be inferred (the message names the "
        "flag to give), 2 on usage errors.")
    i.add_argument("onnx", metavar="FILE.onnx", type=Path, help="the model")
    i.add_argument("--labels", required=True, type=Path, metavar="FILE",
                   help="one label a line, in the order of the model's outputs")
    i.add_argument("--preset", required=True, choices=("efficientnet", "torchvision", "keras"),
                   help="efficientnet: centre crop size/(size+32), bicubic, (x-127)/128; "
                   "torchvision: short side to 256 (at 224), centre crop, ImageNet mean/std; "
                   "keras: stretch to the input size, normalisation per --keras-mode")
    i.add_argument("--keras-mode", default=None, metavar="MODE",
                   help="for --preset keras, keras.applications' preprocess_input mode: tf "
                   "(x/127.5-1: MobileNet(V2), Inception, Xception, ResNetV2), torch (DenseNet), "
                   "raw (pixels 0..255: EfficientNet(V2), ConvNeXt, RegNet, MobileNetV3), "
                   "unit (x/255)")
    i.add_argument("--name", default=None,
                   help="model name in records (default: the file's name without .onnx)")
    i.add_argument("--version", default="1", help="model version (default 1); a changed "
                   "model is a new version")
    i.add_argument("--input-size", default=None, metavar="SIZE",
                   help="224 or HEIGHTxWIDTH, when the graph's size is not fixed")
    i.add_argument("--layout", default=None, choices=("NCHW", "NHWC"),
                   help="when the graph does not fix its channel axis")
    i.add_argument("--output", default=None, metavar="NAME",
                   help="the output with the scores, when the graph has several")
    i.add_argument("--activation", default=None, choices=("softmax", "sigmoid", "none"),
                   help="default: from the model's scores on two test images (probabilities "
                   "already: none; one output: sigmoid; else softmax)")
    i.add_argument("--force", action="store_true", help="replace an existing manifest.json")
    i.set_defaults(run=run_init)

    c = msub.add_parser(
        "check", help="load a model folder as the functions do and try it on photos",
        description="Load the model as the functions do (manifest, sha256, session), classify "
        "the sample photos (or PHOTO...) and print each one's top 3, the milliseconds per "
        "image at batch 16 and the memory it takes, with warnings for common mistakes. "
        "Exit 0 when usable, 1 when not.")
    c.add_argument("source", metavar="DIR", help="a model folder, its manifest.json, a "
                   "packaged model's name or an s3:// folder")
    c.add_argument("photos", nargs="*", metavar="PHOTO",
                   help="image files or folders (default: the checkout's samples/*.jpg)")
    add_aws_options(c)
    c.set_defaults(run=run_check)

    pb = msub.add_parser(
        "publish", help="check a model folder, then upload it to S3",
        description="Run `check`, then upload the ONNX file, the labels file and manifest.json "
        "to s3://BUCKET/PREFIX/NAME/VERSION/. A published version is never replaced: a "
        "folder already holding another model (another sha256 or manifest) is refused. "
        "Works on AWS, or on `imgpipe local` with --endpoint-url / AWS_ENDPOINT_URL. Exit 0 "
        "when published (or already there), 1 when refused.")
    pb.add_argument("source", metavar="DIR", type=Path, help="the model folder")
    pb.add_argument("uri", metavar="s3://BUCKET/PREFIX/NAME/VERSION/",
                    help="its folder in S3, ending with the manifest's name and version")
    pb.add_argument("photos", nargs="*", metavar="PHOTO",
                    help="photos for the check (default: the checkout's samples/*.jpg)")
    add_aws_options(pb)
    pb.set_defaults(run=run_publish)


def run_init(args: argparse.Namespace) -> int:
    from imgpipe.modelinit import (
        InitError,
        build_manifest,
        choose_activation,
        parse_size,
        read_graph,
        read_labels,
        with_activation,
        write_model_folder,
    )

    if not args.onnx.is_file():
        print(f"imgpipe model init: {args.onnx} is not a file; give the model's .onnx file",
              file=sys.stderr)
        return 2
    try:
        labels = read_labels(args.labels)
        graph = read_graph(args.onnx)
        name = args.name or _name_from(args.onnx)
        manifest = build_manifest(
            graph, onnx_path=args.onnx, labels=labels, labels_file=args.labels.name,
            preset=args.preset, name=name, version=args.version,
            input_size=parse_size(args.input_size) if args.input_size else None,
            layout=args.layout, output=args.output, activation=args.activation,
            keras_mode=args.keras_mode)
        raw = _probe(manifest)
        if raw.shape[1] != manifest.num_outputs:
            raise InitError(f"the model gives {raw.shape[1]} values per photo but the labels "
                            f"file has {len(labels)} labels: give --labels a file with one "
                            "label per output, in order")
        why = "--activation"
        if args.activation is None:
            activation, why = choose_activation(manifest, raw)
            manifest = with_activation(manifest, activation)
        path = write_model_folder(manifest, args.labels, force=args.force)
    except InitError as e:
        print(f"imgpipe model init: {e}", file=sys.stderr)
        return 1
    h, w = manifest.input_size
    print(f"wrote {path}: {manifest.model_id}, input {manifest.input_name!r} {manifest.layout} "
          f"{h}x{w}, output {manifest.output_name!r} ({len(labels)} labels), preset "
          f"{args.preset}, activation {manifest.activation} ({why})")
    print(f"next: imgpipe model check {path.parent}")
    return 0


def _name_from(path: Path) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9!_.'()-]+", "-", path.stem).strip("-") or "model"


def _probe(manifest: Any) -> Any:
    """The model's raw outputs on two made-up photos (a gradient and noise), through the
    pipeline's decode: tells logits from probabilities and shows the model runs at all."""
    import io

    import numpy as np
    from PIL import Image

    from imgpipe.modelinit import InitError
    from pipeline.classifier import Classifier, create_session
    from pipeline.decode import decode_image

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 320, dtype=np.uint8)
    images = [np.stack([np.tile(ramp, (240, 1))] * 3, axis=-1),
              rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)]
    tensors = []
    for pixels in images:
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "PNG")
        tensors.append(decode_image(buf.getvalue(), manifest).tensor)
    try:
        clf = Classifier(manifest, create_session(manifest), batch_size=len(tensors))
        return clf.forward(np.stack(tensors))
    except Exception as e:  # noqa: BLE001 - ONNX Runtime's refusal, said in one sentence
        raise InitError(f"ONNX Runtime cannot run the model on a batch of 2 photos "
                        f"({manifest.layout} {manifest.input_size[0]}x{manifest.input_size[1]}):"
                        f" {e}") from e


def _photos(given: list[str]) -> list[Path]:
    from imgpipe.commands.classify import expand_paths
    from imgpipe.modelcheck import default_photos

    return [Path(p) for p in expand_paths(given)] if given else default_photos()


def run_check(args: argparse.Namespace) -> int:
    from imgpipe.modelcheck import check_model, format_report

    photos = _photos(args.photos)
    if not photos:
        print("imgpipe model check: no photos to try: give PHOTO... (image files or folders)",
              file=sys.stderr)
        return 2
    settings = settings_from(args)
    s3 = None
    if args.source.startswith("s3://"):
        from pipeline.aws import client_for

        s3 = client_for("s3", settings)
    report = check_model(args.source, photos, settings, s3)
    for line in format_report(report):
        print(line)
    return 0 if report.usable else 1


def run_publish(args: argparse.Namespace) -> int:
    from imgpipe.modelcheck import check_model, format_report
    from imgpipe.publish import PublishError, destination, publish_folder
    from pipeline.aws import client_for
    from pipeline.errors import ImgpipeError
    from pipeline.manifest import load_manifest

    path = args.source / "manifest.json" if args.source.is_dir() else args.source
    if not path.is_file():
        print(f"imgpipe model publish: {args.source} holds no manifest.json: write one with "
              "`imgpipe model init FILE.onnx --labels FILE --preset ...`", file=sys.stderr)
        return 2
    try:
        manifest = load_manifest(path)
        destination(args.uri, manifest)
    except ImgpipeError as e:
        print(f"imgpipe model publish: {e}", file=sys.stderr)
        return 1
    photos = _photos(args.photos)
    if not photos:
        print("imgpipe model publish: no photos to check the model with: give PHOTO... "
              "(image files or folders)", file=sys.stderr)
        return 2
    report = check_model(str(path.parent), photos)
    for line in format_report(report):
        print(line)
    if not report.usable:
        print("imgpipe model publish: not published: `imgpipe model check` finds the model "
              "unusable (above)", file=sys.stderr)
        return 1
    settings = settings_from(args)
    try:
        done = publish_folder(manifest, path, args.uri, client_for("s3", settings))
    except PublishError as e:
        print(f"imgpipe model publish: {e}", file=sys.stderr)
        return 1
    if done.already and not done.files:
        print(f"{manifest.model_id} is already published at {done.uri}: nothing changed")
    else:
        print(f"published {manifest.model_id} to {done.uri} ({len(done.files)} file(s) written)")
    print(f"use it: ModelSource={done.uri} at deploy (`sam deploy --guided` asks for it)\n"
          f"or, for one run: imgpipe backfill s3://BUCKET/PREFIX/ --model {done.uri}\n"
          f"then: imgpipe results compare s3://BUCKET/PREFIX/ --model OLD@1 "
          f"--model {manifest.model_id}")
    return 0
