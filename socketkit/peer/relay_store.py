"""The relay's SQLite file (`peer-relay.db` in the data directory): the mailbox server's nameplates,
mailboxes and messages, so that a restart loses no channel (as the reference's `relay.sqlite`), and the
usage summaries of ended channels and transit pairs.

The mailbox protocol keeps its state in memory (`proto.wormhole_channels`) and hands over a journal of
what changed after each message; `apply()` writes that journal in one transaction, before the answers go
out. WAL with synchronous=NORMAL: a power cut may lose the last transactions, never corrupt the file.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from socketkit.errors import SocketkitError
from socketkit.proto.wormhole_channels import Changes, Mailbox, Message, Nameplate, Side, Usage

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS nameplates (
    app_id TEXT NOT NULL, name TEXT NOT NULL, mailbox_id TEXT NOT NULL, owner TEXT NOT NULL,
    PRIMARY KEY (app_id, name));
CREATE TABLE IF NOT EXISTS nameplate_sides (
    app_id TEXT NOT NULL, name TEXT NOT NULL, side TEXT NOT NULL, claimed INTEGER NOT NULL, added REAL NOT NULL,
    PRIMARY KEY (app_id, name, side));
CREATE TABLE IF NOT EXISTS mailboxes (
    app_id TEXT NOT NULL, id TEXT NOT NULL, for_nameplate INTEGER NOT NULL, updated REAL NOT NULL,
    owner TEXT NOT NULL, PRIMARY KEY (app_id, id));
CREATE TABLE IF NOT EXISTS mailbox_sides (
    app_id TEXT NOT NULL, mailbox_id TEXT NOT NULL, side TEXT NOT NULL, opened INTEGER NOT NULL,
    added REAL NOT NULL, mood TEXT, PRIMARY KEY (app_id, mailbox_id, side));
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, app_id TEXT NOT NULL, mailbox_id TEXT NOT NULL, side TEXT NOT NULL,
    phase TEXT NOT NULL, body TEXT NOT NULL, server_rx REAL NOT NULL, msg_id TEXT);
CREATE INDEX IF NOT EXISTS messages_by_mailbox ON messages (app_id, mailbox_id);
CREATE TABLE IF NOT EXISTS usage (
    kind TEXT NOT NULL, app_id TEXT NOT NULL, started REAL NOT NULL, waiting_time REAL, total_time REAL NOT NULL,
    total_bytes INTEGER, result TEXT NOT NULL);
"""


class RelayStoreError(SocketkitError):
    """The relay's database could not be opened or read."""


class RelayStore:
    """One SQLite connection, used from the event loop's thread only (each write is a small transaction)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RelayStoreError(f"{self.path} was written by a newer socketkit (schema {version})")
            self.db.executescript(_SCHEMA)
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as e:
            raise RelayStoreError(f"cannot open the relay database {self.path}: {e}") from e

    def close(self) -> None:
        self.db.close()

    # -- reading ----------------------------------------------------------------------------------
    def load(self) -> tuple[list[Nameplate], list[Mailbox]]:
        """Every nameplate and mailbox (with sides and messages) a previous run left."""
        db = self.db
        try:
            mailboxes: dict[tuple[str, str], Mailbox] = {}
            for app, ident, for_np, updated, owner in db.execute(
                    "SELECT app_id, id, for_nameplate, updated, owner FROM mailboxes"):
                mailboxes[(app, ident)] = Mailbox(app, ident, bool(for_np), updated, owner)
            for app, ident, side, opened, added, mood in db.execute(
                    "SELECT app_id, mailbox_id, side, opened, added, mood FROM mailbox_sides"):
                mb = mailboxes.get((app, ident))
                if mb is not None:
                    mb.sides[side] = Side(bool(opened), added, mood)
            for app, ident, side, phase, body, rx, msg_id in db.execute(
                    "SELECT app_id, mailbox_id, side, phase, body, server_rx, msg_id FROM messages ORDER BY seq"):
                mb = mailboxes.get((app, ident))
                if mb is not None:
                    mb.messages.append(Message(side, phase, body, rx, _unjson(msg_id)))
            nameplates: dict[tuple[str, str], Nameplate] = {}
            for app, name, ident, owner in db.execute("SELECT app_id, name, mailbox_id, owner FROM nameplates"):
                nameplates[(app, name)] = Nameplate(app, name, ident, owner)
            for app, name, side, claimed, added in db.execute(
                    "SELECT app_id, name, side, claimed, added FROM nameplate_sides"):
                np = nameplates.get((app, name))
                if np is not None:
                    np.sides[side] = Side(bool(claimed), added)
        except sqlite3.Error as e:
            raise RelayStoreError(f"cannot read the relay database {self.path}: {e}") from e
        return list(nameplates.values()), list(mailboxes.values())

    def usage_counts(self) -> dict[str, dict[str, int]]:
        """{kind: {result: how many}} over every usage summary kept."""
        out: dict[str, dict[str, int]] = {}
        for kind, result, count in self.db.execute(
                "SELECT kind, result, COUNT(*) FROM usage GROUP BY kind, result"):
            out.setdefault(kind, {})[result] = count
        return out

    # -- writing ----------------------------------------------------------------------------------
    def apply(self, changes: Changes) -> None:
        """Write one journal of changes, all or nothing."""
        db = self.db
        db.execute("BEGIN")
        try:
            # Messages first: a mailbox deleted in the same journal then takes its messages with it.
            db.executemany(
                "INSERT INTO messages (app_id, mailbox_id, side, phase, body, server_rx, msg_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(app, ident, m.side, m.phase, m.body, m.server_rx, json.dumps(m.msg_id))
                 for app, ident, m in changes.messages])
            for (app, name), np in changes.nameplates.items():
                db.execute("DELETE FROM nameplate_sides WHERE app_id=? AND name=?", (app, name))
                db.execute("DELETE FROM nameplates WHERE app_id=? AND name=?", (app, name))
                if np is not None:
                    db.execute("INSERT INTO nameplates VALUES (?, ?, ?, ?)", (app, name, np.mailbox, np.owner))
                    db.executemany("INSERT INTO nameplate_sides VALUES (?, ?, ?, ?, ?)",
                                   [(app, name, side, s.active, s.added) for side, s in np.sides.items()])
            for (app, ident), mb in changes.mailboxes.items():
                db.execute("DELETE FROM mailbox_sides WHERE app_id=? AND mailbox_id=?", (app, ident))
                db.execute("DELETE FROM mailboxes WHERE app_id=? AND id=?", (app, ident))
                if mb is None:
                    db.execute("DELETE FROM messages WHERE app_id=? AND mailbox_id=?", (app, ident))
                    continue
                db.execute("INSERT INTO mailboxes VALUES (?, ?, ?, ?, ?)",
                           (app, ident, mb.for_nameplate, mb.updated, mb.owner))
                db.executemany("INSERT INTO mailbox_sides VALUES (?, ?, ?, ?, ?, ?)",
                               [(app, ident, side, s.active, s.added, s.mood) for side, s in mb.sides.items()])
            self._usage(changes.usage)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def record(self, usage: list[Usage]) -> None:
        if usage:
            db = self.db
            db.execute("BEGIN")
            try:
                self._usage(usage)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def trim_usage(self, keep: int) -> None:
        """Keep only the newest `keep` usage summaries: a busy public server must not grow the file forever."""
        self.db.execute("DELETE FROM usage WHERE rowid <= (SELECT MAX(rowid) FROM usage) - ?", (keep,))

    def _usage(self, usage: list[Usage]) -> None:
        self.db.executemany(
            "INSERT INTO usage (kind, app_id, started, waiting_time, total_time, total_bytes, result)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(u.kind, u.app, u.started, u.waiting_time, u.total_time, u.total_bytes, u.result) for u in usage])


def _unjson(text: str | None) -> object:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text
