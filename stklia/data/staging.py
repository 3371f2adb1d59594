"""Node-local staging (`data.stage_to=/local/scratch/...`): a packed data dir's archives copied to a node's own
disk at the start of a run, so that training reads them there instead of from the cluster's shared storage.

`stage` copies each archive of a dir packed by stklia.pack once, hashing it as it reads it: the copy must have the
archive's size and the SHA-256 that pack recorded (archives.sha256), or the run stops in one line. A later run (a
requeued job, the next experiment) finds the copies and checks them the same way (size, then checksum, read from
the local disk), copying again only an archive whose copy is missing, short or corrupt. The staged dir holds the
packed dir's tables and a wav.scp pointing into the copies. A lock on the staged dir makes processes that stage
the same dir on one node wait for each other; a training run has one process per node stage it
(training.loop.stage_run_data) and the others use its copy.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from stklia.core.atomic import atomic_output
from stklia.core.errors import InputError
from stklia.data.archives import close_archives
from stklia.data.pack import BLOCK, CHECKSUMS, human_size, sha256_of

log = logging.getLogger(__name__)

HASHING_THREADS = 8  # archives checked at once (hashlib hashes without the GIL: a core each)


def is_packed(path: str | os.PathLike) -> bool:
    """Whether a data path is a dir written by stklia.pack (its archives.sha256 beside its wav.scp)."""
    return (Path(path) / CHECKSUMS).is_file() and (Path(path) / "wav.scp").is_file()


def staged_path(src: str | os.PathLike, stage_to: str | os.PathLike) -> Path:
    """Where `stage` puts the copy of a packed dir: its name and a digest of its absolute path (two dirs of one
    name do not meet), the same on every node and in every run."""
    src = Path(src).resolve()
    return Path(stage_to) / f"{src.name}-{hashlib.sha256(str(src).encode()).hexdigest()[:12]}"


def read_checksums(packed: Path) -> dict[str, str]:
    """archive name -> SHA-256, as pack wrote them (`sha256sum` format)."""
    checksums = {}
    for lineno, line in enumerate((packed / CHECKSUMS).read_text().splitlines(), 1):
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name or "/" in name:
            raise InputError(packed / CHECKSUMS, "expected `<sha256>  <archive>` (sha256sum's format)", lineno)
        checksums[name] = digest
    return checksums


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (made if need be): processes staging the same dir wait for each other."""
    with open(path, "a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def copy_checked(src: Path, dst: Path, digest: str) -> None:
    """Copy src to dst (through a temporary file), hashing what is read: the copy must have src's size and
    `digest`, or an InputError."""
    sha = hashlib.sha256()
    with atomic_output(dst) as tmp, open(src, "rb") as source, open(tmp, "wb") as target:
        while block := source.read(BLOCK):
            sha.update(block)
            target.write(block)
        target.flush()
        if sha.hexdigest() != digest or os.path.getsize(tmp) != os.path.getsize(src):
            raise InputError(src, f"its SHA-256 is not the one pack recorded in {src.parent / CHECKSUMS}: the packed "
                             "archive has changed or is damaged (pack it again)")


def intact(copy: Path, src: Path, digest: str) -> bool:
    """Whether a staged copy has its archive's size and checksum."""
    return copy.is_file() and copy.stat().st_size == src.stat().st_size and sha256_of(copy) == digest


def stage(src: str | os.PathLike, stage_to: str | os.PathLike) -> Path:
    """The staged copy of the packed dir `src` under `stage_to`: copied where missing or not intact, checked where
    present (see the module docstring). One line when the disk cannot hold what is to be copied."""
    src, started = Path(src), time.perf_counter()
    checksums = read_checksums(src)
    dst = staged_path(src, stage_to)
    try:
        dst.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError("data.stage_to", f"cannot make {dst}: {err.strerror}") from None
    with locked(dst / ".lock"):
        with ThreadPoolExecutor(HASHING_THREADS) as pool:
            kept = list(pool.map(lambda name: intact(dst / name, src / name, checksums[name]), checksums))
        copies = [name for name, ok in zip(checksums, kept) if not ok]
        needed = sum((src / name).stat().st_size for name in copies)
        replaced = sum((dst / name).stat().st_size for name in copies if (dst / name).exists())
        free = shutil.disk_usage(dst).free + replaced
        if needed > free:
            raise InputError("data.stage_to", f"{dst.parent} has {human_size(free)} free, and staging {src} there "
                             f"needs {human_size(needed)} more: free some space, or stage to another disk")
        close_archives()  # a handle on a copy replaced here must not serve the old bytes
        for name in copies:
            (dst / name).unlink(missing_ok=True)  # a short or corrupt copy: its space is part of `free` now
            copy_checked(src / name, dst / name, checksums[name])
        for table in src.iterdir():
            if table.is_file() and table.suffix != ".ark" and table.name != "wav.scp":
                shutil.copyfile(table, dst / table.name)
        with atomic_output(dst / "wav.scp") as tmp:  # the archives' paths, made the copies'
            tmp.write_text("".join(_staged_entry(line, dst) for line in (src / "wav.scp").read_text().splitlines()))
    log.info("staged %s to %s: %d of %d archives copied (%s), the others checked and reused, in %.1f s", src, dst,
             len(copies), len(checksums), human_size(sum((src / n).stat().st_size for n in copies)),
             time.perf_counter() - started)
    return dst


def _staged_entry(line: str, dst: Path) -> str:
    """A packed wav.scp line with its archive in `dst`."""
    key, entry = line.split(maxsplit=1)
    path, offset = entry.rsplit(":", 1)
    return f"{key} {dst / Path(path).name}:{offset}\n"
