"""What a person (or a program) sees of a fan-out: prefixed lines as they come, a summary table, JSON lines,
a progress bar. No SSH here: fanout.py feeds bytes and results in.

- Each remote line is written whole, prefixed with its host: `web1 | line` for stdout (to our stdout),
  `web1 ! line` for stderr (to our stderr), so lines of different hosts never interleave mid-line. A line
  still incomplete is held until its newline; one longer than MAX_LINE is written in MAX_LINE pieces.
- Colour (the host names, the `!` of stderr lines, the summary's verdicts) only on a terminal, never with
  NO_COLOR set or TERM=dumb.
- JSON: one object per host per line. stdout/stderr are text decoded as UTF-8 with errors="replace" (what a
  reader wants nearly always); when the bytes were not valid UTF-8, `stdout_base64`/`stderr_base64` carry them
  exactly as well. Each stream is kept up to a bound per host; `stdout_truncated`/`stderr_truncated` say so.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from typing import TYPE_CHECKING, BinaryIO, TextIO

if TYPE_CHECKING:
    from socketkit.remote.fanout import HostResult

MAX_LINE = 64 * 1024
MAX_PREFIX = 32
_COLOURS = (36, 33, 35, 32, 34, 96, 93, 95, 92, 94)
_RESET = b"\x1b[0m"


def wants_colour(stream: TextIO | BinaryIO) -> bool:
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _Sink:
    """Bytes out to a text stream: through its binary buffer when it has one (remote output is bytes and may
    not be UTF-8), else decoded with errors="replace" (io.StringIO in tests and embedding programs)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.buffer = getattr(stream, "buffer", None)

    def write(self, data: bytes) -> None:
        if self.buffer is not None:
            self.stream.flush()  # whatever text went out before (a warning) stays before our bytes
            self.buffer.write(data)
            self.buffer.flush()
        else:
            self.stream.write(data.decode("utf-8", "replace"))
            self.stream.flush()


class LinePrinter:
    """Prefixed, whole lines of every host's output, as the bytes arrive (feed) and at the end (finish)."""

    def __init__(self, labels: list[str], out: TextIO, err: TextIO, *, colour_out: bool | None = None,
                 colour_err: bool | None = None, max_line: int = MAX_LINE) -> None:
        self._out, self._err = _Sink(out), _Sink(err)
        self.max_line = max_line
        cout = wants_colour(out) if colour_out is None else colour_out
        cerr = wants_colour(err) if colour_err is None else colour_err
        width = min(max((len(label) for label in labels), default=0), MAX_PREFIX)
        self._prefix: list[tuple[bytes, bytes]] = []
        for i, label in enumerate(labels):
            name = label.ljust(width).encode("utf-8", "replace")
            colour = _COLOURS[i % len(_COLOURS)]
            o = (b"\x1b[%dm" % colour + name + _RESET if cout else name) + b" | "
            e = (b"\x1b[%dm" % colour + name + _RESET + b" \x1b[1;31m!\x1b[0m " if cerr else name + b" ! ")
            self._prefix.append((o, e))
        self._pending: dict[tuple[int, bool], bytearray] = {}

    def feed(self, index: int, is_err: bool, data: bytes) -> None:
        key = (index, is_err)
        pending = self._pending.get(key)
        if pending:
            pending += data
            data = bytes(pending)
            pending.clear()
        cut = data.rfind(b"\n") + 1
        whole, rest = data[:cut], data[cut:]
        out: list[bytes] = []
        prefix = self._prefix[index][is_err]
        if whole:
            for line in whole.split(b"\n")[:-1]:
                self._pieces(prefix, line, out)
        while len(rest) >= self.max_line:  # a line with no end in sight goes out in bounded pieces
            out.append(prefix + rest[:self.max_line] + b"\n")
            rest = rest[self.max_line:]
        if rest:
            self._pending.setdefault(key, bytearray()).extend(rest)
        if out:
            (self._err if is_err else self._out).write(b"".join(out))

    def _pieces(self, prefix: bytes, line: bytes, out: list[bytes]) -> None:
        while len(line) > self.max_line:
            out.append(prefix + line[:self.max_line] + b"\n")
            line = line[self.max_line:]
        out.append(prefix + line + b"\n")

    def finish(self, index: int) -> None:
        """The host is done: its last lines without a newline go out now (with one)."""
        for is_err in (False, True):
            pending = self._pending.pop((index, is_err), None)
            if pending:
                (self._err if is_err else self._out).write(self._prefix[index][is_err] + bytes(pending) + b"\n")


def _rank(r: HostResult) -> int:
    return 2 if r.ok else (1 if r.reached else 0)


def write_summary(results: list[HostResult], stream: TextIO, *, colour: bool | None = None,
                  seconds: float | None = None) -> None:
    """The table at the end: failed hosts first (not reached, then commands that failed), each with what
    went wrong and its time; then one line of counts."""
    if colour is None:
        colour = wants_colour(stream)
    rows = sorted(results, key=_rank)  # sorted() is stable: the order given stays within each group
    width = min(max([len(r.host) for r in rows] + [4]), 40)
    lines = [f"{'HOST'.ljust(width)}  {'TIME':>7}  RESULT"]
    for r in rows:
        verdict = r.describe()
        if colour:
            verdict = f"\x1b[{32 if r.ok else 31}m{verdict}\x1b[0m"
        lines.append(f"{r.host.ljust(width)}  {r.seconds:6.2f}s  {verdict}")
    lines.append(count_line(results, seconds))
    stream.write("\n".join(lines) + "\n")
    stream.flush()


def count_line(results: list[HostResult], seconds: float | None = None) -> str:
    counts: dict[str, int] = {}
    for r in results:
        counts[r.kind] = counts.get(r.kind, 0) + 1
    order = ["ok", "failed", "timed out", "unreachable", "auth failed", "host key mismatch", "unknown host key",
             "error"]
    parts = [f"{counts[k]} {k}" + ("s" if k == "error" and counts[k] > 1 else "") for k in order if counts.get(k)]
    took = f" in {seconds:.2f}s" if seconds is not None else ""
    return f"{len(results)} host{'s' if len(results) != 1 else ''}{took}: " + ", ".join(parts)


def _text_fields(name: str, data: bytes, truncated: bool) -> dict[str, object]:
    fields: dict[str, object] = {name: data.decode("utf-8", "replace")}
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        fields[f"{name}_base64"] = base64.b64encode(data).decode("ascii")
    if truncated:
        fields[f"{name}_truncated"] = True
    return fields


def json_line(r: HostResult) -> str:
    obj: dict[str, object] = {"host": r.host, "status": r.status, "exit_status": r.exit_status,
                              "signal": r.signal, "error": r.error}
    obj.update(_text_fields("stdout", r.stdout, r.stdout_truncated))
    obj.update(_text_fields("stderr", r.stderr, r.stderr_truncated))
    obj["seconds"] = round(r.seconds, 3)
    return json.dumps(obj, ensure_ascii=False)


class Progress:
    """A tqdm bar of bytes across all hosts, on a terminal only; elsewhere nothing (the summary says it all)."""

    def __init__(self, total: int, stream: TextIO | None = None, *, label: str = "copy") -> None:
        self._bar = None
        stream = stream or sys.stderr
        try:
            tty = stream.isatty()
        except (AttributeError, ValueError):
            tty = False
        if tty and total > 0:
            from tqdm import tqdm

            try:
                size = os.get_terminal_size(stream.fileno())
            except (OSError, ValueError):
                size = os.terminal_size((0, 0))
            sized = size.columns > 0 and size.lines > 0  # a bare pty reports 0x0: tqdm would draw nothing
            self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1000, desc=label, file=stream,
                             dynamic_ncols=sized, ncols=None if sized else 80, nrows=None if sized else 24,
                             leave=False)

    def update(self, n: int) -> None:
        if self._bar is not None and n:
            self._bar.update(n)

    def discount(self, n: int) -> None:
        """A host failed: the bytes it will never receive leave the total."""
        if self._bar is not None and n > 0:
            self._bar.total = max(self._bar.total - n, self._bar.n)
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


__all__ = ["MAX_LINE", "LinePrinter", "Progress", "count_line", "json_line", "wants_colour", "write_summary"]
