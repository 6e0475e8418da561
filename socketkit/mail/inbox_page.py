"""What the inbox shows: messages parsed for display (bounded work), and the page itself (HTML, CSS, JS).

Parsing uses the stdlib `email` package with policy=default (RFC 2047 headers, RFC 2231 file names,
charsets decoded, unknown charsets read as UTF-8 with replacement). At most MAX_PARSE bytes of a message
reach the parser and at most MAX_PARTS leaf parts are looked at. The text and HTML bodies are the ones
`get_body()` prefers; every other leaf part (an attached message/* counts as one) is an attachment,
numbered in document order, so the same bytes always give the same numbers.

The page is plain HTML and JavaScript, no build step, with relative links (it is mounted under /mail by
`socketkit up`). The script writes message data with textContent only, and shows the HTML part in an
`<iframe sandbox>` (no allow-scripts, no allow-same-origin) pointed at api/messages/{id}/html.
"""

from __future__ import annotations

import datetime as dt
import email.policy
import email.utils
import logging
import mimetypes
import re
import unicodedata
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any
from urllib.parse import quote

from socketkit.mail.maildir import _sort_key

log = logging.getLogger("socketkit.mail.inbox")

MAX_PARSE = 25 * 2**20    # bytes of one message handed to the parser
MAX_PARTS = 200           # leaf parts looked at per message
_CTYPE = re.compile(r"[a-z0-9!#$&^_.+-]{1,64}/[a-z0-9!#$&^_.+-]{1,128}")


# -- parsing --------------------------------------------------------------------------------------------
def parse(data: bytes) -> EmailMessage:
    return BytesParser(policy=email.policy.default).parsebytes(data[:MAX_PARSE])  # type: ignore[return-value]


def _header(msg: EmailMessage, name: str) -> str:
    try:
        value = msg.get(name)
    except Exception:  # a malformed header must not hide the message
        value = next((v for k, v in msg.raw_items() if k.lower() == name), None)
    return "" if value is None else str(value)


def _text(part: EmailMessage) -> str:
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return ""
    charset = part.get_content_charset() or "us-ascii"
    if charset in ("us-ascii", "ascii") and not data.isascii():
        charset = "utf-8"  # mislabelled 8-bit mail is almost always UTF-8
    try:
        return data.decode(charset, "replace")
    except (LookupError, ValueError):  # unknown charset, or a codec that is not a text encoding
        return data.decode("utf-8", "replace")


def _leaves(msg: EmailMessage) -> tuple[list[EmailMessage], bool]:
    """Leaf parts in order (an attached message/* is one leaf), at most MAX_PARTS; and whether cut."""
    out: list[EmailMessage] = []
    stack = [msg]
    while stack:
        part = stack.pop()
        if part.get_content_maintype() == "multipart" and isinstance(part.get_payload(), list):
            stack.extend(reversed(part.get_payload()))
        elif len(out) >= MAX_PARTS:
            return out, True
        else:
            out.append(part)
    return out, False


def _bodies(msg: EmailMessage) -> tuple[EmailMessage | None, EmailMessage | None, list[EmailMessage], bool]:
    """The text body, the HTML body, the other leaves (attachments), and whether parts were left out."""
    leaves, cut = _leaves(msg)
    try:
        text = msg.get_body(("plain",))
        html = msg.get_body(("html",))
    except Exception:
        text = html = None
    if text is None and html is None and leaves and leaves[0].get_content_maintype() == "text" \
            and not leaves[0].is_attachment():
        text = leaves[0]  # e.g. text/enriched, or a text part get_body() would not pick
    ids = {id(text), id(html)}
    return text, html, [p for p in leaves if id(p) not in ids], cut


def _date(msg: EmailMessage) -> str:
    raw = _header(msg, "date")
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return raw
    return when.isoformat()


def _received(message_id: str) -> str:
    sec = _sort_key(message_id)[0]
    return dt.datetime.fromtimestamp(sec, dt.UTC).isoformat() if sec else ""


def safe_filename(name: str | None, index: int, content_type: str) -> str:
    """A plain file name: no directories, no controls, no leading dots, at most 200 characters."""
    name = unicodedata.normalize("NFC", name or "")
    name = re.split(r"[/\\]", name)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip().lstrip(".").strip()
    if not name:
        ext = mimetypes.guess_extension(content_type) or ".bin"
        name = f"attachment-{index}{ext}"
    if len(name) > 200:
        stem, dot, ext = name.rpartition(".")
        name = stem[:190] + dot + ext[:9] if dot and len(ext) < 10 else name[:200]
    return name


def content_disposition(filename: str) -> bytes:
    """RFC 6266: an ASCII fallback in filename=, the real name in filename*=UTF-8'' (RFC 5987)."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\%;' else "_" for c in filename)
    value = f'attachment; filename="{fallback}"'
    if fallback != filename:
        value += "; filename*=UTF-8''" + quote(filename, safe="!#$&+-.^_`|~")
    return value.encode("ascii")


def _content_type(part: EmailMessage) -> str:
    ctype = part.get_content_type()
    return ctype if _CTYPE.fullmatch(ctype) else "application/octet-stream"


def _payload(part: EmailMessage) -> bytes:
    if part.get_content_maintype() == "message" and part.is_multipart():
        inner = part.get_payload(0)
        return inner.as_bytes() if isinstance(inner, EmailMessage) else b""
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def summarize(public_id: str, mailbox: str, message_id: str, data: bytes, size: int) -> dict[str, Any]:
    out: dict[str, Any] = {"id": public_id, "mailbox": mailbox, "maildir_id": message_id,
                           "received": _received(message_id), "size": size}
    try:
        msg = parse(data)
        text, html, attachments, _cut = _bodies(msg)
        out.update({"from": _header(msg, "from"), "to": _header(msg, "to"),
                    "subject": _header(msg, "subject"),
                    "date": _date(msg), "has_html": html is not None, "attachments": len(attachments)})
    except Exception:  # RecursionError on absurd nesting, or a parser bug: still list the message
        log.warning("inbox: could not parse %s/%s", mailbox, message_id, exc_info=True)
        out.update({"from": "", "to": "", "subject": "(unparsable message)", "date": "", "has_html": False,
                    "attachments": 0})
    return out


def details(summary: dict[str, Any], data: bytes) -> dict[str, Any]:
    msg = parse(data)
    text, html, attachments, cut = _bodies(msg)
    headers = [{"name": name, "value": _decoded(msg, name, raw)} for name, raw in msg.raw_items()]
    files = []
    for n, part in enumerate(attachments):
        ctype = _content_type(part)
        files.append({"index": n, "filename": safe_filename(part.get_filename(), n, ctype),
                      "content_type": ctype, "size": len(_payload(part)),
                      "inline": part.get_content_disposition() != "attachment"})
    return {**summary, "headers": headers, "text": _text(text) if text is not None else None,
            "html": _text(html) if html is not None else None, "attachments": files,
            "truncated": cut or len(data) > MAX_PARSE}


def _decoded(msg: EmailMessage, name: str, raw: Any) -> str:
    try:
        return str(msg.policy.header_fetch_parse(name, raw))
    except Exception:  # a malformed header is shown as it came
        return str(raw)


def html_body(data: bytes) -> str | None:
    _text_part, html, _attachments, _cut = _bodies(parse(data))
    return None if html is None else _text(html)


def attachment(data: bytes, index: int) -> tuple[str, str, bytes] | None:
    """(safe file name, content type, decoded bytes) of attachment `index`, or None."""
    _text_part, _html, attachments, _cut = _bodies(parse(data))
    if not 0 <= index < len(attachments):
        return None
    part = attachments[index]
    ctype = _content_type(part)
    return safe_filename(part.get_filename(), index, ctype), ctype, _payload(part)


# -- the page ---------------------------------------------------------------------------------------
PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Inbox</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<link rel="stylesheet" href="inbox.css"><script src="inbox.js" defer></script>
</head><body>
<header><h1>Inbox</h1>
<label>mailbox <select id="mailbox"><option value="">all</option></select></label>
<span id="status" class="muted">connecting\xe2\x80\xa6</span>
<button id="delete-all" type="button">Delete all</button></header>
<main>
<section id="list-pane"><table><thead><tr><th>from</th><th>to</th><th>subject</th><th>received</th></tr></thead>
<tbody id="list"></tbody></table><p id="empty" class="muted">No messages yet.</p></section>
<section id="view" hidden>
<div class="bar"><h2 id="subject"></h2>
<a id="raw" download>Raw</a> <button id="delete" type="button">Delete</button></div>
<table id="summary"></table>
<details><summary>All headers</summary><table id="headers"></table></details>
<ul id="attachments"></ul>
<div id="tabs"><button type="button" data-tab="html">HTML</button><button type="button" data-tab="text">Text</button></div>
<iframe id="html" sandbox referrerpolicy="no-referrer" title="HTML part (sandboxed)"></iframe>
<pre id="text"></pre>
</section></main></body></html>
"""

CSS = b"""body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#222}
header{display:flex;gap:1rem;align-items:center;padding:.5rem 1rem;border-bottom:1px solid #ddd}
h1{font-size:1.3rem;margin:0}h2{font-size:1.15rem;margin:0;flex:1}.muted{color:#777}
main{display:flex;height:calc(100vh - 3.2rem)}
#list-pane{flex:0 0 45%;overflow:auto;border-right:1px solid #ddd}
#view{flex:1;overflow:auto;padding:.5rem 1rem;display:flex;flex-direction:column;gap:.5rem}
#view[hidden]{display:none}table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.25rem .5rem;border-bottom:1px solid #eee;vertical-align:top}
#list tr{cursor:pointer}#list tr:hover{background:#f4f7ff}#list tr.current{background:#dde6ff}
#list td{max-width:16rem;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
#summary th,#headers th{width:8rem;color:#555;font-weight:normal}#headers td{word-break:break-all}
.bar{display:flex;gap:.6rem;align-items:center}
#tabs button[aria-pressed=true]{font-weight:bold}
#html{width:100%;min-height:24rem;flex:1;border:1px solid #ddd;background:#fff}
#text{white-space:pre-wrap;word-break:break-word;background:#fafafa;border:1px solid #eee;padding:.5rem;margin:0}
"""

JS = b"""'use strict';
// Message data only ever reaches the page through textContent and attributes set from our own API's
// ids: never innerHTML. The HTML part is shown by the sandboxed iframe, from its own CSP'd URL.
(() => {
  const $ = (id) => document.getElementById(id);
  let current = null;
  let pending = null;

  function cell(row, tag, text) {
    const c = document.createElement(tag);
    c.textContent = text == null ? '' : String(text);
    row.appendChild(c);
    return c;
  }
  function when(iso) {
    const d = new Date(iso);
    return isNaN(d) ? (iso || '') : d.toLocaleString();
  }
  function size(n) {
    return n < 1024 ? n + ' B' : n < 1048576 ? (n / 1024).toFixed(1) + ' KiB' : (n / 1048576).toFixed(1) + ' MiB';
  }
  function api(path) { return 'api/messages' + (path ? '/' + path : ''); }

  async function loadMailboxes() {
    const r = await fetch('api/mailboxes', {cache: 'no-store'});
    if (!r.ok) return;
    const select = $('mailbox');
    const chosen = select.value;
    while (select.options.length > 1) select.remove(1);
    for (const box of await r.json()) {
      const o = document.createElement('option');
      o.value = box.name;
      o.textContent = (box.name || '(catch-all)') + ' (' + box.count + ')';
      select.appendChild(o);
    }
    select.value = chosen;
  }

  async function loadList() {
    const box = $('mailbox').value;
    const r = await fetch(api('') + (box ? '?mailbox=' + encodeURIComponent(box) : ''), {cache: 'no-store'});
    if (!r.ok) return;
    const messages = await r.json();
    const list = $('list');
    list.textContent = '';
    for (const m of messages) {
      const tr = document.createElement('tr');
      tr.dataset.id = m.id;
      if (m.id === current) tr.className = 'current';
      cell(tr, 'td', m.from);
      cell(tr, 'td', m.to);
      cell(tr, 'td', (m.subject || '(no subject)') + (m.attachments ? ' \\u{1F4CE}' + m.attachments : ''));
      cell(tr, 'td', when(m.received));
      tr.addEventListener('click', () => { location.hash = m.id; });
      list.appendChild(tr);
    }
    $('empty').hidden = messages.length > 0;
  }

  function refresh() {
    if (pending) return;
    pending = setTimeout(() => { pending = null; loadMailboxes(); loadList(); }, 150);
  }

  function tab(which) {
    for (const b of $('tabs').querySelectorAll('button')) b.setAttribute('aria-pressed', String(b.dataset.tab === which));
    $('html').hidden = which !== 'html';
    $('text').hidden = which !== 'text';
  }

  async function show(id) {
    current = id || null;
    for (const tr of $('list').children) tr.className = tr.dataset.id === current ? 'current' : '';
    if (!current) { $('view').hidden = true; $('html').removeAttribute('src'); return; }
    const r = await fetch(api(encodeURIComponent(id)), {cache: 'no-store'});
    if (!r.ok) { $('view').hidden = true; return; }
    const m = await r.json();
    if (m.id !== current) return;
    $('subject').textContent = m.subject || '(no subject)';
    $('raw').href = api(encodeURIComponent(id) + '/raw');
    const summary = $('summary');
    summary.textContent = '';
    for (const [k, v] of [['From', m.from], ['To', m.to], ['Date', m.date], ['Size', size(m.size)]]) {
      const tr = document.createElement('tr'); cell(tr, 'th', k); cell(tr, 'td', v); summary.appendChild(tr);
    }
    const headers = $('headers');
    headers.textContent = '';
    for (const h of m.headers) {
      const tr = document.createElement('tr'); cell(tr, 'th', h.name); cell(tr, 'td', h.value); headers.appendChild(tr);
    }
    const files = $('attachments');
    files.textContent = '';
    for (const a of m.attachments) {
      const li = document.createElement('li');
      const link = document.createElement('a');
      link.href = api(encodeURIComponent(id) + '/attachments/' + a.index);
      link.setAttribute('download', a.filename);
      link.textContent = a.filename;
      li.appendChild(link);
      cell(li, 'span', ' ' + a.content_type + ', ' + size(a.size));
      files.appendChild(li);
    }
    $('text').textContent = m.text == null ? '(no text part)' : m.text;
    if (m.html != null) $('html').src = api(encodeURIComponent(id) + '/html');
    else $('html').removeAttribute('src');
    $('tabs').hidden = m.html == null;
    tab(m.html != null ? 'html' : 'text');
    $('view').hidden = false;
  }

  async function remove(path) {
    const r = await fetch(path, {method: 'DELETE'});
    if (r.ok || r.status === 404) refresh();
  }

  function connect() {
    const events = new EventSource('api/events');
    events.onopen = () => { $('status').textContent = 'live'; refresh(); };
    events.onerror = () => { $('status').textContent = 'reconnecting\\u2026'; };
    events.addEventListener('delivered', refresh);
    events.addEventListener('deleted', (e) => {
      if (JSON.parse(e.data).id === current) location.hash = '';
      refresh();
    });
    events.addEventListener('cleared', () => { show(current); refresh(); });
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('mailbox').addEventListener('change', loadList);
    $('delete').addEventListener('click', () => { if (current) remove(api(encodeURIComponent(current))); });
    $('delete-all').addEventListener('click', () => {
      const box = $('mailbox').value;
      if (confirm(box ? 'Delete every message for ' + box + '?' : 'Delete every message?'))
        remove(api('') + (box ? '?mailbox=' + encodeURIComponent(box) : ''));
    });
    for (const b of $('tabs').querySelectorAll('button')) b.addEventListener('click', () => tab(b.dataset.tab));
    window.addEventListener('hashchange', () => show(location.hash.slice(1)));
    loadMailboxes(); loadList(); show(location.hash.slice(1));
    connect();
  });
})();
"""
