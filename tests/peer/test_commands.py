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
