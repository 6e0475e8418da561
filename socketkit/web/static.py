"""StaticFiles: a pure ASGI 3 app that serves one directory, safely.

    app = StaticFiles("public", listing=True, index=("index.html",), follow_symlinks=False)

It is what `socketkit web --static DIR` runs, and it can be mounted in any ASGI app (a mount that sets
`root_path` and keeps it in `path`, as the ASGI spec says, or one that strips it — both work).

What a request can reach, and the decisions behind it:

- Only files under DIR. The decoded `scope["path"]` is split on "/", and a request is refused with 404
  when any segment is `.` or `..`, holds a backslash or NUL, or when `raw_path` holds an encoded `/`,
  `\\` or NUL (`%2f`, `%5c`, `%00`): such a name means something else to the client than to the disk.
  Empty segments (`//`) are dropped, so an "absolute" path can only name something under DIR.
- The joined path is resolved with os.path.realpath and must stay inside DIR by path components
  (os.path.commonpath), so `/srv/www-secret` is not inside `/srv/www`.
- Symlinks: with follow_symlinks=False (the default) a symlink is served only when its real path is
  inside DIR (in-tree links keep working; links leaving DIR are 404 and are left out of listings).
  follow_symlinks=True serves whatever the links in DIR point to: the owner of DIR put them there.
  The final open uses O_NOFOLLOW on the resolved path, so a link swapped in after the check fails.
- Hidden files (dot files) are served and listed, as `python -m http.server` does; keep secrets out of
  the served directory. Only regular files and directories are served; fifos, sockets and devices are 404.
- Status codes never depend on a traceback: unreadable (EACCES) is 403, anything else that goes wrong
  with a client-chosen path (missing, vanished between lookup and open, ENAMETOOLONG, ELOOP, names that
  cannot be encoded) is 404, a path longer than MAX_PATH characters is 414.

Responses: GET and HEAD only (405 with `Allow: GET, HEAD` otherwise; HEAD gets the GET headers and no
body). Files carry Content-Type (mimetypes; utf-8 charset on text), Content-Length, ETag, Last-Modified,
Accept-Ranges and `X-Content-Type-Options: nosniff`; conditional requests and byte ranges follow
static_http (304s carry ETag and Last-Modified but no Content-Length, which would have to be the full
length and confuses some servers' framing). A directory without a trailing slash is redirected with 301
(only GET and HEAD get there, so 301 and 308 mean the same and 301 is understood everywhere), keeping the
query; with a slash it serves the first index file, else the listing (listing=True) or 404.

Bodies: a small file kept in the cache (static_cache.py) is sent from memory. Otherwise, when the server
offers the `http.response.zerocopysend` extension, the open file is handed to it per (offset, count) slice;
the file stays open until the last send() returns (a cached one until it leaves the cache and no request
uses it), so the server must be done with it by then. Otherwise the file is read with os.pread in a worker
thread, chunk_size bytes at a time, and sending stops early if the client disconnects. A file that shrinks
while being sent cannot meet its Content-Length: the app stops, and the server closes the connection.

The cache: open files, their metadata and small files' bytes, checked against the disk at most every
`cache_valid` seconds per file (see static_cache.py); `cache_entries=0` turns it off.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import stat
from typing import Any
from urllib.parse import quote, quote_from_bytes

from socketkit.proto.http1_writer import PreparedHeaders

from . import static_http as rules
from .lifespan import answer_lifespan
from .static_cache import Entry, FileCache, stat_key
from .static_listing import CSP, render

__all__ = ["MAX_PATH", "StaticFiles"]

log = logging.getLogger("socketkit.web.static")

MAX_PATH = 4096  # characters of decoded path below the mount point; longer is 414
_NAME_MAX = 255  # bytes in one file name on every common file system
_OPEN_FLAGS = os.O_RDONLY
for _flag in ("O_NOFOLLOW", "O_NONBLOCK", "O_NOCTTY", "O_CLOEXEC", "O_BINARY"):
    # O_NONBLOCK: a fifo swapped in after the check must not block a worker thread forever.
    _OPEN_FLAGS |= getattr(os, _flag, 0)
_RAW_REFUSED = (b"%2f", b"%5c", b"%00")
_QUERY_SAFE = "!$&'()*+,-./:;=?@_~%[]"
_CONDITIONAL = frozenset(
    {"range", "if-range", "if-match", "if-none-match", "if-modified-since", "if-unmodified-since"}
)
_CONDITIONAL_BYTES = frozenset(name.encode() for name in _CONDITIONAL)
_REASONS = {
    301: "Moved Permanently",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    412: "Precondition Failed",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
}
_NOSNIFF = (b"x-content-type-options", b"nosniff")
_REDIRECT = object()


class StaticFiles:
    """Serve `directory` over ASGI; see the module docstring for the rules."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        listing: bool = True,
        index: tuple[str, ...] | list[str] = ("index.html",),
        follow_symlinks: bool = False,
        chunk_size: int = 256 * 1024,
        cache_entries: int = 512,
        cache_bytes: int = 32 * 1024 * 1024,
        cache_file_max: int = 256 * 1024,
        cache_valid: float = 1.0,
    ) -> None:
        real = os.path.realpath(os.fspath(directory))
        if not os.path.isdir(real):
            raise NotADirectoryError(f"StaticFiles: {os.fspath(directory)!r} is not a directory")
        for name in index:
            if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
                raise ValueError(f"StaticFiles: index name {name!r} must be a plain file name")
        if chunk_size < 1:
            raise ValueError(f"StaticFiles: chunk_size must be positive, not {chunk_size}")
        self.directory = real
        self.listing = listing
        self.index = tuple(index)
        self.follow_symlinks = follow_symlinks
        self.chunk_size = chunk_size
        self.cache = FileCache(entries=cache_entries, max_bytes=cache_bytes, max_file=cache_file_max,
                               valid=cache_valid, still_inside=self._allowed)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await answer_lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})

    # -- request target ---------------------------------------------------------------------------

    def _target(self, scope: dict) -> int | tuple[list[str], bool, list[str]]:
        """(segments below DIR, trailing slash?, mount point segments), or the status to refuse with."""
        path = scope.get("path") or "/"
        root = (scope.get("root_path") or "").rstrip("/")
        rel = path[len(root):] if root and (path == root or path.startswith(root + "/")) else path
        if len(rel) > MAX_PATH:
            return 414
        raw = scope.get("raw_path")
        if raw:
            lowered = bytes(raw).split(b"?", 1)[0].lower()
            if any(bad in lowered for bad in _RAW_REFUSED):
                return 404
        if "\x00" in rel or "\\" in rel:
            return 404
        segments = [s for s in rel.split("/") if s]
        for segment in segments:
            if segment in (".", "..") or (os.name == "nt" and ":" in segment):
                return 404
            try:
                if len(os.fsencode(segment)) > _NAME_MAX:
                    return 404
            except UnicodeError:
                return 404
        return segments, rel.endswith("/"), [s for s in root.split("/") if s]

    # -- file system (runs in a worker thread) ------------------------------------------------------

    def _inside(self, real: str) -> bool:
        return real == self.directory or os.path.commonpath([self.directory, real]) == self.directory

    def _allowed(self, real: str) -> bool:
        return self.follow_symlinks or self._inside(real)

    def _lookup(self, segments: list[str], trailing: bool, shown: str) -> Entry | bytes | int | object:
        """Entry to serve (its file open), listing page bytes, _REDIRECT, or an error status."""
        fd = -1
        try:
            joined = os.path.join(self.directory, *segments)
            real = os.path.realpath(joined)
            if not self.follow_symlinks and not self._inside(real):
                return 404
            fd = os.open(real, _OPEN_FLAGS)
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode):
                if trailing:
                    return 404  # `file.txt/` names a directory that does not exist
                entry = Entry()
                entry.file = open(fd, "rb", buffering=0)  # closed by _http once sent, or by the cache
                fd = -1
                entry.st, entry.joined, entry.real = st, joined, real
                entry.name = segments[-1] if segments else ""
                self._describe(entry)
                return entry
            if not stat.S_ISDIR(st.st_mode):
                return 404
            os.close(fd)
            fd = -1
            if not trailing:
                return _REDIRECT
            for name in self.index:
                found = self._lookup([*segments, name], False, shown)
                if isinstance(found, Entry) or found == 403:
                    return found
            if not self.listing:
                return 404
            return render(real, shown, self.directory, follow_symlinks=self.follow_symlinks, at_root=not segments)
        except PermissionError:
            return 403
        except (OSError, ValueError):
            return 404
        finally:
            if fd >= 0:
                os.close(fd)

    def _describe(self, entry: Entry) -> None:
        """Validators, content type, and (a small file that may be cached) its bytes: in the worker thread."""
        st = entry.st
        entry.validators = rules.Validators(st)
        entry.ctype = rules.content_type(entry.name)
        entry.key = stat_key(st)
        cache = self.cache
        if not cache.enabled or st.st_size > cache.max_file or not entry.validators.strong_date:
            return
        fd = entry.file.fileno()
        data = os.pread(fd, st.st_size, 0) if st.st_size else b""
        if len(data) == st.st_size and stat_key(os.fstat(fd)) == entry.key:
            entry.body = data  # (a file changing under the read is served from disk, uncached)

    def _admit(self, entry: Entry, scope: dict) -> None:
        """Keep a fresh lookup's entry in the cache when it may be; the request holds it either way."""
        entry.users = 1
        v = entry.validators
        if not v.strong_date:
            entry.dead = True  # changed within the last second: served, never kept (see static_cache)
            return
        entry.path = scope.get("path") or "/"
        entry.raw_path = scope.get("raw_path")
        entry.root_path = scope.get("root_path") or ""
        entry.headers = PreparedHeaders(200, [
            (b"content-type", entry.ctype.encode("latin-1")),
            (b"content-length", b"%d" % entry.st.st_size),
            (b"accept-ranges", b"bytes"),
            (b"etag", v.etag.encode()),
            (b"last-modified", v.last_modified.encode()),
            _NOSNIFF,
        ])
        if self.cache.add(entry):
            if entry.body is not None:
                entry.file.close()
                entry.file = None
        else:
            entry.dead = True

    def cached_response(self, method: bytes, path: str, raw_path: bytes, headers: Any
                        ) -> tuple[PreparedHeaders, bytes | Entry] | None:
        """For a server that calls it before running the app: the whole 200 response of a GET/HEAD of a
        cached file without conditions or ranges, as (prepared header list, body): the bytes of a small
        file, b"" for HEAD, or the Entry of a larger one (send `entry.st.st_size` bytes of `entry.file`,
        holding `entry.users` up meanwhile, then `entry.release()`). None: run the app as usual. The same
        answer the app would send, without the ASGI round trip."""
        if method != b"GET" and method != b"HEAD":
            return None
        entry = self.cache.get(path, raw_path, "")
        if entry is None:
            return None
        for name, _ in headers:
            if name in _CONDITIONAL_BYTES:
                return None
        if method == b"HEAD":
            return entry.headers, b""
        return entry.headers, entry.body if entry.body is not None else entry

    # -- responses --------------------------------------------------------------------------------

    async def _http(self, scope: dict, receive: Any, send: Any) -> None:
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD"):
            await _plain(send, 405, False, [(b"allow", b"GET, HEAD")])
            return
        head = method == "HEAD"
        if self.cache.enabled:
            entry = self.cache.get(scope.get("path") or "/", scope.get("raw_path"), scope.get("root_path") or "")
            if entry is not None:
                entry.users += 1
                try:
                    await self._file(scope, receive, send, entry, head)
                finally:
                    entry.release()
                return
        target = self._target(scope)
        if isinstance(target, int):
            await _plain(send, target, head)
            return
        segments, trailing, mount = target
        shown = "/" + "".join(s + "/" for s in mount + segments)
        found = await asyncio.to_thread(self._lookup, segments, trailing, shown)
        if isinstance(found, Entry):
            self._admit(found, scope)
            try:
                await self._file(scope, receive, send, found, head)
            finally:
                found.release()
        elif found is _REDIRECT:
            location = "/" + "".join(quote(s, safe="", errors="surrogateescape") + "/" for s in mount + segments)
            query = scope.get("query_string") or b""
            if query:
                location += "?" + quote_from_bytes(query, safe=_QUERY_SAFE)
            await _plain(send, 301, head, [(b"location", location.encode("ascii"))])
        elif isinstance(found, bytes):
            headers = [
                (b"content-type", b"text/html; charset=utf-8"),
                (b"content-length", b"%d" % len(found)),
                (b"content-security-policy", CSP.encode()),
                (b"cache-control", b"no-cache"),
                _NOSNIFF,
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"" if head else found})
        else:
            await _plain(send, found, head)

    async def _file(self, scope: dict, receive: Any, send: Any, found: Entry, head: bool) -> None:
        request = _request_headers(scope)
        if not request and found.headers is not None:
            # The common request, for a cached file: its prepared head, then the body.
            await send({"type": "http.response.start", "status": 200, "headers": found.headers})
            if head:
                await send({"type": "http.response.body", "body": b""})
            elif found.body is not None:
                await send({"type": "http.response.body", "body": found.body})
            else:
                await self._body(scope, receive, send, found, [(0, found.st.st_size)], found.st.st_size)
            return
        size = found.st.st_size
        v = found.validators
        validators = [(b"etag", v.etag.encode()), (b"last-modified", v.last_modified.encode())]
        status = rules.precondition(request, v)
        if status == 304:
            await send({"type": "http.response.start", "status": 304, "headers": [*validators, _NOSNIFF]})
            await send({"type": "http.response.body", "body": b""})
            return
        if status is not None:
            await _plain(send, status, head)
            return
        ctype = found.ctype
        plan: list[bytes | tuple[int, int]] = [(0, size)]
        length, status, extra = size, 200, []
        ranges = self._ranges(request, v, size) if not head else None
        if ranges == []:
            await _plain(send, 416, head, [(b"content-range", b"bytes */%d" % size)])
            return
        if ranges and len(ranges) == 1:
            (start, stop), status = ranges[0], 206
            plan, length = [(start, stop - start)], stop - start
            extra = [(b"content-range", b"bytes %d-%d/%d" % (start, stop - 1, size))]
        elif ranges:
            boundary = secrets.token_hex(16)
            plan, length = rules.multipart_plan(ranges, size, ctype, boundary)
            ctype, status = f"multipart/byteranges; boundary={boundary}", 206
        headers = [
            (b"content-type", ctype.encode("latin-1")),
            (b"content-length", b"%d" % length),
            *extra,
            (b"accept-ranges", b"bytes"),
            *validators,
            _NOSNIFF,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if head:
            await send({"type": "http.response.body", "body": b""})
            return
        await self._body(scope, receive, send, found, plan, length)

    @staticmethod
    def _ranges(request: dict[str, list[str]], v: rules.Validators, size: int) -> list[tuple[int, int]] | None:
        values = request.get("range")
        if values is None or len(values) != 1:
            return None  # a repeated Range is malformed: ignored like any other
        if_range = request.get("if-range")
        if if_range is not None and (len(if_range) != 1 or not rules.if_range_holds(if_range[0], v)):
            return None
        return rules.parse_range(values[0], size)

    async def _body(
        self, scope: dict, receive: Any, send: Any, found: Entry, plan: list, length: int
    ) -> None:
        items = [item for item in plan if isinstance(item, bytes) or item[1] > 0]
        if not items:
            await send({"type": "http.response.body", "body": b""})
            return
        if found.body is not None:  # cached bytes: slices of memory, no file
            body = found.body
            for n, item in enumerate(items):
                if not isinstance(item, bytes):
                    item = body[item[0]:item[0] + item[1]]
                await send({"type": "http.response.body", "body": item, "more_body": n < len(items) - 1})
            return
        zerocopy = "http.response.zerocopysend" in (scope.get("extensions") or {})
        watcher = None
        if not zerocopy and length > self.chunk_size:
            watcher = asyncio.ensure_future(_disconnected(receive))
        fd = found.file.fileno()
        try:
            for n, item in enumerate(items):
                more = n < len(items) - 1
                if isinstance(item, bytes):
                    await send({"type": "http.response.body", "body": item, "more_body": more})
                    continue
                offset, count = item
                if zerocopy:
                    await send(
                        {
                            "type": "http.response.zerocopysend",
                            "file": found.file,
                            "offset": offset,
                            "count": count,
                            "more_body": more,
                        }
                    )
                    continue
                while count:
                    if watcher is not None and watcher.done():
                        return  # the client left: stop reading the file for nobody
                    data = await asyncio.to_thread(os.pread, fd, min(self.chunk_size, count), offset)
                    if not data:
                        log.warning("%s shrank while being sent; closing the response early", found.name)
                        return
                    offset += len(data)
                    count -= len(data)
                    await send({"type": "http.response.body", "body": data, "more_body": more or count > 0})
        finally:
            if watcher is not None:
                watcher.cancel()


async def _disconnected(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _request_headers(scope: dict) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, value in scope.get("headers") or ():
        # ASGI names are lowercase already: the set lookup decides for almost every header at once.
        if name in _CONDITIONAL_BYTES or not name.islower():
            key = bytes(name).decode("latin-1").lower()
            if key in _CONDITIONAL:
                found.setdefault(key, []).append(bytes(value).decode("latin-1"))
    return found


async def _plain(send: Any, status: int, head: bool, extra: list[tuple[bytes, bytes]] | tuple = ()) -> None:
    body = f"{status} {_REASONS.get(status, '')}\n".encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"%d" % len(body)),
        _NOSNIFF,
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})
