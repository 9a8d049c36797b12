"""Predict attributes of images with a downloaded final model set (see ``aal-k8s download``).

Images go through the preprocessing the models were evaluated with in training
(``aal_k8s.modelset.preprocess``: the dataset's decoder and resizes, the manifest's mean/std); each
attribute's classifier gives a probability (sigmoid of its logit) and a decision (probability >=
threshold). Every model file is checked against its sha256 first.
"""

from __future__ import annotations

import json
import sys

from aal_k8s.cli.common import examples
from aal_k8s.errors import AALError

HELP = "predict attributes of images with a downloaded model set"
EXAMPLES = examples(
    "aal-k8s predict --models models/ photo.jpg",
    "aal-k8s predict --models models/ --attrs Smiling --format json photos/",
)


def add_arguments(p) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files, or folders of images")
    p.add_argument("--models", required=True, metavar="DIR", help="a folder made by `aal-k8s download`")
    p.add_argument("--attrs", metavar="A,B,...", help="only these attributes (names or 1-based indices)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format")
    p.add_argument("--threshold", type=float, metavar="P", help="decision threshold (default: manifest, 0.5)")
    p.add_argument("--device", default="cpu", metavar="DEV", help="cpu (default), cuda or auto")


def run(args) -> int:
    from aal_k8s.modelset import format_csv, format_table, predict
    from aal_k8s.train import pick_device

    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        raise AALError(f"--threshold: must be within (0, 1), got {args.threshold}")
    if args.device not in ("cpu", "cuda", "auto"):
        raise AALError(f"--device: {args.device!r} is not one of cpu, cuda, auto")
    attrs = [a.strip() for a in args.attrs.split(",") if a.strip()] if args.attrs else None
    device = str(pick_device(args.device, "--device"))
    result = predict(args.models, args.images, attrs, device=device, threshold=args.threshold)
    if result["skipped"]:  # files in the folders given that are not images: say so, on stderr
        names = ", ".join(result["skipped"][:3]) + (f" and {len(result['skipped']) - 3} more" if len(result["skipped"]) > 3 else "")
        print(f"predict: skipped {len(result['skipped'])} file(s) that are not images: {names}", file=sys.stderr)
    if args.format == "json":
        sys.stdout.write(json.dumps(result, indent=1) + "\n")
    elif args.format == "csv":
        sys.stdout.write(format_csv(result))
    else:
        sys.stdout.write(format_table(result))
    return 0
