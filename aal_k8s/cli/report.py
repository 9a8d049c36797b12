"""Render the report (the paper's Table 3 columns) from the stored reduce output."""

from __future__ import annotations

import os

from aal_k8s.cli.common import add_config_args, config_from_args, examples, experiment_store
from aal_k8s.cli.final import load_reduce
from aal_k8s.report import render_markdown
from aal_k8s.store.base import atomic_write

HELP = "write the Markdown report to the store (and a local file)"
EXAMPLES = examples("aal-k8s report --dataset synthetic --output report.md")


def add_arguments(p) -> None:
    p.add_argument("--output", "-o", metavar="FILE", help="also write the report here")
    add_config_args(p)


def run(args) -> int:
    cfg = config_from_args(args)
    exp = experiment_store(cfg)
    write_report(exp, load_reduce(exp), args.output)
    print(f"wrote {exp.store.url(exp.key('report', 'report.md'))}")
    if args.output:
        print(f"wrote {args.output}")
    return 0


def write_report(exp, out, local_path: str | None) -> str:
    """Render the report, store it as ``report/report.md`` and, if given, write ``local_path``."""
    text = render_markdown(out, exp.experiment)
    exp.put_text("report", "report.md", text=text)
    if local_path:
        atomic_write(os.path.abspath(local_path), text.encode())
    return text
