"""One SSH session channel of `remote serve`: what the client asks for (a command, a shell, with or without a
pty, sftp, scp), its audit record, and who runs it: a ProcessRunner (session_runner) or a FileSession (sftp).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import asyncssh

from socketkit.remote.session_runner import ProcessRunner
from socketkit.remote.sftp import FileSession

if TYPE_CHECKING:
    from socketkit.remote.server_conn import ConnState

_WRITE_HIGH = 128 * 1024  # channel bytes queued towards the client before the child's output is no longer read


class SessionChannel(asyncssh.SSHServerSession):
    """Decides what the session is (exec, shell, sftp, scp) from the client's requests, writes its audit
    record, then hands the channel to a ProcessRunner or a FileSession."""

    def __init__(self, state: "ConnState") -> None:
        self.state = state
        self.chan: Any = None
        self.kind = "session"
        self.command: str | None = None
        # what the client asked to run when a forced command (authorized_keys command=, a certificate's
        # force-command) runs instead: the child sees it as SSH_ORIGINAL_COMMAND, as under sshd
        self.original_command: str | None = None
        self.term: str | None = None
        self.term_size: tuple[int, int, int, int] = (80, 24, 0, 0)
        self.term_modes: dict[int, int] = {}
        self.started = time.time()
        self._runner: ProcessRunner | None = None
        self._files: FileSession | None = None

    # -- requests ------------------------------------------------------------------------------------
    def connection_made(self, chan: Any) -> None:
        self.chan = chan
        chan.set_write_buffer_limits(high=_WRITE_HIGH)
        # asyncssh puts a forced command in place of the client's before any callback of ours sees either;
        # its one step that still has both is wrapped on this channel (an instance attribute, nothing else
        # changes). Should a version rename it, SSH_ORIGINAL_COMMAND is simply not set.
        start = getattr(chan, "_start_session", None)
        if callable(start):
            def remember(command: str | None = None, subsystem: str | None = None) -> bool:
                if command is not None and _forced(chan) is not None:
                    self.original_command = command
                return start(command=command, subsystem=subsystem)

            chan._start_session = remember

    def pty_requested(self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Any) -> bool:
        self.term = term_type[:64] or "dumb"
        self.term_size = tuple(term_size)  # type: ignore[assignment]
        self.term_modes = dict(term_modes)
        return True

    def shell_requested(self) -> bool:
        self.kind = "shell"
        return True

    def exec_requested(self, command: str) -> bool:
        self.command = command
        self.kind = "scp" if command.startswith("scp ") and self.term is None else "exec"
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        if subsystem != "sftp":
            self.state.audit("refused", what="subsystem", name=subsystem[:100], reason="unknown subsystem")
            return False
        self.kind = "sftp"
        return True

    def session_started(self) -> None:
        st = self.state
        if self.kind in ("sftp", "scp"):
            st.audit(self.kind, command=self.command)
            self._files = FileSession(st, self.command if self.kind == "scp" else None)
            self._files.connection_made(self.chan)
            self._files.session_started()
            return
        extra = {"requested": self.original_command} if self.original_command is not None else {}
        st.audit(self.kind, command=self.command, pty=self.term is not None, term=self.term, **extra)
        self._runner = ProcessRunner(self)
        self._runner.start()

    # -- data and events: to whichever handles the session --------------------------------------------
    def data_received(self, data: bytes, datatype: Any) -> None:
        self.state.touch()
        if self._runner is not None:
            self._runner.input(data)
        elif self._files is not None:
            self._files.data_received(data, datatype)

    def eof_received(self) -> bool:
        if self._runner is not None:
            return self._runner.input_eof()
        if self._files is not None:
            return self._files.eof_received()
        return False

    def pause_writing(self) -> None:
        if self._runner is not None:
            self._runner.pause()
        elif self._files is not None:
            self._files.pause_writing()

    def resume_writing(self) -> None:
        if self._runner is not None:
            self._runner.resume()
        elif self._files is not None:
            self._files.resume_writing()

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        self.term_size = (width, height, pixwidth, pixheight)
        if self._runner is not None:
            self._runner.resize(width, height, pixwidth, pixheight)

    def signal_received(self, signal: str) -> None:
        if self._runner is not None:
            self._runner.signal(signal)

    def break_received(self, msec: int) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._runner is not None:
            self._runner.close()
        elif self._files is not None:
            self._files.connection_lost(exc)
        self.state.session_closed(self)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "command": self.command, "pty": self.term is not None, "term": self.term,
                "started": self.started}


def _forced(chan: Any) -> str | None:
    """The forced command of the channel's connection, where asyncssh finds it: a certificate's
    force-command first, then the key's command= option."""
    conn = chan.get_extra_info("connection")
    if conn is None:
        return None
    forced = conn.get_certificate_option("force-command")
    return forced if forced is not None else conn.get_key_option("command")
