"""Export a downloaded model set, or one classifier of it, as TorchScript, ``torch.export`` or ONNX.

The whole set becomes one module (all attributes in one call: logits ``[B, A]``); ``--attr A``
exports one classifier (logits ``[B]``). Each export is checked against the eager model on a sample
batch before it is written; ``FILE.json`` beside it lists the attributes and input conventions.
"""

from __future__ import annotations

from aal_k8s.cli.common import examples

HELP = "export the model set (or one classifier) as TorchScript, torch.export or ONNX"
EXAMPLES = examples(
    "aal-k8s export --models models/ --format torchscript -o celeba.pt",
    "aal-k8s export --models models/ --format export --attr Smiling -o smiling.pt2",
    "aal-k8s export --models models/ --format onnx -o celeba.onnx",
)


def add_arguments(p) -> None:
    p.add_argument("--models", required=True, metavar="DIR", help="a folder made by `aal-k8s download`")
    p.add_argument("--format", required=True, choices=("torchscript", "export", "onnx"), help="what to write")
    p.add_argument("--attr", metavar="A", help="only this attribute's classifier (default: the whole set in one module)")
    p.add_argument("--output", "-o", required=True, metavar="FILE", help="the exported file (and FILE.json)")


def run(args) -> int:
    from aal_k8s.export import export_model_set

    info = export_model_set(args.models, args.format, args.output, args.attr)
    dev = info["checked"]["max_abs_deviation"]
    print(f"wrote {args.output} ({args.format}, {len(info['attributes'])} attribute(s); max deviation from eager {dev:.2e})")
    return 0
