"""Download the final model set (one classifier per attribute) from the store to a folder.

Every file is verified against the manifest's sha256 and written atomically (temp file, then
rename); files already present and verified are skipped, so re-running after an interruption
resumes. The model card (``MODEL_CARD.md``) is copied beside them; ``DIR/manifest.json`` is
written last. Credentials come from the environment / Secret / instance role, as for every store
access.
"""

from __future__ import annotations

import sys

from aal_k8s.cli.common import add_config_args, examples, open_experiment

HELP = "fetch the final model set (verified) from the store to a folder"
EXAMPLES = examples(
    "aal-k8s download --experiment synthetic --to models/",
    "aal-k8s download --dataset celeba --store s3://bucket/aal --attrs Smiling,Big_Lips --to celeba-models/",
)


def add_arguments(p) -> None:
    p.add_argument("--to", required=True, metavar="DIR", help="destination folder (created if needed)")
    p.add_argument("--attrs", metavar="A,B,...", help="only these attributes (names or 1-based indices)")
    add_config_args(p)


def run(args) -> int:
    from aal_k8s.modelset import download_final

    cfg, exp = open_experiment(args)
    attrs = [a.strip() for a in args.attrs.split(",") if a.strip()] if args.attrs else None
    download_final(exp, args.to, attrs, log=sys.stdout)
    return 0
