"""The person-facing side of `socketkit peer send|receive`: print the code, ask before accepting, print
what arrived. The CLI parses arguments and calls these; everything else is in send.py / receive.py."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from socketkit.errors import PeerError
from socketkit.peer.options import PeerOptions, Result
from socketkit.peer.progress import human
from socketkit.proto.wormhole_transfer import Offer


def _code_printer(opts: PeerOptions, lan: bool) -> object:
    def show(code: str) -> None:
        other = "socketkit peer receive" + (" --lan" if lan else "")
        print(f"Wormhole code is: {code}", file=opts.out, flush=True)
        print(f"On the other computer, run:  {other} {code}", file=opts.out)
        if not lan:
            print(f"(or, with magic-wormhole:   wormhole receive {code})", file=opts.out, flush=True)
    return show


async def send_command(paths: list[str], *, text: str | None, code: str | None, words: int, options: PeerOptions,
                       lan: bool = False) -> Result:
    if text == "-":
        text = sys.stdin.read()
    show = _code_printer(options, lan)
    if lan:
        from socketkit.peer.lan import send_lan

        return await send_lan(paths, text=text, code=code, words=words, options=options, on_code=show)
    from socketkit.peer.send import send

    return await send(paths, text=text, code=code, words=words, options=options, on_code=show)


def _ask(prompt: str) -> bool:
    try:
        answer = input(prompt)
    except EOFError:
        return False
    return answer.strip().lower() in ("", "y", "yes")


async def receive_command(code: str | None, *, out_dir: str, yes: bool, overwrite: bool, options: PeerOptions,
                          lan: bool = False) -> Result:
    if code is None:
        if not sys.stdin.isatty():
            raise PeerError("no code given: pass it as an argument (e.g. socketkit peer receive 7-guitarist-revenge)")
        code = (await asyncio.to_thread(input, "Enter the wormhole code: ")).strip()
    async def confirm(offer: Offer, target: Path) -> bool:
        if yes:
            return True
        if not sys.stdin.isatty():
            raise PeerError("not asking on a terminal: pass --yes to accept the offer without a prompt")
        if offer.kind == "directory":
            what = f"directory {offer.name}/ ({offer.numfiles} files, {human(offer.numbytes)})"
        else:
            what = f"file {offer.name} ({human(offer.size)})"
        return await asyncio.to_thread(_ask, f"Receive {what} into {target.parent}? [Y/n] ")

    if lan:
        from socketkit.peer.lan import receive_lan

        result = await receive_lan(code, out_dir=out_dir, confirm=confirm, overwrite=overwrite, options=options)
    else:
        from socketkit.peer.receive import receive

        result = await receive(code, out_dir=out_dir, confirm=confirm, overwrite=overwrite, options=options)
    if result.kind == "text":
        text = result.text if result.text.endswith("\n") else result.text + "\n"
        if sys.stdout.isatty():
            text = _for_terminal(text)
        sys.stdout.buffer.write(text.encode("utf-8", "backslashreplace"))
        sys.stdout.flush()
    return result


def _for_terminal(text: str) -> str:
    """A received text shown on a terminal: control characters other than newline and tab made visible, so
    a sender cannot drive the receiver's terminal with escape sequences (piped, the text stays as sent)."""
    return "".join(c if c in "\n\t" or c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256
                   else f"\\u{ord(c):04x}" for c in text)


__all__ = ["receive_command", "send_command"]
