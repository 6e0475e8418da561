"""socketkit.mail: an SMTP server that never loses an accepted message, and a small sender.

    socketkit mail --maildir ./mail --domain example.org          # receive into Maildirs
    socketkit mail --accept-all                                   # a development sink on :2525
    socketkit mail send --from a@example.org --to b@example.org --subject hi --body hello

Python: `socketkit.mail.start(MailConfig(...), listen=[...])`, `socketkit.mail.run(...)`,
`socketkit.mail.send_message(...)`; storage is `Maildir` / `MailStore` (maildir.py).
"""

from __future__ import annotations

from socketkit.mail.maildir import Maildir, MailStore
from socketkit.mail.server import MailConfig, MailServer, default_listen, run, start

__all__ = ["MailConfig", "MailServer", "MailStore", "Maildir", "default_listen", "run", "start",
           "build_message", "send_message", "send", "SendError"]


def __getattr__(name: str):  # the sender is imported on demand: a server never needs it
    if name in ("build_message", "send_message", "send", "SendError"):
        from socketkit.mail import sender

        return getattr(sender, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
