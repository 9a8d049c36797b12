"""The report as a list of blocks, rendered to Markdown and to one self-contained HTML file by the
Jinja2 templates in ``templates/``; inline `code` and **bold** in HTML by markdown-it-py.

Text in blocks is Markdown inline text. The HTML escapes it with ``html.escape`` (not markupsafe's
entities), so the HTML stays byte for byte what the report has always written.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from typing import ClassVar

import jinja2
from markdown_it import MarkdownIt
from markupsafe import Markup

from aal_k8s.report.figures import Figure

FIGURE_DIR = "figures"  # beside report.md in the store: the Markdown links there


@dataclass(frozen=True)
class Heading:
    kind: ClassVar[str] = "heading"
    level: int
    text: str


@dataclass(frozen=True)
class Para:
    kind: ClassVar[str] = "para"
    text: str


@dataclass(frozen=True)
class Bullets:
    kind: ClassVar[str] = "bullets"
    items: list[str]


@dataclass(frozen=True)
class Table:
    kind: ClassVar[str] = "table"
    header: list[str]
    align: str  # one "l" / "r" per column
    rows: list[list[str]]


@dataclass(frozen=True)
class Fig:
    kind: ClassVar[str] = "figure"
    figure: Figure  # what to draw; its name is the PNG's file stem
    caption: str

    @property
    def name(self) -> str:
        return self.figure.name


Block = Heading | Para | Bullets | Table | Fig


def _inline_parser() -> MarkdownIt:
    """Only the two inline constructs the report writes: `code` spans and **bold** (``zero`` has no
    links, raw HTML, entities or backslash escapes, so everything else is literal text)."""
    md = MarkdownIt("zero").enable(["backticks", "emphasis"])

    def text(self, tokens, idx, options, env):
        return html.escape(tokens[idx].content)

    def code_inline(self, tokens, idx, options, env):
        return f"<code>{html.escape(tokens[idx].content)}</code>"

    md.add_render_rule("text", text)
    md.add_render_rule("code_inline", code_inline)
    return md


_INLINE = _inline_parser()


def _html_inline(text: str) -> Markup:
    return Markup(_INLINE.renderInline(text))


def _html_text(text: str) -> Markup:
    return Markup(html.escape(text))


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _png_base64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def _slugs(blocks: list[Block]) -> list[str | None]:
    """One unique anchor per heading (None for other blocks): lower-case words joined by '-'."""
    used: set[str] = set()
    ids: list[str | None] = []
    for b in blocks:
        if not isinstance(b, Heading):
            ids.append(None)
            continue
        base = re.sub(r"[^a-z0-9]+", "-", b.text.lower()).strip("-") or "section"
        slug, n = base, 2
        while slug in used:
            slug, n = f"{base}-{n}", n + 1
        used.add(slug)
        ids.append(slug)
    return ids


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("aal_k8s.report", "templates"),
        autoescape=jinja2.select_autoescape(["html.j2"]),  # what a filter did not mark safe is escaped
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(inline=_html_inline, text=_html_text, md_cell=_md_cell, base64=_png_base64)
    return env


_ENV = _environment()


def to_markdown(blocks: list[Block]) -> str:
    return _ENV.get_template("report.md.j2").render(blocks=blocks, figure_dir=FIGURE_DIR)


def to_html(blocks: list[Block], title: str, figures: dict[str, bytes]) -> str:
    ids = _slugs(blocks)
    toc = [(i, b.text) for b, i in zip(blocks, ids) if isinstance(b, Heading) and b.level == 2]
    return _ENV.get_template("report.html.j2").render(
        title=title, blocks=list(zip(blocks, ids)), toc=toc, figures=figures
    )
