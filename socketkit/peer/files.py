"""The file system side of a transfer: what to offer for the paths given, where received bytes go, and
how a received directory (a zip, as wormhole sends it) is checked before anything is extracted.

The receiver writes only inside its output directory. Offered names are single path components
(proto/wormhole_transfer.safe_name); a zip entry is extracted only if it is a plain file or directory whose
normalised path stays inside the target, with its mode reduced to permission bits and never setuid,
setgid, sticky or world-writable; the whole zip is refused when its entries or unpacked size are far past
what the offer said.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from socketkit.errors import PeerError, TransferError
from socketkit.proto.wormhole_transfer import Offer

PART_SUFFIX = ".part"
_SAFE_MODE = 0o775  # owner and group as sent, never world-writable; no setuid/setgid/sticky


@dataclass
class Outgoing:
    """What we offer and the file whose bytes travel (the file itself, or a zip we built)."""
    offer: Offer
    file: IO[bytes] | None
    label: str


def offer_for(paths: list[str]) -> Outgoing:
    """One file as a file offer; a directory, or several paths, as a zip (a directory offer)."""
    if not paths:
        raise PeerError("nothing to send: give one or more paths, or --text")
    resolved = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise PeerError(f"cannot send {p!r}: no such file or directory")
        if not (path.is_file() or path.is_dir()):
            raise PeerError(f"cannot send {p!r}: not a regular file or a directory")
        if not os.access(path, os.R_OK):
            raise PeerError(f"cannot send {p!r}: permission denied")
        resolved.append(path)
    if len(resolved) == 1 and resolved[0].is_file():
        path = resolved[0]
        f = open(path, "rb")  # noqa: SIM115 - closed by the sender after the transfer
        size = os.fstat(f.fileno()).st_size
        return Outgoing(Offer("file", path.name, size), f, path.name)
    if len(resolved) == 1:
        name = resolved[0].resolve().name or "root"
        tops = [(resolved[0], "")]
    else:
        first = resolved[0].resolve().name or "files"
        name = f"{first}-and-{len(resolved) - 1}-more"
        tops = [(p, p.resolve().name) for p in resolved]
    zf, numbytes, numfiles = _zip(tops)
    size = zf.seek(0, os.SEEK_END)
    zf.seek(0)
    return Outgoing(Offer("directory", name, size, numbytes, numfiles), zf, name + "/")


def _zip(tops: list[tuple[Path, str]]) -> tuple[IO[bytes], int, int]:
    """A zip of the trees in a temporary file (gone when closed). Entries are stored, not deflated: most
    of what people send is already compressed, and a receiver unzips either kind."""
    out = tempfile.TemporaryFile()
    numbytes = numfiles = 0
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for top, prefix in tops:
            if top.is_file():
                z.write(top, prefix or top.name)
                numbytes += top.stat().st_size
                numfiles += 1
                continue
            for root, dirs, files in os.walk(top):
                dirs.sort()
                rel = Path(root).relative_to(top)
                arc_root = PurePosixPath(prefix, *rel.parts) if (prefix or rel.parts) else None
                # symlinked directories are not followed (a loop, or a way out of the tree)
                dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
                if arc_root is not None and not files and not dirs:
                    z.write(root, str(arc_root) + "/")  # keep empty directories
                for fname in sorted(files):
                    full = os.path.join(root, fname)
                    if not os.path.isfile(full):
                        continue  # sockets, fifos, devices, dangling links: not file contents
                    arc = str(PurePosixPath(arc_root, fname)) if arc_root is not None else fname
                    z.write(full, arc)
                    numbytes += os.path.getsize(full)
                    numfiles += 1
    out.flush()
    return out, numbytes, numfiles


# -- receiving ------------------------------------------------------------------------------------------
def destination(out_dir: Path, offer: Offer) -> Path:
    return out_dir / offer.name


def part_path(out_dir: Path, offer: Offer) -> Path:
    """Where the bytes land while they arrive (kept after an interruption, for resume)."""
    suffix = ".zip" + PART_SUFFIX if offer.kind == "directory" else PART_SUFFIX
    name = offer.name + suffix
    if len(name.encode()) > 255:
        # a legal name with no room for the suffix: shortened, the same on every run (resume finds it)
        tag = hashlib.sha256(offer.name.encode()).hexdigest()[:16]
        name = offer.name.encode()[:255 - len(suffix) - 17].decode("utf-8", "ignore") + "~" + tag + suffix
    return out_dir / name


def check_space(out_dir: Path, offer: Offer) -> None:
    need = offer.size + (offer.numbytes if offer.kind == "directory" else 0)
    free = shutil.disk_usage(out_dir).free
    if free < need:
        raise TransferError(f"not enough free space in {out_dir}: the offer needs {need:,} bytes, "
                            f"{free:,} are free")


def prefix_hash(path: Path, length: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = length
        while left > 0:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def _entry_mode(info: zipfile.ZipInfo) -> int | None:
    """The entry's permission bits to apply, or None when the entry is not a plain file or directory."""
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        return None
    perms = stat.S_IMODE(mode) & _SAFE_MODE
    if info.is_dir():
        return (perms | 0o700) if perms else 0o755
    return (perms | 0o600) if perms else 0o644


def _entry_path(info: zipfile.ZipInfo) -> PurePosixPath:
    name = info.filename
    if "\\" in name or "\x00" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise TransferError(f"refusing the directory: unsafe entry name {name!r}")
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise TransferError(f"refusing the directory: unsafe entry name {name!r}")
    return PurePosixPath(*parts)


def check_zip(zf: zipfile.ZipFile, offer: Offer) -> list[tuple[zipfile.ZipInfo, PurePosixPath, int]]:
    """Every entry checked before one byte is extracted; the plan to extract them."""
    infos = zf.infolist()
    if len(infos) > 2 * offer.numfiles + 1024:
        raise TransferError(f"refusing the directory: {len(infos)} entries, the offer said {offer.numfiles} files")
    total = sum(i.file_size for i in infos)
    if total > 2 * offer.numbytes + (16 << 20):
        raise TransferError(f"refusing the directory: it unpacks to {total:,} bytes, the offer said "
                            f"{offer.numbytes:,}")
    plan = []
    seen: set[PurePosixPath] = set()
    for info in infos:
        path = _entry_path(info)
        mode = _entry_mode(info)
        if mode is None:
            raise TransferError(f"refusing the directory: {info.filename!r} is a link or a device file")
        if path in seen and not info.is_dir():
            raise TransferError(f"refusing the directory: {info.filename!r} appears twice")
        seen.add(path)
        plan.append((info, path, mode))
    # A file that is also a directory, or the parent of another entry: sorted, a path's descendants follow it.
    order = sorted((path.parts, info.is_dir(), info.filename) for info, path, _ in plan)
    for (a, a_dir, a_name), (b, b_dir, b_name) in zip(order, order[1:], strict=False):
        if a == b and a_dir and b_dir:
            continue
        if a == b or (not a_dir and b[:len(a)] == a):
            raise TransferError(f"refusing the directory: {b_name!r} conflicts with {a_name!r}")
    return plan


def extract(zip_path: Path, offer: Offer, target: Path, replace: bool = False) -> int:
    """Extract the checked zip into `target` (which must not exist, or with `replace` may be a file that is
    replaced once the tree is whole) through a temporary directory beside it, so `target` appears whole or
    not at all. Returns the number of files written. Anything that goes wrong is a TransferError."""
    try:
        return _extract(zip_path, offer, target, replace)
    except TransferError:
        raise
    except OSError as e:  # disk full, a name too long for the file system...
        raise TransferError(f"could not unpack {offer.name}/: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 - zipfile, zlib, bz2, lzma on a damaged or hostile zip
        raise TransferError(f"refusing the directory: the zip cannot be unpacked ({str(e)[:200]})") from None


def _extract(zip_path: Path, offer: Offer, target: Path, replace: bool) -> int:
    out_dir = target.parent
    with zipfile.ZipFile(zip_path) as zf:
        plan = check_zip(zf, offer)
        tmp = Path(tempfile.mkdtemp(prefix=f".{offer.name[:40]}.", suffix=".socketkit-tmp", dir=out_dir))
        try:
            files = 0
            dir_modes = []
            for info, rel, mode in plan:
                dest = tmp.joinpath(*rel.parts)
                if info.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                    dir_modes.append((dest, mode))
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                if dest.is_dir():
                    raise TransferError(f"refusing the directory: {info.filename!r} is a file and a directory")
                # O_EXCL|O_NOFOLLOW: nothing in the tree we are building can be a link, but never follow one
                fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as w, zf.open(info) as r:
                    shutil.copyfileobj(r, w, 1 << 20)
                os.chmod(dest, mode)
                files += 1
            for d, mode in reversed(dir_modes):
                os.chmod(d, mode)
            os.chmod(tmp, 0o755)
            if target.exists() or target.is_symlink():
                if not replace:
                    raise TransferError(f"{target} appeared while receiving; not replacing it")
                remove_existing(target)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return files


def remove_existing(path: Path) -> None:
    """--overwrite: an existing file is replaced; an existing directory is not deleted (too dangerous)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        raise TransferError(f"{path} exists and is a directory; not deleting it, move it away first")


__all__ = [
    "Outgoing", "PART_SUFFIX", "check_space", "check_zip", "destination", "extract", "offer_for", "part_path",
    "prefix_hash", "remove_existing",
]
