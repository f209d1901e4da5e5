"""Self-contained HTML pages: one page skeleton and one way to embed a PNG.

The participant QC pages, the group report and the predict saliency pages are
single files a reader can mail or open offline: no external resources,
figures inlined as base64 PNG.

Example
-------
>>> page = html_page("sub-01 & co", "<p>hi</p>", "p{color:red}")
>>> page.splitlines()[1]
'<html lang="en"><head><meta charset="utf-8"><title>sub-01 &amp; co</title><style>p{color:red}</style></head><body>'
>>> png_img(b"x", "a < b")
'<img alt="a &lt; b" src="data:image/png;base64,eA==">'
"""

from __future__ import annotations

import base64
import html


def html_page(title: str, body: str, css: str = "") -> str:
    """A complete HTML5 document around ``body`` (already HTML), with inline ``css``."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{css}</style></head><body>\n"
            + body + "\n</body></html>\n")


def png_img(data: bytes, alt: str) -> str:
    """An ``<img>`` holding ``data`` (PNG bytes) inline."""
    return (f'<img alt="{html.escape(alt)}" src="data:image/png;base64,'
            f'{base64.b64encode(data).decode("ascii")}">')
