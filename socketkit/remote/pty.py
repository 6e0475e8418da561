"""Child processes for remote sessions: a real pseudo-terminal (the child's controlling terminal, with the
client's modes and window size) or three pipes; reaping without a thread (pidfd) and process-group kills.

What sshd does for a session, in the same order: a new session (setsid), the pty's slave as fds 0-2 and as
the controlling terminal (TIOCSCTTY), signal dispositions and mask back to their defaults (a server started
from a shell that ignores SIGINT must not hand that on: Ctrl-C would stop working), the home directory as
the working directory, then exec of the user's shell.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import struct
import subprocess
import termios
import threading
from collections.abc import Callable, Mapping, Sequence

log = logging.getLogger("socketkit.remote")

# RFC 4254 section 8 (and RFC 8160's IUTF8): opcode -> (termios field, flag or control character name)
_CC = {1: "VINTR", 2: "VQUIT", 3: "VERASE", 4: "VKILL", 5: "VEOF", 6: "VEOL", 7: "VEOL2", 8: "VSTART",
       9: "VSTOP", 10: "VSUSP", 11: "VDSUSP", 12: "VREPRINT", 13: "VWERASE", 14: "VLNEXT", 15: "VFLUSH",
       16: "VSWTCH", 17: "VSTATUS", 18: "VDISCARD"}
_FLAGS = {  # opcode -> (index in tcgetattr's list, flag name)
    30: (0, "IGNPAR"), 31: (0, "PARMRK"), 32: (0, "INPCK"), 33: (0, "ISTRIP"), 34: (0, "INLCR"),
    35: (0, "IGNCR"), 36: (0, "ICRNL"), 37: (0, "IUCLC"), 38: (0, "IXON"), 39: (0, "IXANY"), 40: (0, "IXOFF"),
    41: (0, "IMAXBEL"), 42: (0, "IUTF8"),
    50: (3, "ISIG"), 51: (3, "ICANON"), 52: (3, "XCASE"), 53: (3, "ECHO"), 54: (3, "ECHOE"), 55: (3, "ECHOK"),
    56: (3, "ECHONL"), 57: (3, "NOFLSH"), 58: (3, "TOSTOP"), 59: (3, "IEXTEN"), 60: (3, "ECHOCTL"),
    61: (3, "ECHOKE"), 62: (3, "PENDIN"),
    70: (1, "OPOST"), 71: (1, "OLCUC"), 72: (1, "ONLCR"), 73: (1, "OCRNL"), 74: (1, "ONOCR"), 75: (1, "ONLRET"),
    90: (2, "CS7"), 91: (2, "CS8"), 92: (2, "PARENB"), 93: (2, "PARODD"),
}
_ISPEED, _OSPEED = 128, 129
_RESET = tuple(s for s in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTERM, signal.SIGPIPE,
                           signal.SIGCHLD, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGWINCH,
                           signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM))


def apply_modes(fd: int, modes: Mapping[int, int]) -> None:
    """Apply the client's terminal modes (the pty-req's encoded modes) to a terminal; unknown ones are
    skipped, as OpenSSH does."""
    if not modes:
        return
    attrs = termios.tcgetattr(fd)
    for op, value in modes.items():
        if op in _CC:
            index = getattr(termios, _CC[op], None)
            if index is not None and index < len(attrs[6]):
                attrs[6][index] = bytes([0 if value == 255 else value & 0xFF])  # 255: disabled
        elif op in _FLAGS:
            field, name = _FLAGS[op]
            flag = getattr(termios, name, None)
            if flag is None:
                continue
            if name in ("CS7", "CS8"):
                if value:
                    attrs[2] = (attrs[2] & ~termios.CSIZE) | flag
            elif value:
                attrs[field] |= flag
            else:
                attrs[field] &= ~flag
        elif op in (_ISPEED, _OSPEED):
            speed = getattr(termios, f"B{value}", None)
            if speed is not None:
                attrs[4 if op == _ISPEED else 5] = speed
    try:
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
    except termios.error as e:  # a mode this kernel rejects: keep the defaults rather than fail the session
        log.debug("terminal modes not applied: %s", e)


def set_size(fd: int, cols: int, rows: int, xpixels: int = 0, ypixels: int = 0) -> None:
    """TIOCSWINSZ: the kernel sends SIGWINCH to the terminal's foreground process group on a change."""
    clamp = [max(0, min(int(v), 0xFFFF)) for v in (rows, cols, xpixels, ypixels)]
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", *clamp))


def open_pty(size: Sequence[int], modes: Mapping[int, int]) -> tuple[int, int, str]:
    """(master, slave, slave's name), both non-inheritable; the master non-blocking."""
    master, slave = os.openpty()
    try:
        os.set_blocking(master, False)
        apply_modes(slave, modes)
        cols, rows, xpix, ypix = (list(size) + [0, 0, 0, 0])[:4]
        set_size(slave, cols or 80, rows or 24, xpix, ypix)
        name = os.ttyname(slave)
    except BaseException:
        os.close(master)
        os.close(slave)
        raise
    return master, slave, name


def _child_defaults() -> None:
    for sig in _RESET:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def _child_tty() -> None:
    _child_defaults()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # fd 0 is the slave; setsid() already ran (start_new_session)


def spawn(program: str, argv: Sequence[str], env: Mapping[str, str], cwd: str, *, tty: int | None = None
          ) -> tuple[subprocess.Popen[bytes], tuple[int, int, int] | None]:
    """Start `argv` (argv[0] may differ from `program`, as for a login shell's "-bash") in a new session.

    With `tty` (a pty's slave): fds 0-2 are the terminal and it is the controlling one; returns (proc, None).
    Without: three pipes; returns (proc, (stdin's write end, stdout's read end, stderr's read end)), all
    non-blocking.
    """
    if tty is not None:
        proc = subprocess.Popen(list(argv), executable=program, stdin=tty, stdout=tty, stderr=tty, cwd=cwd,
                                env=dict(env), start_new_session=True, preexec_fn=_child_tty)
        return proc, None
    r0, w0 = os.pipe()
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    try:
        proc = subprocess.Popen(list(argv), executable=program, stdin=r0, stdout=w1, stderr=w2, cwd=cwd,
                                env=dict(env), start_new_session=True, preexec_fn=_child_defaults)
    except BaseException:
        for fd in (w0, r1, r2):
            os.close(fd)
        raise
    finally:
        for fd in (r0, w1, w2):
            os.close(fd)
    for fd in (w0, r1, r2):
        os.set_blocking(fd, False)
    return proc, (w0, r1, r2)


class Reaper:
    """Calls `on_exit(wait status)` in the event loop once `proc` ends: a pidfd watched by the loop (Linux
    5.3+), else a thread blocked in waitpid. The raw status keeps the core-dump bit that Popen drops."""

    def __init__(self, proc: subprocess.Popen[bytes], on_exit: Callable[[int], None]) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.status: int | None = None
        self._on_exit = on_exit
        self._loop = asyncio.get_running_loop()
        self._pidfd: int | None = None
        try:
            self._pidfd = os.pidfd_open(self.pid)
            self._loop.add_reader(self._pidfd, self._poll)
        except (AttributeError, OSError, NotImplementedError):
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
            threading.Thread(target=self._wait_thread, name=f"socketkit reap {self.pid}", daemon=True).start()

    @property
    def alive(self) -> bool:
        return self.status is None

    def _poll(self) -> None:
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, 255 << 8
        if pid:
            self._done(status)

    def _wait_thread(self) -> None:
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            status = 255 << 8
        try:
            self._loop.call_soon_threadsafe(self._done, status)
        except RuntimeError:  # the loop is gone: nobody is waiting any more
            pass

    def _done(self, status: int) -> None:
        if self.status is not None:
            return
        self.status = status
        self.proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait for it again
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        self._on_exit(status)

    def kill_group(self, sig: int) -> None:
        """Signal the child's whole process group (its session: setsid made pgid == pid)."""
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def signal_number(name: str) -> int | None:
    """An SSH signal name ("INT", "TERM", ...) -> its number, or None for names we do not pass on."""
    if not name.isalnum() or not name.isupper():
        return None
    value = getattr(signal, "SIG" + name, None)
    return int(value) if isinstance(value, int) else None


def signal_name(number: int) -> str:
    """A signal number -> the name SSH uses in exit-signal ("TERM", not "SIGTERM")."""
    try:
        return signal.Signals(number).name.removeprefix("SIG")
    except ValueError:
        return f"SIG{number}"
