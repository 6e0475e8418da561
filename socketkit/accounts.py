"""The one account store every service that authenticates uses (mail AUTH, chat SASL, later remote).

Accounts live in SQLite at `data_dir()/accounts.db`: WAL mode so readers never wait for a writer, a
busy timeout so several processes (`socketkit up`, `socketkit user add` in another terminal) can share
it, the file created with mode 0600 from the first byte. Passwords are hashed with scrypt, a
memory-hard KDF, and stored as `scrypt$n$r$p$salt_b64$hash_b64`, so the parameters can be raised later:
a verify uses the parameters stored with the hash, and a successful verify of an old hash rewrites it
with the current ones.

A verify costs one KDF run (~40 ms, 16 MiB) whether or not the account exists, so timing does not tell
an attacker which names are taken. Servers call `verify_async` so that run happens off the event loop,
and put a `LoginLimiter` in front of it against password guessing.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import dataclasses
import hashlib
import hmac
import logging
import os
import random
import re
import secrets
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path

from socketkit.errors import SocketkitError

log = logging.getLogger("socketkit.accounts")

SCHEMA_VERSION = 1
DB_NAME = "accounts.db"
BUSY_TIMEOUT = 10.0  # seconds a writer waits for another process's transaction

# n=2**14, r=8 needs 16 MiB and took ~40 ms per verify on the development machine: slow and
# memory-hungry for a guesser, still quick enough that a login does not feel it.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
# Bounds on parameters read back from the database, so a tampered row cannot make us allocate gigabytes.
_MAX_N, _MAX_R, _MAX_P = 2**20, 32, 16

NAME_MAX = 64
PASSWORD_MIN = 8
PASSWORD_MAX = 1024
EMAIL_MAX = 254
_NAME_RE = re.compile(rf"[A-Za-z0-9._@+\-]{{1,{NAME_MAX}}}")
NAME_RULE = f"1 to {NAME_MAX} characters from A-Z a-z 0-9 . _ - @ +"


class AccountError(SocketkitError):
    """An account operation failed: a bad name or password, a missing account, an unusable database."""


class AccountExistsError(AccountError):
    """`add` was given a name that is taken (names are compared case-insensitively)."""


class AccountNotFoundError(AccountError):
    """The named account does not exist."""


@dataclasses.dataclass(frozen=True)
class Account:
    name: str  # as it was spelled when added; lookups ignore case
    email: str | None
    created_at: float  # Unix time
    disabled: bool = False


# -- names and passwords ----------------------------------------------------------------------------
def name_key(name: str) -> str:
    """The case-insensitive key of a valid account name (also a good `LoginLimiter` key)."""
    check_name(name)
    return name.casefold()


def check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        shown = repr(name) if isinstance(name, str) and len(name) <= 80 else "given"
        raise AccountError(f"account name {shown} is not allowed: names are {NAME_RULE}")
    return name


def check_password(password: object) -> str:
    """The password, NFC-normalised (so the same text typed on different systems matches)."""
    if not isinstance(password, str):
        raise AccountError("password must be text")
    password = unicodedata.normalize("NFC", password)
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise AccountError(f"password must be {PASSWORD_MIN} to {PASSWORD_MAX} characters "
                           f"(this one has {len(password)})")
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        raise AccountError("password is not valid text (it holds unpaired surrogates)") from None
    if "\x00" in password:
        raise AccountError("password must not contain NUL characters (SASL PLAIN cannot carry them)")
    return password


def _check_email(email: str | None) -> str | None:
    if email is None or email == "":
        return None
    if (not isinstance(email, str) or len(email) > EMAIL_MAX or email.count("@") != 1
            or any(c.isspace() or not c.isprintable() for c in email) or email.startswith("@")
            or email.endswith("@")):
        raise AccountError(f"email address {email!r} is not valid (one @, no spaces, at most {EMAIL_MAX} chars)")
    return email


# -- password hashes --------------------------------------------------------------------------------
def _kdf(password: bytes, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    # hashlib.scrypt is looked up on each call (not imported by name) so tests can count the runs.
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=dklen,
                          maxmem=128 * r * (n + p + 2) + 1024 * 1024)


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """A self-describing scrypt hash of `password`: `scrypt$n$r$p$salt_b64$hash_b64`."""
    password = check_password(password)
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _kdf(password.encode(), salt, n, r, p, HASH_BYTES)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _parse_hash(stored: str) -> tuple[int, int, int, bytes, bytes] | None:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return None
        n_, r_, p_ = int(n), int(r), int(p)
        if not (1 < n_ <= _MAX_N and n_ & (n_ - 1) == 0 and 0 < r_ <= _MAX_R and 0 < p_ <= _MAX_P):
            return None
        return n_, r_, p_, base64.b64decode(salt, validate=True), base64.b64decode(digest, validate=True)
    except (ValueError, AttributeError):
        return None


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches `stored`, using the parameters stored with the hash."""
    parsed = _parse_hash(stored)
    if parsed is None:
        log.warning("unusable password hash in the account store (not scrypt$n$r$p$salt$hash)")
        _kdf(b"", b"\0" * SALT_BYTES, SCRYPT_N, SCRYPT_R, SCRYPT_P, HASH_BYTES)  # same cost as a real one
        return False
    n, r, p, salt, digest = parsed
    if not isinstance(password, str):
        password = ""
    # An over-long password never matches (no account can have one) but costs the same KDF run; it is
    # cut only to bound the work of normalising and hashing it.
    password = unicodedata.normalize("NFC", password[:4 * PASSWORD_MAX])
    too_long = len(password) > PASSWORD_MAX
    candidate = _kdf(password[:PASSWORD_MAX].encode("utf-8", "replace"), salt, n, r, p, len(digest) or HASH_BYTES)
    return hmac.compare_digest(candidate, digest) and not too_long


def needs_rehash(stored: str) -> bool:
    """True when `stored` was made with other parameters than the current ones (or is unusable)."""
    parsed = _parse_hash(stored)
    return parsed is None or parsed[:3] != (SCRYPT_N, SCRYPT_R, SCRYPT_P) or len(parsed[4]) != HASH_BYTES


def _dummy_hash() -> str:
    # Random salt and digest with the current parameters: verifying against it costs exactly what a real
    # verify costs and never succeeds. Nothing to precompute.
    return (f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}$"
            f"{_b64(secrets.token_bytes(SALT_BYTES))}${_b64(secrets.token_bytes(HASH_BYTES))}")


# -- the store --------------------------------------------------------------------------------------
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (
    key TEXT PRIMARY KEY,          -- casefolded name: what makes names unique
    name TEXT NOT NULL,            -- as spelled when added
    email TEXT,
    password TEXT NOT NULL,        -- scrypt$n$r$p$salt_b64$hash_b64
    created_at REAL NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0
);
"""
# version -> SQL that upgrades a database from the version before it (none yet).
_MIGRATIONS: dict[int, str] = {}


def default_path() -> Path:
    from socketkit.net.certs import data_dir

    return data_dir() / DB_NAME


class AccountStore:
    """Accounts in one SQLite file, shared safely by threads (one connection behind a lock) and
    processes (WAL + busy timeout). The slow part, the KDF, runs outside the lock."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        if path is None:
            self.path = default_path()
        else:
            self.path = Path(path).expanduser()
            try:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise AccountError(f"cannot create directory {str(self.path.parent)!r}: "
                                   f"{exc.strerror or exc}") from exc
        self._lock = threading.Lock()
        try:
            # Create the file ourselves so it is 0600 from the first byte; SQLite gives its -wal and
            # -shm files the same mode as the database.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as exc:
            raise AccountError(f"cannot open accounts database {str(self.path)!r}: "
                               f"{exc.strerror or exc}") from exc
        with self._db():
            self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None,
                                         check_same_thread=False)
            try:
                self._setup()
            except BaseException:
                self._conn.close()
                raise

    def _setup(self) -> None:
        c = self._conn
        c.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        # Switching a fresh database to WAL needs an exclusive lock, and SQLite may answer "locked"
        # at once (without its busy handler) while another process does the same: retry, bounded.
        for attempt in range(100):
            try:
                c.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 99:
                    raise
                time.sleep(0.02 + random.random() * 0.03)
        c.execute("PRAGMA secure_delete = ON")  # a deleted account's hash does not linger in free pages
        with self._transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    c.execute(statement)
            row = c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise AccountError(f"accounts database {str(self.path)!r} has schema version {version}, "
                                   f"newer than this socketkit understands ({SCHEMA_VERSION}); upgrade socketkit")
            for v in range(max(version, 1) + 1, SCHEMA_VERSION + 1):
                c.execute(_MIGRATIONS[v])
            c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                      (str(SCHEMA_VERSION),))

    @contextlib.contextmanager
    def _db(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise AccountError(f"accounts database {str(self.path)!r}: {exc}") from exc

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front, so two writers queue on the busy timeout
        # instead of deadlocking when both try to upgrade a read lock.
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> AccountStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AccountStore({str(self.path)!r})"

    # -- reading ------------------------------------------------------------------------------------
    def _row(self, key: str) -> tuple | None:
        with self._lock, self._db():
            return self._conn.execute(
                "SELECT name, email, created_at, disabled, password FROM accounts WHERE key = ?", (key,)
            ).fetchone()

    @staticmethod
    def _account(row: tuple) -> Account:
        return Account(name=row[0], email=row[1], created_at=row[2], disabled=bool(row[3]))

    def get(self, name: str) -> Account | None:
        row = self._row(name_key(name))
        return self._account(row) if row else None

    def list(self) -> builtins.list[Account]:
        with self._lock, self._db():
            rows = self._conn.execute(
                "SELECT name, email, created_at, disabled FROM accounts ORDER BY key").fetchall()
        return [self._account(row) for row in rows]

    def verify(self, name: str, password: str) -> Account | None:
        """The account when `password` is right for the enabled account `name`, else None.

        Every call runs the KDF once, also for unknown, invalid or disabled names, so the time taken
        does not reveal which names exist. Blocks for one KDF run: servers use `verify_async`."""
        try:
            key = name_key(name)
        except AccountError:
            row = None
        else:
            row = self._row(key)
        if not verify_password(password, row[4] if row else _dummy_hash()) or row is None or row[3]:
            return None
        if needs_rehash(row[4]):
            self._rehash(key, row[4], password)
        return self._account(row)

    def _rehash(self, key: str, old: str, password: str) -> None:
        try:
            new = hash_password(password)
        except AccountError:  # an old password that breaks today's rules: keep the old hash
            return
        with self._lock, self._db():
            self._conn.execute("UPDATE accounts SET password = ? WHERE key = ? AND password = ?",
                               (new, key, old))

    # -- writing ------------------------------------------------------------------------------------
    def add(self, name: str, password: str, *, email: str | None = None) -> Account:
        key = name_key(name)
        email = _check_email(email)
        hashed = hash_password(password)  # validates the password; slow, so outside the lock
        account = Account(name=name, email=email, created_at=time.time(), disabled=False)
        with self._lock, self._db():
            try:
                self._conn.execute(
                    "INSERT INTO accounts (key, name, email, password, created_at, disabled) "
                    "VALUES (?, ?, ?, ?, ?, 0)", (key, name, email, hashed, account.created_at))
            except sqlite3.IntegrityError:
                raise AccountExistsError(f"account {name!r} already exists (names ignore case)") from None
        log.info("account %s added", name)
        return account

    def _update(self, name: str, sql: str, params: tuple) -> None:
        key = name_key(name)
        with self._lock, self._db():
            cur = self._conn.execute(sql, (*params, key))
        if cur.rowcount == 0:
            raise AccountNotFoundError(f"no account named {name!r}")

    def set_password(self, name: str, password: str) -> None:
        name_key(name)
        self._update(name, "UPDATE accounts SET password = ? WHERE key = ?", (hash_password(password),))
        log.info("password of account %s changed", name)

    def set_email(self, name: str, email: str | None) -> None:
        self._update(name, "UPDATE accounts SET email = ? WHERE key = ?", (_check_email(email),))

    def set_disabled(self, name: str, disabled: bool = True) -> None:
        """A disabled account stays in the store but never verifies."""
        self._update(name, "UPDATE accounts SET disabled = ? WHERE key = ?", (int(bool(disabled)),))

    def delete(self, name: str) -> None:
        self._update(name, "DELETE FROM accounts WHERE key = ?", ())
        log.info("account %s deleted", name)


async def verify_async(store: AccountStore, name: str, password: str) -> Account | None:
    """`store.verify` in a worker thread, so the event loop keeps serving during the KDF run."""
    return await asyncio.to_thread(store.verify, name, password)


# -- brute-force limiter ----------------------------------------------------------------------------
class LoginLimiter:
    """Failed logins per key (an account's `name_key`, a peer address, ...) as a token bucket.

    Each key may fail `max_failures` times in a burst; after that one more attempt is allowed every
    `per_seconds / max_failures` seconds, so guessing runs at most `max_failures` per `per_seconds`.
    A success forgives the key. In memory, per process; at most `max_keys` keys are remembered.
    """

    def __init__(self, max_failures: int = 5, per_seconds: float = 60.0, *, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_failures < 1 or per_seconds <= 0 or max_keys < 1:
            raise ValueError("LoginLimiter needs max_failures >= 1, per_seconds > 0 and max_keys >= 1")
        self.max_failures = max_failures
        self.per_seconds = per_seconds
        self.max_keys = max_keys
        self._rate = max_failures / per_seconds  # tokens regained per second
        self._clock = clock
        self._buckets: dict[Hashable, tuple[float, float]] = {}  # key -> (tokens, when counted)
        self._lock = threading.Lock()

    def _tokens(self, key: Hashable, now: float) -> float:
        bucket = self._buckets.get(key)
        if bucket is None:
            return float(self.max_failures)
        return min(float(self.max_failures), bucket[0] + (now - bucket[1]) * self._rate)

    def allowed(self, key: Hashable) -> bool:
        with self._lock:
            return self._tokens(key, self._clock()) >= 1.0

    def retry_after(self, key: Hashable) -> float:
        """Seconds until `key` is allowed again (0.0 when it is allowed now)."""
        with self._lock:
            tokens = self._tokens(key, self._clock())
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self._rate

    def failed(self, key: Hashable) -> None:
        with self._lock:
            now = self._clock()
            tokens = max(0.0, self._tokens(key, now) - 1.0)
            self._buckets.pop(key, None)  # re-insert so dict order is least recently failed first
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > self.max_keys:
                self._prune(now)

    def succeeded(self, key: Hashable) -> None:
        with self._lock:
            self._buckets.pop(key, None)

    def __len__(self) -> int:
        return len(self._buckets)

    def _prune(self, now: float) -> None:
        for key in [k for k in self._buckets if self._tokens(k, now) >= self.max_failures]:
            del self._buckets[key]
        while len(self._buckets) > self.max_keys:  # still too many: forget the longest-quiet keys
            del self._buckets[next(iter(self._buckets))]
