"""Render the report (Markdown + self-contained HTML, figures, CSVs) from the stored reduce output."""

from __future__ import annotations

import os

from aal_k8s.cli.common import add_config_args, examples, open_experiment
from aal_k8s.cli.final import load_reduce
from aal_k8s.report import FIGURE_DIR, render_report
from aal_k8s.store.base import atomic_write

HELP = "write the report (Markdown, HTML with figures, CSVs) to the store (and local files)"
EXAMPLES = examples("aal-k8s report --dataset synthetic --output report.md")


def add_arguments(p) -> None:
    p.add_argument(
        "--output", "-o", metavar="FILE", help="also write the Markdown here and the HTML next to it (.html)"
    )
    add_config_args(p)


def run(args) -> int:
    cfg, exp = open_experiment(args)
    write_report(exp, load_reduce(exp), args.output)
    print(f"wrote {exp.store.url(exp.key('report', 'report.md'))}")
    print(f"wrote {exp.store.url(exp.key('report', 'report.html'))}")
    if args.output:
        print(f"wrote {args.output}")
        print(f"wrote {html_path(args.output)}")
    return 0


def html_path(local_path: str) -> str:
    """The HTML beside a local Markdown path: same stem, ``.html`` (``x.html`` -> ``x.html.html``)."""
    stem, ext = os.path.splitext(local_path)
    return local_path + ".html" if ext == ".html" else stem + ".html"


def write_report(exp, out, local_path: str | None) -> str:
    """Render the report into the store (``report/report.md``, ``report/report.html``,
    ``report/figures/<name>.png``, ``report/<csv>``) and, if given, write ``local_path`` and the HTML
    beside it. Returns the Markdown."""
    rep = render_report(out, exp.experiment)
    for name, png in sorted(rep.figures.items()):
        exp.store.put_bytes(exp.key("report", FIGURE_DIR, f"{name}.png"), png)
    for name, text in sorted(rep.files.items()):
        exp.put_text("report", name, text=text)
    exp.put_text("report", "report.html", text=rep.html)
    exp.put_text("report", "report.md", text=rep.markdown)  # last: its presence means the rest is there
    if local_path:
        path = os.path.abspath(local_path)
        atomic_write(path, rep.markdown.encode())
        atomic_write(html_path(path), rep.html.encode())
    return rep.markdown
