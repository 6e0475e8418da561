"""Interactive sessions of `remote serve` on a real pty, driven through a real terminal (tmux running ssh):
the controlling terminal, TERM, the window size and its changes (SIGWINCH), Ctrl-C, and `ssh -tt`."""

from __future__ import annotations

import asyncio
import os

import pytest
from sshsupport import TMUX, Tmux, require_openssh, run, serving

pytestmark = pytest.mark.usefixtures("openssh")


@pytest.fixture
def openssh():
    require_openssh()
    require_openssh(TMUX)


async def test_shell_on_a_pty_in_tmux_tty_size_resize_and_ctrl_c(tmp_path):
    async with serving(tmp_path) as s:
        argv = s.ssh(flags=["-tt"], options=["SetEnv=LANG=C.UTF-8"])
        async with Tmux(argv, cols=100, rows=30, socket_dir=str(tmp_path)) as t:
            t.type("unset HISTFILE")  # the shell runs in the real home: no history written there
            # Markers computed by the remote shell ($((...))) appear only in its output, not in the echo
            # (the line is checked once its last word is on the screen: the terminal may show it in pieces)
            t.type("echo T$((40+2)) $(tty) TERM=$TERM LANG=$LANG E$((6*7))")
            screen = await t.wait_for(" E42")
            line = next(x for x in screen.splitlines() if x.startswith("T42 "))
            assert line.split()[1].startswith("/dev/pts/")
            assert "TERM=screen" in line or "TERM=tmux" in line, line
            assert "LANG=C.UTF-8" in line
            rec = await s.wait_record("shell")
            assert rec["pty"] is True and rec["term"].startswith(("screen", "tmux"))

            t.type("echo S$((1+1)) $(stty size)")
            await t.wait_for("S2 30 100")

            # A size change reaches the kernel (TIOCSWINSZ) and, through it, the foreground job (SIGWINCH)
            t.type("sh -c 'trap \"echo W\\$((3*3)); exit\" WINCH; echo R$((2+5)); while :; do sleep 0.05; done'")
            await t.wait_for("R7")
            t.resize(120, 40)
            await t.wait_for("W9")
            t.type("echo Z$((2*2)) $(stty size)")
            await t.wait_for("Z4 40 120")

            # Ctrl-C reaches the pty as ^C: the remote foreground command stops, the shell and ssh go on
            t.type("sleep 100.25; echo N$((5+5))")
            await _running(b"sleep\x00100.25\x00")  # started, or ^C would only clear the line being typed
            t.send("C-c")
            t.type("echo B$((2+3))")
            screen = await t.wait_for("B5", timeout=20)
            assert "N10" not in screen and not t.dead()

            t.type("exit 7")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while not await asyncio.to_thread(t.dead) and loop.time() < deadline:
                await asyncio.sleep(0.05)
            assert t.dead(), "ssh did not end after the remote shell's exit:\n" + t.screen()
        await s.wait_record("disconnect")


async def _running(cmdline: bytes, timeout: float = 20.0) -> None:
    """Wait until a process with exactly this command line exists (the remote end is this machine)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        if f.read() == cmdline:
                            return
                except OSError:
                    pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"no process {cmdline!r} within {timeout}s")


async def test_ssh_tt_runs_a_command_on_a_pty(tmp_path):
    async with serving(tmp_path) as s:
        res = await run(s.ssh("tty; echo $SSH_TTY; exit 5", flags=["-tt"]), input=None)
        assert res.rc == 5, res
        tty, ssh_tty = res.text.split("\r\n")[:2]
        assert tty.startswith("/dev/pts/") and ssh_tty == tty
        rec = s.records("exec")[-1]
        assert rec["pty"] is True and rec["command"] == "tty; echo $SSH_TTY; exit 5"

        # much output through the pty: every line arrives, in order, with the pty's CRLF
        res = await run(s.ssh("seq 1 200000", flags=["-tt"]), input=None, timeout=60)
        assert res.rc == 0
        lines = res.out.split(b"\r\n")
        assert lines[0] == b"1" and lines[-2] == b"200000" and len(lines) == 200001
