"""Helpers the SMTP server and sender tests share: a real server on port 0 with test settings."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

from socketkit.mail.server import MailConfig, MailServer, start

# The Received: header our server prepends (folded over several lines), to compare the rest exactly.
RECEIVED = re.compile(rb"\AReceived: from [^\r\n]*\r\n(?:\t[^\r\n]*\r\n)+")


async def check_password(user: str, password: str) -> bool:
    return (user, password) == ("alice", "secret")


@contextlib.asynccontextmanager
async def mail_server(tmp_path: Path, **options) -> AsyncIterator[MailServer]:
    config = dict(maildir=tmp_path / "mail", domains=("example.org",), hostname="mx.test",
                  authenticator=check_password, auth_failure_delay=0)
    config.update(options)
    mail = await start(MailConfig(**config), ["tcp://127.0.0.1:0"])
    try:
        yield mail
    finally:
        await mail.aclose(drain=0)
