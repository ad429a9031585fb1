"""The report as a list of blocks, rendered twice: Markdown (images as files beside it) and one
self-contained HTML page (images inlined, prose through markdown-it, tables with grouped headers).
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Heading:
    level: int
    text: str

    @property
    def anchor(self) -> str:
        return slug(self.text)


@dataclass(frozen=True)
class Text:
    """Markdown prose: paragraphs and lists (CommonMark)."""

    markdown: str


@dataclass(frozen=True)
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[str]]
    caption: str = ""
    # (label, first column, last column): one header cell spanning those columns, as papers print "mAP (%) @ tIoU"
    group: tuple[str, int, int] | None = None
    published: Sequence[Sequence[str]] = field(default_factory=tuple)  # rows set apart below ours, in italics
    text_columns: int = 1  # the leading columns that hold names (left-aligned); numbers follow, right-aligned


@dataclass(frozen=True)
class Figure:
    file: str  # a PNG in the report folder
    alt: str
    caption: str = ""


Block = Heading | Text | Table | Figure


def slug(text: str) -> str:
    """The anchor GitHub gives a heading (lower case, punctuation dropped, spaces to hyphens)."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def contents(blocks: Sequence[Block]) -> Text:
    """A table of contents: a nested list of links to the level-2 and level-3 headings."""
    lines = [f"{'  ' * (b.level - 2)}- [{b.text}](#{b.anchor})" for b in blocks if isinstance(b, Heading) and b.level in (2, 3)]
    return Text("\n".join(lines))


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _markdown_table(table: Table) -> list[str]:
    lines = [f"*{table.caption}*", ""] if table.caption else []
    lines += ["| " + " | ".join(map(_markdown_cell, table.header)) + " |",
              "|" + "|".join(":---" if i < table.text_columns else "---:" for i in range(len(table.header))) + "|"]
    lines += ["| " + " | ".join(map(_markdown_cell, row)) + " |" for row in table.rows]
    lines += ["| " + " | ".join(f"*{_markdown_cell(c)}*" if c else "" for c in row) + " |" for row in table.published]
    return lines


def to_markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out += ["#" * block.level + " " + block.text]
        elif isinstance(block, Text):
            out += [block.markdown]
        elif isinstance(block, Table):
            out += _markdown_table(block)
        else:
            out += [f"![{block.alt}]({block.file})"] + (["", f"*{block.caption}*"] if block.caption else [])
        out.append("")  # a blank line between blocks: nothing runs together into one paragraph
    return "\n".join(out)


def _html_row(cells: Sequence[str], tag: str, markdown: object, text_columns: int) -> str:
    def cell(i: int, text: str) -> str:
        align = "" if i < text_columns else ' class="num"'
        return f"<{tag}{align}>{markdown.renderInline(text)}</{tag}>"  # type: ignore[attr-defined]

    return "<tr>" + "".join(cell(i, c) for i, c in enumerate(cells)) + "</tr>"


def _html_table(table: Table, markdown: object) -> str:
    head = ""
    if table.group:
        label, first, last = table.group
        cells = [f"<th rowspan='2'>{html.escape(h)}</th>" for h in table.header[:first]]
        cells.append(f"<th colspan='{last - first + 1}' class='group'>{html.escape(label)}</th>")
        cells += [f"<th rowspan='2' class='num'>{html.escape(h)}</th>" for h in table.header[last + 1:]]
        sub = "".join(f"<th class='num'>{html.escape(h)}</th>" for h in table.header[first:last + 1])
        head = f"<tr>{''.join(cells)}</tr><tr>{sub}</tr>"
    else:
        head = _html_row(table.header, "th", markdown, table.text_columns)
    caption = f"<caption>{html.escape(table.caption)}</caption>" if table.caption else ""
    body = "".join(_html_row(row, "td", markdown, table.text_columns) for row in table.rows)
    published = "".join(_html_row(row, "td", markdown, table.text_columns) for row in table.published)
    published = f"<tbody class='published'>{published}</tbody>" if published else ""
    return f"<table>{caption}<thead>{head}</thead><tbody>{body}</tbody>{published}</table>"


def _html_figure(figure: Figure, folder: Path) -> str:
    data = base64.b64encode((folder / figure.file).read_bytes()).decode()
    caption = f"<figcaption>{html.escape(figure.caption)}</figcaption>" if figure.caption else ""
    return f"<figure><img alt='{html.escape(figure.alt)}' src='data:image/png;base64,{data}'>{caption}</figure>"


STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
 padding:0 1em;color:#1f2328;line-height:1.45}
h1{border-bottom:1px solid #d0d7de;padding-bottom:.3em}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:14px}
caption{caption-side:top;text-align:left;font-style:italic;padding-bottom:.3em;color:#57606a}
th,td{border:1px solid #d0d7de;padding:3px 7px}th{background:#f6f8fa}th.group{text-align:center}
.num{text-align:right;font-variant-numeric:tabular-nums}td.num,td:first-child{white-space:nowrap}
tbody.published td{font-style:italic;color:#57606a;background:#fbfbf4}tbody.published tr:first-child td{border-top:2px solid #8c959f}
figure{margin:1em 0}img{max-width:100%}figcaption{color:#57606a;font-size:14px}
code{background:#f6f8fa;padding:1px 4px;border-radius:4px}
"""


def to_html(blocks: Sequence[Block], folder: Path, title: str) -> str:
    """One page that stands alone: every image of `folder` the blocks name is inlined."""
    from markdown_it import MarkdownIt

    markdown = MarkdownIt("commonmark").enable("table")
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level} id='{block.anchor}'>{markdown.renderInline(block.text)}</h{block.level}>")
        elif isinstance(block, Text):
            parts.append(markdown.render(block.markdown))
        elif isinstance(block, Table):
            parts.append(_html_table(block, markdown))
        else:
            parts.append(_html_figure(block, folder))
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
