"""What makes h2 affordable per request: memory of HPACK blocks and of checked header lists.

- `_Encoder` and `_Decoder` wrap hpack's: a header list whose block is nothing but indexes is encoded (or
  decoded) once while the dynamic table stays the same, and forgotten the moment a block changes the table.
- h2 checks every received header list with a pipeline of generators; its result for a list that passed is
  remembered (bounded) and handed out again for the same list and flags. A list that fails is never
  remembered, so every refusal still happens where and as h2 makes it.
- hpack logs every header at DEBUG level: silenced (hpack's logger only).

The wrappers are per connection; the header-check memory is shared (it is a pure function's).
"""

from __future__ import annotations

import logging
from typing import Any

import h2.config
import h2.stream
import h2.utilities
import hpack
import hpack.hpack


class _Quiet:
    """hpack logs every header it encodes or decodes at DEBUG level; with logging configured to show
    nothing below WARNING those calls still cost a tenth of a request. Kept silent (hpack only)."""

    def debug(self, *args: object, **kwargs: object) -> None:
        pass

    def __getattr__(self, name: str) -> object:
        return getattr(logging.getLogger("hpack.hpack"), name)


hpack.hpack.log = _Quiet()  # type: ignore[assignment]


def _all_indexed(block: bytes) -> bool:
    """True when an HPACK block is nothing but indexed fields (RFC 7541 6.1): decoding or encoding it
    neither reads nor changes anything but the current table, so the same bytes mean the same headers
    for as long as the table is unchanged."""
    i, n = 0, len(block)
    while i < n:
        b = block[i]
        i += 1
        if not b & 0x80:
            return False
        if b & 0x7F == 0x7F:  # the index continues in 7-bit groups
            while i < n and block[i] & 0x80:
                i += 1
            i += 1
    return i == n


class _Encoder:
    """hpack's Encoder, with the block of a header list remembered while the table stays the same.

    A server sends the same response heads again and again: once they are in the table, their block is
    indexes only, and encoding them again changes nothing. Any block that did change the table (a new
    Date each second, a table size update) forgets every remembered one."""

    __slots__ = ("encoder", "blocks")

    def __init__(self, encoder: hpack.Encoder) -> None:
        self.encoder = encoder
        self.blocks: dict[tuple[object, ...], bytes] = {}

    @property
    def header_table_size(self) -> int:
        return self.encoder.header_table_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self.blocks.clear()
        self.encoder.header_table_size = value

    def encode(self, headers: object, huffman: bool = True) -> bytes:
        key = tuple(headers)  # type: ignore[arg-type]
        block = self.blocks.get(key)
        if block is not None:
            return block
        block = self.encoder.encode(key, huffman)
        if _all_indexed(block):
            if len(self.blocks) >= 256:
                self.blocks.clear()
            self.blocks[key] = block
        else:
            self.blocks.clear()
        return block

    def __getattr__(self, name: str) -> object:
        return getattr(self.encoder, name)


class _Decoder:
    """hpack's Decoder, with the headers of an all-indexed block remembered while the table is unchanged
    (a client repeats its request heads as such blocks: h2load, a browser fetching a page's assets)."""

    __slots__ = ("decoder", "lists", "requests")

    def __init__(self, decoder: hpack.Decoder) -> None:
        self.decoder = decoder
        self.lists: dict[bytes, list[object]] = {}
        # The fast lane's memory, forgotten with `lists`: block -> the request head h2's checks made of it.
        self.requests: dict[bytes, list[object]] = {}

    @property
    def max_header_list_size(self) -> int:
        return self.decoder.max_header_list_size

    @max_header_list_size.setter
    def max_header_list_size(self, value: int) -> None:
        self.lists.clear()
        self.requests.clear()
        self.decoder.max_header_list_size = value

    @property
    def max_allowed_table_size(self) -> int:
        return self.decoder.max_allowed_table_size

    @max_allowed_table_size.setter
    def max_allowed_table_size(self, value: int) -> None:
        self.lists.clear()
        self.requests.clear()
        self.decoder.max_allowed_table_size = value

    @property
    def header_table_size(self) -> int:
        return self.decoder.header_table_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self.lists.clear()
        self.requests.clear()
        self.decoder.header_table_size = value

    def decode(self, data: bytes, raw: bool = False) -> list[object]:
        key = bytes(data)
        found = self.lists.get(key)
        if found is not None:
            return list(found)
        headers = self.decoder.decode(key, raw=raw)
        if _all_indexed(key):
            if len(self.lists) >= 256:
                self.lists.clear()
                self.requests.clear()
            self.lists[key] = list(headers)
        else:
            self.lists.clear()
            self.requests.clear()
        return headers

    def __getattr__(self, name: str) -> object:
        return getattr(self.decoder, name)


# h2 checks every received header list with a pipeline of generators (pseudo-headers, connection headers,
# illegal characters, ...): a pure function of the list and its flags, run again for every request. Its
# result for a list that passed is remembered (bounded); a list that fails is never remembered, so every
# refusal still happens where and as h2 makes it.
_CHECKED: dict[tuple[object, ...], list[object]] = {}
_process_received_headers = h2.stream.H2Stream._process_received_headers


def _remembered_headers(self, headers, header_validation_flags, header_encoding):  # type: ignore[no-untyped-def]
    config = self.config
    key = (tuple(headers), header_validation_flags, header_encoding, config.normalize_inbound_headers,
           config.validate_inbound_headers)
    found = _CHECKED.get(key)
    if found is None:
        found = _process_received_headers(self, key[0], header_validation_flags, header_encoding)
        if len(_CHECKED) >= 1024:
            _CHECKED.clear()
        _CHECKED[key] = found
    return list(found)


h2.stream.H2Stream._process_received_headers = _remembered_headers  # type: ignore[method-assign]

_REQUEST = h2.utilities.HeaderValidationFlags(is_client=False, is_trailer=False, is_response_header=False,
                                              is_push_promise=False)


def _checked_request(config: h2.config.H2Configuration, headers: list[object]) -> list[object]:
    """A request head through h2's own inbound pipeline (what `_process_received_headers` runs for it)."""
    key = (tuple(headers), _REQUEST, None, config.normalize_inbound_headers, config.validate_inbound_headers)
    found = _CHECKED.get(key)
    if found is None:
        checked: Any = key[0]
        if config.normalize_inbound_headers:
            checked = h2.utilities.normalize_inbound_headers(checked, _REQUEST)
        if config.validate_inbound_headers:
            checked = h2.utilities.validate_headers(checked, _REQUEST)
        found = list(checked)
        if len(_CHECKED) >= 1024:
            _CHECKED.clear()
        _CHECKED[key] = found
    return list(found)
