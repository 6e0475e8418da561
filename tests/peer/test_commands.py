"""What a person sees from `socketkit peer receive`: a received text cannot drive their terminal."""

from __future__ import annotations

from socketkit.peer.commands import _for_terminal


def test_escape_sequences_in_a_received_text_are_shown_not_obeyed():
    shown = _for_terminal("hi\x1b[31mred\x07\nnext\tline\u202eevil\r\n")
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown and "\r" not in shown
    assert shown == "hi\\x1b[31mred\\x07\nnext\tline\\u202eevil\\x0d\n"


def test_ordinary_text_is_unchanged():
    text = "Grüße, 日本語 ✓\nzweite Zeile\n"
    assert _for_terminal(text) == text


def test_a_terminal_gets_a_progress_bar_and_a_pipe_one_line(servers, tmp_path):
    """stderr on a pseudo-terminal: tqdm's bar (percent, rate); on a pipe: one quiet line with the sha256."""
    import os
    import pty
    import subprocess
    import sys

    from wormhole_support import finish, socketkit

    mailbox, relay = servers
    payload = tmp_path / "video.bin"
    payload.write_bytes(os.urandom(4_000_000))
    flags = ["--mailbox", mailbox, "--transit-relay", relay, "--advertise", "127.0.0.1", "--timeout", "20"]
    main, sub = pty.openpty()
    sender = None
    try:
        sender = subprocess.Popen([sys.executable, "-m", "socketkit", "peer", "send", str(payload), "--code",
                                   "91-bar-test", *flags], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=sub, env=dict(os.environ, COLUMNS="100"))
        os.close(sub)
        sub = -1
        out = tmp_path / "out"
        out.mkdir()
        rc, _, err = finish(socketkit("peer", "receive", "91-bar-test", "--yes", "--out", str(out), *flags,
                                      cwd=tmp_path))
        assert rc == 0, err
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines[-1].startswith("received video.bin (4.0 MB) in ") and "sha256 " in lines[-1]
        assert "%|" not in err  # no bar on a pipe
        assert sender.wait(30) == 0
        seen = b""
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        text = seen.decode(errors="replace")
        assert "100%|" in text and "MB/s" in text, text[-500:]
    finally:
        if sender is not None and sender.poll() is None:  # a failure above: no sender left waiting for an hour
            sender.kill()
            sender.wait(10)
        os.close(main)
        if sub >= 0:
            os.close(sub)
