"""`socketkit web --reload`: the server runs in a child process, restarted whenever a Python file changes.

The watching is `watchfiles` (Rust's notify: inotify on Linux, no polling); the child is the same
`socketkit web` command line without the reload flags, so what it serves and where is exactly what the
command asked for. A development tool, as uvicorn's --reload is: one process, no --workers.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from collections.abc import Sequence

from socketkit.errors import SocketkitError

log = logging.getLogger("socketkit.web.reload")

_FLAGS = ("--reload",)
_VALUED = ("--reload-dir",)


def child_argv(argv: Sequence[str]) -> list[str]:
    """The command line without --reload and --reload-dir DIR (in both of their spellings)."""
    out: list[str] = []
    skip = False
    for word in argv:
        if skip:
            skip = False
            continue
        if word in _FLAGS:
            continue
        if word in _VALUED:
            skip = True
            continue
        if word.startswith(tuple(flag + "=" for flag in _VALUED)):
            continue
        out.append(word)
    return out


def run_with_reload(argv: Sequence[str], dirs: Sequence[str]) -> int:
    """Run `socketkit ARGV` (its --reload flags taken out) and restart it on every change under `dirs`."""
    try:
        import watchfiles
    except ImportError:  # pragma: no cover - a dependency
        raise SocketkitError("--reload needs the watchfiles package (pip install watchfiles)") from None
    for directory in dirs:
        if not os.path.isdir(directory):
            raise SocketkitError(f"--reload-dir {directory!r} is not a directory")
    command = shlex.join([sys.executable, "-m", "socketkit", *child_argv(argv)])
    shown = ", ".join(os.path.abspath(d) for d in dirs)
    sys.stderr.write(f"reload: watching {shown} for changes to Python files\n")
    sys.stderr.flush()

    def changed(changes: set[tuple[object, str]]) -> None:
        names = sorted({os.path.relpath(path) for _, path in changes})
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        sys.stderr.write(f"reload: {', '.join(names[:3])}{more} changed; restarting the server\n")
        sys.stderr.flush()

    watchfiles.run_process(*dirs, target=command, target_type="command", callback=changed,
                           watch_filter=watchfiles.PythonFilter(), debounce=800, step=50)
    return 0
