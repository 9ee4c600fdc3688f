"""``report.html``: report.md as a page — the same tables, the plots inline, sortable tables.

Self-contained: the PNGs are embedded as data URIs, the style and the sorting script are
inline; the page fetches nothing.  Markdown is rendered by markdown-it-py (CommonMark +
GFM tables), so the HTML and the Markdown report cannot disagree.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Callable

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1200px;
padding:0 1rem;color:#1d2330;line-height:1.45}
h1{font-size:1.6rem;border-bottom:2px solid #2c6fbb;padding-bottom:.3rem}h2{font-size:1.25rem;margin-top:2rem;color:#2c6fbb}
table{border-collapse:collapse;margin:.8rem 0;font-size:.88rem;display:block;overflow-x:auto}
th,td{border:1px solid #cfd6e0;padding:.3rem .55rem;text-align:left;white-space:nowrap}
th{background:#eef3f9;cursor:pointer;user-select:none}th.asc:after{content:" \\25B2"}th.desc:after{content:" \\25BC"}
tr:nth-child(even) td{background:#f8fafc}img{max-width:100%;border:1px solid #e1e6ee;margin:.5rem 0}
code{background:#f1f3f6;padding:0 .25rem;border-radius:3px}li{margin:.2rem 0}
"""

# Click a header to sort its table (numbers numerically, "–" last); no library.
SCRIPT = """
(function(){
  function key(td){var t=td.textContent.trim();var n=parseFloat(t.replace(/[^0-9eE+\\-.]/g,''));
    return (t==='–'||t==='')?[2,0]:(isNaN(n)||!/^[\\s+\\-]?[0-9.]/.test(t))?[1,t.toLowerCase()]:[0,n];}
  document.querySelectorAll('table').forEach(function(table){
    var ths=table.querySelectorAll('thead th');
    ths.forEach(function(th,i){th.addEventListener('click',function(){
      var asc=!th.classList.contains('asc');ths.forEach(function(h){h.classList.remove('asc','desc');});
      th.classList.add(asc?'asc':'desc');var body=table.tBodies[0];
      Array.from(body.rows).sort(function(a,b){var x=key(a.cells[i]),y=key(b.cells[i]);
        if(x[0]!==y[0])return x[0]-y[0];return (x[1]<y[1]?-1:x[1]>y[1]?1:0)*(asc?1:-1);})
        .forEach(function(r){body.appendChild(r);});});});
    table.classList.add('sortable');});
  window.addEventListener('load',function(){var imgs=Array.from(document.images);
    document.body.dataset.images=imgs.length;
    document.body.dataset.imagesRendered=imgs.filter(function(i){return i.complete&&i.naturalWidth>0;}).length;});
})();
"""


def render_html(markdown: str, image: Callable[[str], bytes | None] | None = None, title: str = "medray report") -> str:
    """The page of ``markdown``; ``image(src)`` returns the bytes of a relative image
    (e.g. ``plots/roc.png``), embedded as a data URI (None: left as a link)."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    if image is not None:
        def embed(m: re.Match) -> str:
            src = html.unescape(m.group(1))
            data = None if src.startswith(("data:", "http:", "https:")) else image(src)
            if data is None:
                return m.group(0)
            return f'src="data:image/png;base64,{base64.b64encode(data).decode()}"'

        body = re.sub(r'src="([^"]+)"', embed, body)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n"
            f"<script>{SCRIPT}</script>\n</body></html>\n")
