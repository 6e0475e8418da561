"""The HTML directory listing StaticFiles shows for a directory without an index file.

Every name is attacker-chosen (whoever can create files can choose them), so: text goes through
html.escape, links through quote(safe="") — which also encodes ':' so a file named `javascript:...`
is a relative link, never a scheme — and the page is sent with a Content-Security-Policy that allows
no script at all.
"""

from __future__ import annotations

import html
import os
import stat
import time
from urllib.parse import quote

# No scripts, no external resources: the page is inert even if escaping were ever wrong.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

_STYLE = (
    "body{font:14px/1.4 system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
    "td,th{padding:.15em 1.2em .15em 0;text-align:left}td.n{text-align:right}"
)


def _entry(entry: os.DirEntry, root: str, follow_symlinks: bool) -> tuple[str, bool, int, float] | None:
    """(name, is_dir, size, mtime) for one entry, or None when it must not be shown."""
    try:
        if entry.is_symlink():
            if not follow_symlinks:
                real = os.path.realpath(entry.path)
                if os.path.commonpath([root, real]) != root:
                    return None
        st = entry.stat()  # follows in-tree symlinks; a broken one raises and is hidden
    except (OSError, ValueError):
        return None
    is_dir = stat.S_ISDIR(st.st_mode)
    if not is_dir and not stat.S_ISREG(st.st_mode):
        return None  # fifos, sockets, devices are never served, so never listed
    return entry.name, is_dir, st.st_size, st.st_mtime


def render(directory: str, url_path: str, root: str, *, follow_symlinks: bool, at_root: bool) -> bytes:
    """The listing page of `directory` (a real path inside `root`) shown at the decoded `url_path`.

    Raises OSError (PermissionError included) when the directory cannot be read.
    """
    with os.scandir(directory) as it:
        entries = [e for e in (_entry(d, root, follow_symlinks) for d in it) if e is not None]
    entries.sort(key=lambda e: (not e[1], e[0].casefold(), e[0]))
    title = html.escape(f"Index of {url_path}")
    rows = []
    if not at_root:
        rows.append('<tr><td><a href="../">../</a></td><td class="n">-</td><td></td></tr>')
    for name, is_dir, size, mtime in entries:
        slash = "/" if is_dir else ""
        href = quote(name, safe="", errors="surrogateescape") + slash
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(mtime))
        rows.append(
            f'<tr><td><a href="{href}">{html.escape(name)}{slash}</a></td>'
            f'<td class="n">{"-" if is_dir else size}</td><td>{when}</td></tr>'
        )
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title>"
        f"<style>{_STYLE}</style></head>\n<body><h1>{title}</h1>\n"
        "<table><thead><tr><th>Name</th><th>Size</th><th>Modified (UTC)</th></tr></thead><tbody>\n"
        + "\n".join(rows)
        + "\n</tbody></table></body></html>\n"
    )
    # Names that are not valid UTF-8 on disk show as "?"; their links still carry the exact bytes.
    return page.encode("utf-8", "replace")
