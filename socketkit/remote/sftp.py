"""sftp and legacy scp for `remote serve`, on asyncssh's SFTP server: the user's own files, paths relative to
their home (as OpenSSH without ChrootDirectory), every file opened, changed or removed on the audit log.

Two things asyncssh does differently from OpenSSH's sftp-server, fixed here:
- it ends the sftp channel without an exit status; OpenSSH 9's scp (which speaks sftp by default) then
  sees "Exit status -1" and exits 1 although the copy succeeded. The channel ends with exit-status 0 here.
- relative paths are taken relative to the server's working directory; here, to the user's home.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import asyncssh
from asyncssh.scp import run_scp_server
from asyncssh.sftp import run_sftp_server
from asyncssh.stream import SSHServerStreamSession

if TYPE_CHECKING:
    from socketkit.remote.server_conn import ConnState

_WRITE_FLAGS = asyncssh.FXF_WRITE | asyncssh.FXF_APPEND | asyncssh.FXF_CREAT | asyncssh.FXF_TRUNC


def _text(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")


class _Open:
    __slots__ = ("path", "op", "read", "written")

    def __init__(self, path: str, op: str) -> None:
        self.path, self.op, self.read, self.written = path, op, 0, 0


class HomeSFTPServer(asyncssh.SFTPServer):
    """asyncssh's local-filesystem SFTP server, rooted at nothing but starting in the user's home, with an
    audit record before each file is opened or changed and one with the byte counts when it is closed."""

    def __init__(self, chan: Any, state: "ConnState", kind: str) -> None:
        super().__init__(chan)
        self._state = state
        self._kind = kind  # "sftp" or "scp"
        self._home = state.server.account.home.encode()
        self._files: dict[int, _Open] = {}

    def _audit(self, event: str, **fields: Any) -> None:
        self._state.audit(event, via=self._kind, **fields)

    def map_path(self, path: bytes) -> bytes:
        return posixpath.join(self._home, path) if not path.startswith(b"/") else path

    def _opened(self, path: bytes, op: str, opener: Callable[[], Any]) -> Any:
        full = _text(self.map_path(path))
        self._audit("file", op=op, path=full)
        self._state.touch()
        file_obj = opener()
        self._files[id(file_obj)] = _Open(full, op)
        return file_obj

    def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> Any:
        writing = bool(pflags & _WRITE_FLAGS)
        op = "read-write" if writing and pflags & asyncssh.FXF_READ else "write" if writing else "read"
        return self._opened(path, op, lambda: super(HomeSFTPServer, self).open(path, pflags, attrs))

    def open56(self, path: bytes, desired_access: int, flags: int, attrs: asyncssh.SFTPAttrs) -> Any:
        writing = bool(desired_access & (asyncssh.ACE4_WRITE_DATA | asyncssh.ACE4_APPEND_DATA))
        reading = bool(desired_access & asyncssh.ACE4_READ_DATA)
        op = "read-write" if writing and reading else "write" if writing else "read"
        return self._opened(path, op,
                            lambda: super(HomeSFTPServer, self).open56(path, desired_access, flags, attrs))

    def read(self, file_obj: object, offset: int, size: int) -> Any:
        data = super().read(file_obj, offset, size)
        entry = self._files.get(id(file_obj))
        if entry is not None and isinstance(data, bytes):
            entry.read += len(data)
            self._state.touch()
        return data

    def write(self, file_obj: object, offset: int, data: bytes) -> Any:
        result = super().write(file_obj, offset, data)
        entry = self._files.get(id(file_obj))
        if entry is not None:
            entry.written += len(data)
            self._state.touch()
        return result

    def close(self, file_obj: object) -> Any:
        entry = self._files.pop(id(file_obj), None)
        try:
            return super().close(file_obj)
        finally:
            if entry is not None:
                self._audit("file_done", op=entry.op, path=entry.path, bytes_read=entry.read,
                            bytes_written=entry.written)

    # Changes that are not file contents: on record before they happen, like the opens.
    def remove(self, path: bytes) -> Any:
        self._audit("file", op="remove", path=_text(self.map_path(path)))
        return super().remove(path)

    def rmdir(self, path: bytes) -> Any:
        self._audit("file", op="rmdir", path=_text(self.map_path(path)))
        return super().rmdir(path)

    def mkdir(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> Any:
        self._audit("file", op="mkdir", path=_text(self.map_path(path)))
        return super().mkdir(path, attrs)

    def rename(self, oldpath: bytes, newpath: bytes) -> Any:
        self._audit("file", op="rename", path=_text(self.map_path(oldpath)), to=_text(self.map_path(newpath)))
        return super().rename(oldpath, newpath)

    def posix_rename(self, oldpath: bytes, newpath: bytes) -> Any:
        self._audit("file", op="rename", path=_text(self.map_path(oldpath)), to=_text(self.map_path(newpath)))
        return super().posix_rename(oldpath, newpath)

    def symlink(self, oldpath: bytes, newpath: bytes) -> Any:
        self._audit("file", op="symlink", path=_text(self.map_path(newpath)), to=_text(oldpath))
        return super().symlink(oldpath, newpath)

    def link(self, oldpath: bytes, newpath: bytes) -> Any:
        self._audit("file", op="link", path=_text(self.map_path(newpath)), to=_text(self.map_path(oldpath)))
        return super().link(oldpath, newpath)

    def setstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> Any:
        self._audit("file", op="setstat", path=_text(self.map_path(path)))
        return super().setstat(path, attrs)

    def exit(self) -> None:
        for entry in self._files.values():  # the client left with files open: their counts, still
            self._audit("file_done", op=entry.op, path=entry.path, bytes_read=entry.read,
                        bytes_written=entry.written, closed="by the session's end")
        self._files.clear()
        super().exit()


class _ExitingWriter(asyncssh.SSHWriter):
    """The sftp handler closes its writer when the client is done: end the channel with exit-status 0 then,
    as OpenSSH's sftp-server does by exiting."""

    def close(self) -> None:
        chan = self.channel
        if not chan.is_closing():
            chan.exit(0)
        else:
            chan.close()


class FileSession(SSHServerStreamSession):
    """An sftp subsystem or a legacy `scp -t/-f` command on one session channel (asyncssh's stream session
    machinery: bounded reads, the channel's window as backpressure)."""

    def __init__(self, state: "ConnState", scp_command: str | None = None) -> None:
        super().__init__(None)
        self._state = state
        self._scp_command = scp_command

    def session_started(self) -> None:
        chan = self._chan
        assert chan is not None and self._conn is not None
        chan.set_encoding(None)
        stdin = asyncssh.SSHReader(self, chan)
        stdout = _ExitingWriter(self, chan)
        server = HomeSFTPServer(chan, self._state, "scp" if self._scp_command else "sftp")
        if self._scp_command is not None:
            stderr = asyncssh.SSHWriter(self, chan, asyncssh.EXTENDED_DATA_STDERR)
            handler = run_scp_server(server, self._scp_command, stdin, stdout, stderr)
        else:
            handler = run_sftp_server(server, stdin, stdout, 3)
        if handler is not None:
            self._conn.create_task(handler, stdin.logger)
