"""The inbox: an ASGI app that shows what a MailStore received, live, and serves it as JSON.

    app = Inbox(store)                           # mounted at /mail by `socketkit up`
    await socketkit.web.start(app, ["tcp://127.0.0.1:8025"])
    socketkit mail --accept-all --web tcp://127.0.0.1:8025

Routes (relative to where it is mounted):

    GET  /                                  the page (inbox.js, inbox.css: plain HTML + JS, no build step)
    GET  /api/mailboxes                     [{name, count}]
    GET  /api/messages[?mailbox=NAME]       newest first: [{id, mailbox, from, to, subject, date, ...}]
    GET  /api/messages/{id}                 headers, text, html, attachments
    GET  /api/messages/{id}/raw             the stored bytes (message/rfc822 download)
    GET  /api/messages/{id}/html            the HTML part, for a sandboxed iframe
    GET  /api/messages/{id}/attachments/{n} one attachment (download)
    DELETE /api/messages/{id}, DELETE /api/messages[?mailbox=NAME]
    GET  /api/events                        Server-Sent Events: delivered, deleted, cleared

What the decisions guard against:

- Message ids in URLs are base64url of "mailbox/maildir id", never a path. They must be canonical, the
  mailbox must be one the store lists (looked up, never joined from the request), and the Maildir id goes
  through Maildir's own check; anything else is 404. Requests whose raw path holds %2f, %5c or %00 are
  404 before routing.
- Mail is hostile content. The HTML part is served alone, with a CSP that runs no script and loads
  nothing remote (`default-src 'none'; style-src 'unsafe-inline'; img-src data:`, plus `sandbox`), and the
  page shows it in an `<iframe sandbox>` without allow-scripts or allow-same-origin. The page itself
  allows script from 'self' only and its JS writes message data with textContent, never innerHTML.
  Downloads are `attachment`s with an RFC 6266/5987 filename, nosniff and a sandbox CSP.
- Parsing is bounded: at most MAX_PARSE bytes of a message are parsed and MAX_PARTS leaf parts looked at;
  it runs in a worker thread, and summaries are cached (stored messages never change).
- A live client gets a bounded queue: delivery only appends to it, never waits; a client that falls
  behind by more than `queue_size` events, or does not take a write within `send_timeout`, is dropped
  (EventSource reconnects and the page reloads the list). Its hook leaves `MailStore.on_delivery` as
  soon as its stream ends, on `http.disconnect` or otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import json
import logging
import re
import threading
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, quote

from socketkit.mail import inbox_page as view
from socketkit.mail.maildir import Maildir, MailStore, _check_id, _sort_key, mailbox_name
from socketkit.web.lifespan import answer_lifespan

log = logging.getLogger("socketkit.mail.inbox")

CACHE_SIZE = 4096         # message summaries kept
HTML_CSP = (b"default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
            b"form-action 'none'; sandbox")
PAGE_CSP = (b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; frame-src 'self'; "
            b"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
DOWNLOAD_CSP = b"default-src 'none'; sandbox"
_ID = re.compile(r"[A-Za-z0-9_-]{1,2000}")
_RAW_REFUSED = (b"%2f", b"%5c", b"%00")
_COMMON = [(b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"),
           (b"referrer-policy", b"no-referrer")]
_HTML = b"text/html; charset=utf-8"
_ASSETS = {"/": (view.PAGE, _HTML), "/index.html": (view.PAGE, _HTML),
           "/inbox.js": (view.JS, b"text/javascript; charset=utf-8"),
           "/inbox.css": (view.CSS, b"text/css; charset=utf-8")}
_REASONS = {404: b"not found\n", 405: b"method not allowed\n"}


# -- ids -------------------------------------------------------------------------------------------
def encode_id(mailbox: str, message_id: str) -> str:
    raw = f"{mailbox}/{message_id}".encode("utf-8", "surrogateescape")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_id(text: str) -> tuple[str, str] | None:
    """(mailbox, maildir id) for a canonical public id, else None."""
    if not _ID.fullmatch(text):
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    mailbox, slash, message_id = raw.decode("utf-8", "surrogateescape").partition("/")
    if not slash or encode_id(mailbox, message_id) != text:
        return None
    try:
        _check_id(message_id)
    except KeyError:
        return None
    return mailbox, message_id


# -- live events -----------------------------------------------------------------------------------
def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class _Subscriber:
    """One EventSource client: pending events, bounded; `push` never waits."""

    def __init__(self, limit: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.thread = threading.get_ident()
        self.limit = limit
        self.pending: collections.deque[bytes] = collections.deque()
        self.wake = asyncio.Event()
        self.ended = False      # disconnected, dropped, or the inbox is closing
        self.dropped = False

    def push(self, chunk: bytes) -> None:
        if threading.get_ident() != self.thread:  # a hook run by another thread: hand it to our loop
            self.loop.call_soon_threadsafe(self.push, chunk)
            return
        if self.ended:
            return
        if len(self.pending) >= self.limit:
            self.dropped = self.ended = True
            self.pending.clear()
        else:
            self.pending.append(chunk)
        self.wake.set()

    def end(self) -> None:
        self.ended = True
        self.wake.set()


# -- the app ---------------------------------------------------------------------------------------
class Inbox:
    """ASGI app over a MailStore; see the module docstring for the routes and the rules."""

    def __init__(self, store: MailStore, *, heartbeat: float = 15.0, queue_size: int = 256,
                 send_timeout: float = 30.0) -> None:
        self.store = store
        self.heartbeat = heartbeat
        self.queue_size = queue_size
        self.send_timeout = send_timeout
        self.subscribers: set[_Subscriber] = set()
        self._cache: collections.OrderedDict[tuple[str, str], dict[str, Any]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def close(self) -> None:
        """End every live stream (their clients reconnect to whoever serves next)."""
        for sub in list(self.subscribers):
            sub.end()

    def broadcast(self, event: str, data: dict[str, Any]) -> None:
        chunk = _sse(event, data)
        for sub in list(self.subscribers):
            sub.push(chunk)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await answer_lifespan(receive, send, self.close)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})

    # -- routing ------------------------------------------------------------------------------------
    async def _http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        method = scope["method"]
        path = scope.get("path") or "/"
        root = (scope.get("root_path") or "").rstrip("/")
        rel = path[len(root):] if root and (path == root or path.startswith(root + "/")) else path
        raw = bytes(scope.get("raw_path") or b"").split(b"?", 1)[0].lower()
        if any(bad in raw for bad in _RAW_REFUSED) or "\0" in rel:
            return await _plain(send, 404, method)
        if rel == "":  # relative links need the trailing slash
            location = quote((root + "/").encode("utf-8", "surrogateescape"), safe="/%").encode()
            return await _respond(send, 301, b"", [(b"location", location)], method)
        reading = method in ("GET", "HEAD")
        if rel in _ASSETS:
            if not reading:
                return await _plain(send, 405, method, b"GET, HEAD")
            body, ctype = _ASSETS[rel]
            headers = [(b"content-type", ctype), (b"content-security-policy", PAGE_CSP)]
            return await _respond(send, 200, body, headers, method)
        parts = rel.split("/")[1:]
        if parts[0] != "api" or len(parts) < 2:
            return await _plain(send, 404, method)
        if parts[1:] == ["events"]:
            if method != "GET":
                return await _plain(send, 405, method, b"GET")
            return await self._events(receive, send)
        if parts[1:] == ["mailboxes"]:
            if not reading:
                return await _plain(send, 405, method, b"GET, HEAD")
            return await _json(send, await asyncio.to_thread(self._mailboxes), method)
        if parts[1] != "messages":
            return await _plain(send, 404, method)
        if len(parts) == 2:
            mailbox = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("mailbox", [None])[0]
            if reading:
                return await _json(send, await asyncio.to_thread(self._list, mailbox), method)
            if method == "DELETE":
                removed = await asyncio.to_thread(self._delete_all, mailbox)
                self.broadcast("cleared", {"mailbox": mailbox, "deleted": removed})
                return await _respond(send, 204, b"", [], method)
            return await _plain(send, 405, method, b"GET, HEAD, DELETE")
        found = await asyncio.to_thread(self._find, parts[2])
        if found is None:
            return await _plain(send, 404, method)
        rest = parts[3:]
        if not rest and method == "DELETE":
            return await self._delete(send, method, parts[2], *found)
        if not reading:
            return await _plain(send, 405, method, b"GET, HEAD" + (b", DELETE" if not rest else b""))
        if rest not in ([], ["raw"], ["html"]) and not (len(rest) == 2 and rest[0] == "attachments"):
            return await _plain(send, 404, method)
        return await self._message(send, method, rest, *found)

    async def _delete(self, send: Any, method: str, public_id: str, name: str, box: Maildir,
                      message_id: str) -> None:
        try:
            await asyncio.to_thread(box.delete, message_id)
        except KeyError:
            return await _plain(send, 404, method)
        self.broadcast("deleted", {"id": public_id, "mailbox": name})
        await _respond(send, 204, b"", [], method)

    async def _message(self, send: Any, method: str, rest: list[str], name: str, box: Maildir,
                       message_id: str) -> None:
        try:
            data = await asyncio.to_thread(box.get, message_id)
        except (KeyError, OSError):
            return await _plain(send, 404, method)
        if rest == ["raw"]:
            filename = view.safe_filename(message_id, 0, "") + ".eml"
            return await _respond(send, 200, data, [
                (b"content-type", b"message/rfc822"), (b"content-security-policy", DOWNLOAD_CSP),
                (b"content-disposition", view.content_disposition(filename))], method)
        if not rest:
            detail = await asyncio.to_thread(self._detail, name, message_id, data)
            return await _json(send, detail, method)
        if rest == ["html"]:
            html = await asyncio.to_thread(view.html_body, data)
            if html is None:
                return await _plain(send, 404, method)
            return await _respond(send, 200, html.encode("utf-8", "replace"), [
                (b"content-type", _HTML), (b"content-security-policy", HTML_CSP)], method)
        index = int(rest[1]) if rest[1].isdigit() and len(rest[1]) < 7 else -1
        found = await asyncio.to_thread(view.attachment, data, index) if index >= 0 else None
        if found is None:
            return await _plain(send, 404, method)
        filename, ctype, body = found
        await _respond(send, 200, body, [
            (b"content-type", ctype.encode("ascii")), (b"content-security-policy", DOWNLOAD_CSP),
            (b"content-disposition", view.content_disposition(filename))], method)

    # -- storage ------------------------------------------------------------------------------------
    def _find(self, public_id: str) -> tuple[str, Maildir, str] | None:
        decoded = decode_id(public_id)
        if decoded is None:
            return None
        name, message_id = decoded
        box = self.store.mailboxes().get(name)  # looked up among what exists, never joined as a path
        if box is None or message_id not in box:
            return None
        return name, box, message_id

    def _mailboxes(self) -> list[dict[str, Any]]:
        return [{"name": name, "count": len(box)} for name, box in self.store.mailboxes().items()]

    def _detail(self, name: str, message_id: str, data: bytes) -> dict[str, Any]:
        summary = self._summary(name, message_id, data)
        try:
            return view.details(summary, data)
        except Exception:  # RecursionError on absurd nesting, or a parser bug: show what we have
            log.warning("inbox: could not parse %s/%s", name, message_id, exc_info=True)
            return {**summary, "headers": [], "text": None, "html": None, "attachments": [],
                    "truncated": True}

    def _boxes(self, mailbox: str | None) -> dict[str, Maildir]:
        boxes = self.store.mailboxes()
        if mailbox is None:
            return boxes
        return {k: v for k, v in boxes.items() if k in (mailbox, mailbox_name(mailbox))}

    def _summary(self, name: str, message_id: str, data: bytes | None = None,
                 size: int = 0) -> dict[str, Any]:
        key = (name, message_id)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        if data is None:
            box = self.store.mailboxes()[name]
            with open(box.path(message_id), "rb") as f:
                data = f.read(view.MAX_PARSE + 1)
                size = max(size, len(data))
        summary = view.summarize(encode_id(name, message_id), name, message_id, data, size or len(data))
        with self._lock:
            self._cache[key] = summary
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return summary

    def _list(self, mailbox: str | None) -> list[dict[str, Any]]:
        found = [(name, mid) for name, box in self._boxes(mailbox).items() for mid in box.list()]
        found.sort(key=lambda item: (_sort_key(item[1]), item[0]), reverse=True)
        out = []
        for name, message_id in found:
            try:
                size = self.store.mailboxes()[name].path(message_id).stat().st_size
                out.append(self._summary(name, message_id, size=size))
            except (KeyError, OSError):  # deleted meanwhile
                continue
        return out

    def _delete_all(self, mailbox: str | None) -> int:
        removed = 0
        for box in self._boxes(mailbox).values():
            for message_id in box.list():
                try:
                    box.delete(message_id)
                    removed += 1
                except (KeyError, OSError):
                    pass
        return removed

    # -- Server-Sent Events -------------------------------------------------------------------------
    async def _events(self, receive: Any, send: Any) -> None:
        while True:  # the request body (none is expected) must be read before the disconnect can be
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            if not message.get("more_body"):
                break
        sub = _Subscriber(self.queue_size)

        def delivered(mailbox: str, message_id: str) -> None:
            sub.push(_sse("delivered", {"id": encode_id(mailbox, message_id), "mailbox": mailbox}))

        self.subscribers.add(sub)
        self.store.on_delivery.append(delivered)
        watcher = asyncio.ensure_future(_until_disconnect(receive, sub))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"), (b"x-accel-buffering", b"no"),
                *_COMMON]})
            chunk = b"retry: 2000\n: connected\n\n"
            while True:
                async with asyncio.timeout(self.send_timeout):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                try:
                    async with asyncio.timeout(self.heartbeat):
                        await sub.wake.wait()
                except TimeoutError:
                    chunk = b": heartbeat\n\n"
                    continue
                sub.wake.clear()
                if sub.ended:
                    break
                chunk = b"".join(sub.pending)
                sub.pending.clear()
        except TimeoutError:
            sub.dropped = True  # a write waited send_timeout: the client does not read
        except Exception as e:  # the client went away while we were writing
            raise ConnectionAbortedError("inbox events: client gone") from e
        finally:
            sub.end()
            self.subscribers.discard(sub)
            try:
                self.store.on_delivery.remove(delivered)
            except ValueError:
                pass
            watcher.cancel()
        if sub.dropped:
            log.info("inbox: dropped a live client that fell behind")
            raise ConnectionAbortedError("inbox events: client too slow, dropped")
        try:
            async with asyncio.timeout(1.0):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except Exception as e:
            raise ConnectionAbortedError("inbox events: client gone") from e


async def _until_disconnect(receive: Any, sub: _Subscriber) -> None:
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    finally:
        sub.end()


async def _respond(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]],
                   method: str) -> None:
    if status != 204:
        headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": [*headers, *_COMMON]})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" or status == 204 else body})


async def _plain(send: Any, status: int, method: str, allow: bytes | None = None) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8")] + ([(b"allow", allow)] if allow else [])
    await _respond(send, status, _REASONS[status], headers, method)


async def _json(send: Any, data: Any, method: str) -> None:
    await _respond(send, 200, json.dumps(data).encode(), [(b"content-type", b"application/json")], method)


def run_with_inbox(config: Any, listen: Sequence[str] | None, web: Sequence[str], *, workers: int = 1,
                   user: str | None = None, loop: str = "auto") -> int:
    """`socketkit mail --web URL`: the SMTP receiver and its inbox in one process, until SIGINT/SIGTERM."""
    from socketkit import web as webserver
    from socketkit.errors import SocketkitError

    if workers != 1 or user is not None:  # live updates need the one process; the store its one owner
        raise SocketkitError("mail: --web runs the inbox in the mail process: it cannot be combined "
                             "with --workers or --user")
    from socketkit.mail.server import REFUSE_MESSAGE, MailServer, default_listen
    from socketkit.net.runner import announce, run_server

    async def setup():
        mail = MailServer(config)
        inbox = Inbox(mail.store)
        site = await webserver.start(inbox, list(web))
        announce(site.server, "inbox on")

        async def cleanup() -> None:
            inbox.close()
            await site.aclose(drain=1.0)

        return mail.handle, cleanup

    return run_server(list(listen or default_listen()), setup, limits=config.socket_limits(), loop=loop,
                      name="mail", refuse_message=REFUSE_MESSAGE)
