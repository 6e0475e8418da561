"""The process behind a command or shell session of `remote serve`: spawn it (on a pty or pipes), move bytes
both ways with backpressure, pass on window changes and signals, report how it ended.

The child's output is read through the event loop and written to the channel; when the client's window
is full (asyncssh calls pause_writing), the pty master or the pipes are no longer read, so the child blocks
on a full kernel buffer instead of the server buffering without bound. Input from the client goes the
other way with the same rule: past `_INPUT_HIGH` bytes waiting for the child, the channel stops reading
and the client's window closes.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
from typing import TYPE_CHECKING, Any

import asyncssh

from socketkit.remote import pty

if TYPE_CHECKING:
    from socketkit.remote.server_session import SessionChannel

log = logging.getLogger("socketkit.remote")

_READ = 64 * 1024
_INPUT_HIGH = 256 * 1024
_KILL_AFTER = 2.0     # seconds between the hangup of a session whose client left and SIGKILL
_PTY_LINGER = 0.5     # after the shell exits: how long to wait for its pty to hang up (background jobs hold it)
_STDERR = asyncssh.EXTENDED_DATA_STDERR


def session_env(session: "SessionChannel", tty_name: str | None) -> dict[str, str]:
    """What sshd gives a session: the account's variables, where the client came from, the terminal; from
    the client's own env requests only the locale (nothing that changes how programs run)."""
    st = session.state
    account = st.server.account
    env = {"HOME": account.home, "USER": account.name, "LOGNAME": account.name, "SHELL": account.shell,
           "PATH": account.path, "MAIL": f"/var/mail/{account.name}",
           "SSH_CLIENT": f"{st.peer_ip} {st.peer_port} {st.local_port}",
           "SSH_CONNECTION": f"{st.peer_ip} {st.peer_port} {st.local_ip} {st.local_port}"}
    try:
        client_env = session.chan.get_environment()
    except (UnicodeDecodeError, ValueError):
        client_env = {}
    for name, value in client_env.items():
        if (name == "LANG" or name.startswith("LC_")) and len(value) <= 256 and "\0" not in value:
            env[name] = value
    if session.original_command is not None:
        env["SSH_ORIGINAL_COMMAND"] = session.original_command
    if tty_name is not None:
        env["TERM"] = session.term or "dumb"
        env["SSH_TTY"] = tty_name
    return env


class ProcessRunner:
    """A command or shell for one session: spawn, pump bytes both ways with backpressure, report the exit."""

    def __init__(self, session: "SessionChannel") -> None:
        self.session = session
        self.chan = session.chan
        self.loop = asyncio.get_running_loop()
        self.reaper: pty.Reaper | None = None
        self.master: int | None = None          # pty: one fd both ways
        self.stdin: int | None = None           # pipes
        self.outputs: dict[int, Any] = {}       # fd still open for reading -> channel datatype
        self._reading: set[int] = set()
        self._paused = False
        self._inbuf = bytearray()
        self._input_paused = False
        self._input_eof = False
        self._finished = False
        self._linger: asyncio.TimerHandle | None = None
        self._kill: asyncio.TimerHandle | None = None

    # -- start ---------------------------------------------------------------------------------------
    def start(self) -> None:
        s = self.session
        account = s.state.server.account
        if s.kind == "shell":
            argv = ["-" + os.path.basename(account.shell)]  # a login shell, as sshd starts it
        else:
            argv = [os.path.basename(account.shell), "-c", s.command or ""]
        cwd = account.home if os.path.isdir(account.home) else "/"
        slave = None
        try:
            if s.term is not None:
                self.master, slave, tty_name = pty.open_pty(s.term_size, s.term_modes)
                proc, _ = pty.spawn(account.shell, argv, session_env(s, tty_name), cwd, tty=slave)
                self.outputs[self.master] = None
            else:
                proc, fds = pty.spawn(account.shell, argv, session_env(s, None), cwd)
                assert fds is not None
                self.stdin, out, err = fds
                self.outputs[out] = None
                self.outputs[err] = _STDERR
        except Exception as e:  # noqa: BLE001 - the client hears why, the server goes on
            s.state.log_event("spawn failed", error=str(e))
            self._close_fds()
            self._fail(f"socketkit remote: cannot start {account.shell}: {e}\r\n".encode())
            return
        finally:
            if slave is not None:
                os.close(slave)  # the child has it; ours would keep the pty from hanging up
        if cwd != account.home:
            self._write(f"Could not chdir to home directory {account.home}\r\n".encode(), _STDERR)
        self.reaper = pty.Reaper(proc, self._exited)
        s.state.server.children.add(self.reaper)
        self._update_readers()

    def _fail(self, message: bytes) -> None:
        self._finished = True
        try:
            self.chan.write_stderr(message)
            self.chan.exit(127)
        except OSError:
            pass

    # -- output: child -> client ---------------------------------------------------------------------
    def _update_readers(self) -> None:
        want = set() if self._paused else set(self.outputs)
        for fd in self._reading - want:
            self.loop.remove_reader(fd)
        for fd in want - self._reading:
            self.loop.add_reader(fd, self._readable, fd)
        self._reading = want

    def _readable(self, fd: int) -> None:
        try:
            data = os.read(fd, _READ)
        except BlockingIOError:
            return
        except OSError as e:  # EIO on a pty master: every slave fd is closed
            if e.errno not in (errno.EIO, errno.EBADF):
                log.debug("read from child failed: %s", e)
            data = b""
        if data:
            self._write(data, self.outputs.get(fd))
            return
        self._close_output(fd)
        self._maybe_finish()

    def _write(self, data: bytes, datatype: Any) -> None:
        try:
            self.chan.write(data, datatype)
        except OSError:  # the channel is closing: nobody to tell
            return
        self.session.state.touch()

    def _close_output(self, fd: int) -> None:
        if fd in self._reading:
            self.loop.remove_reader(fd)
            self._reading.discard(fd)
        self.outputs.pop(fd, None)
        if fd == self.master:
            self._close_master()
        else:
            os.close(fd)

    def pause(self) -> None:
        self._paused = True
        self._update_readers()

    def resume(self) -> None:
        self._paused = False
        self._update_readers()

    # -- input: client -> child ----------------------------------------------------------------------
    def input(self, data: bytes) -> None:
        fd = self.master if self.master is not None else self.stdin
        if fd is None or self._input_eof:
            return  # the child closed its input: the rest is dropped, as a closed pipe would
        self._inbuf += data
        self._flush_input()

    def _flush_input(self) -> None:
        fd = self.master if self.master is not None else self.stdin
        while self._inbuf and fd is not None:
            try:
                n = os.write(fd, self._inbuf[:_READ])
            except BlockingIOError:
                break
            except OSError:  # EPIPE/EIO: the child stopped reading for good
                self._inbuf.clear()
                self._drop_stdin()
                break
            del self._inbuf[:n]
        fd = self.master if self.master is not None else self.stdin
        if fd is not None:
            if self._inbuf:
                self.loop.add_writer(fd, self._flush_input)
            else:
                self.loop.remove_writer(fd)
        if not self._inbuf and self._input_eof and self.stdin is not None:
            self._drop_stdin()
        elif len(self._inbuf) >= _INPUT_HIGH and not self._input_paused:
            self._input_paused = True
            self.chan.pause_reading()
        elif self._input_paused and len(self._inbuf) < _INPUT_HIGH // 2:
            # Last: resuming delivers what the channel held back at once, into input() and back here.
            self._input_paused = False
            self.chan.resume_reading()

    def input_eof(self) -> bool:
        # A pipe gets its EOF once what came before it is written; a pty has no half-close (sshd leaves it
        # open too: the shell ends when the user says so, ^D included).
        if self.master is None:
            self._input_eof = True
            if not self._inbuf:
                self._drop_stdin()
        return True  # our side of the channel stays open for the output and the exit status

    def _drop_stdin(self) -> None:
        if self.stdin is not None:
            self.loop.remove_writer(self.stdin)
            os.close(self.stdin)
            self.stdin = None
        if self._input_paused:  # what still comes is dropped (input() sees no fd): let it come
            self._input_paused = False
            try:
                self.chan.resume_reading()
            except Exception:  # noqa: BLE001 - the channel may be gone already
                pass

    # -- control -------------------------------------------------------------------------------------
    def resize(self, cols: int, rows: int, xpix: int, ypix: int) -> None:
        if self.master is not None:
            try:
                pty.set_size(self.master, cols, rows, xpix, ypix)
            except OSError:
                pass

    def signal(self, name: str) -> None:
        number = pty.signal_number(name)
        if number is not None and self.reaper is not None and self.reaper.alive:
            self.session.state.audit("signal", signal=name)
            self.reaper.kill_group(number)

    # -- the end -------------------------------------------------------------------------------------
    def _exited(self, status: int) -> None:
        self.session.state.server.children.discard(self.reaper)
        if self._kill is not None:
            self._kill.cancel()
            self._kill = None
        if self.master is not None and not self._finished:
            # Its last output may still sit in the pty; a background job may hold the pty open forever.
            self._linger = self.loop.call_later(_PTY_LINGER, self._stop_lingering)
        self._maybe_finish()

    def _stop_lingering(self) -> None:
        self._linger = None
        if self.master is not None:
            for _ in range(64):  # what the pty holds, even if the client's window is full: bounded
                try:
                    data = os.read(self.master, _READ)
                except OSError:
                    break
                if not data:
                    break
                self._write(data, None)
            self._close_output(self.master)
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self._finished or self.reaper is None or self.reaper.status is None or self.outputs:
            return
        self._finished = True
        status = self.reaper.status
        self._close_fds()
        try:
            if os.WIFSIGNALED(status):
                self.chan.exit_with_signal(pty.signal_name(os.WTERMSIG(status)), os.WCOREDUMP(status))
            else:
                self.chan.exit(os.waitstatus_to_exitcode(status))
        except OSError:
            pass

    def close(self) -> None:
        """The channel is gone (the client closed it or disconnected): hang up the child's process group
        (also what is left of it when the shell itself has ended, e.g. a job holding the output open), and
        kill the shell if it is still there a moment later."""
        ended = self._finished
        self._finished = True
        self._close_fds()
        reaper = self.reaper
        if reaper is None or ended:
            return
        reaper.kill_group(signal.SIGHUP)  # the group outlives its leader: its id is not reused meanwhile
        reaper.kill_group(signal.SIGCONT)
        if reaper.alive:
            self._kill = self.loop.call_later(_KILL_AFTER, reaper.kill_group, signal.SIGKILL)

    def _close_master(self) -> None:
        if self.master is not None:
            self.loop.remove_writer(self.master)
            os.close(self.master)
            self.master = None

    def _close_fds(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        for fd in list(self.outputs):
            self._close_output(fd)
        self._close_master()
        self._drop_stdin()
        self._inbuf.clear()
