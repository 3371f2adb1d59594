"""Kaldi archives of audio: the members `python -m stklia.pack` writes, found at the `archive.ark:offset` of a
wav.scp entry, and read by stklia.data.audio.Recording a window at a time.

A member is kaldiio's (and for wav, Kaldi's) way of holding audio in an ark, after its `<key> `:

* `RIFF...`: a 16-bit PCM wav file, Kaldi's own wav-in-ark (what `wav-copy` writes): Kaldi's programs
  (`compute-fbank-feats scp:wav.scp ...`), kaldiio and stklia read it; its RIFF size says where it ends.
* `AUDIO<n><length>...`: kaldiio's soundfile member (`kaldiio.save_ark(..., write_function="soundfile")`): a FLAC
  file (or a wav of samples Kaldi's reader cannot hold: float, 24- or 32-bit), `length` bytes long (n bytes,
  little-endian). kaldiio reads it; Kaldi's C++ programs do not (they expect `RIFF`).

Archives are few and large, and a training item reads a window of one member: each process keeps one open
handle per archive (`archive_handle`, no `open` per item) and reads with os.pread, which has no file position to
share, so loader workers forked after an archive was opened share its handle safely.
"""

from __future__ import annotations

import io
import os
import struct
from collections import OrderedDict
from dataclasses import dataclass

MAX_HANDLES = 512  # archives held open per process; the least recently used is closed beyond it
HEAD = 512  # bytes read at a member's start in one call: its kind, length and the header the decoders parse


class _Handles:
    """The open archives of this process: path -> (file descriptor, its size when opened)."""

    def __init__(self) -> None:
        self.open: OrderedDict[str, tuple[int, int]] = OrderedDict()

    def get(self, path: str) -> tuple[int, int]:
        handle = self.open.get(path)
        if handle is None:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            handle = self.open[path] = fd, os.fstat(fd).st_size
            while len(self.open) > MAX_HANDLES:
                os.close(self.open.popitem(last=False)[1][0])
        else:
            self.open.move_to_end(path)
        return handle

    def refresh_size(self, path: str) -> int:
        """The archive's size now (it may have grown since it was opened: a pack still running)."""
        fd, _ = self.open[path]
        size = os.fstat(fd).st_size
        self.open[path] = fd, size
        return size

    def close(self) -> None:
        for fd, _ in self.open.values():
            os.close(fd)
        self.open.clear()


_HANDLES = _Handles()


def archive_handle(path: str) -> tuple[int, int]:
    """(file descriptor, size) of an archive, opened once per process."""
    return _HANDLES.get(path)


def close_archives() -> None:
    """Close every archive this process holds open: after archives were rewritten or replaced (pack, staging),
    the next read opens the new file, not the old one a handle still points to."""
    _HANDLES.close()


class MemberError(ValueError):
    """A member that is not where its entry says, or not whole."""

    def __init__(self, path: str, offset: int, problem: str):
        super().__init__(f"archive {path}, member at offset {offset}: {problem}")


@dataclass(frozen=True)
class Member:
    """Where a member's audio file lies in its archive: bytes start..end-1 of the file `fd`; `kind` is "wav" (a
    RIFF, Kaldi's wav-in-ark) or "audio" (kaldiio's soundfile member: FLAC, or a wav Kaldi cannot read)."""

    path: str
    offset: int
    fd: int
    start: int
    end: int
    kind: str
    head: bytes  # the file's first bytes (up to HEAD)


def locate_member(path: str, offset: int) -> Member:
    """The member at `offset` of the archive `path` (where its entry points: after `<key> `)."""
    fd, size = archive_handle(path)
    head = os.pread(fd, HEAD, offset)
    if head[:4] == b"RIFF" and len(head) >= 8:
        kind, start = "wav", offset
        end = start + 8 + struct.unpack("<I", head[4:8])[0]
    elif head[:5] == b"AUDIO" and len(head) >= 6 and len(head) >= 6 + head[5]:
        kind, start = "audio", offset + 6 + head[5]
        end = start + int.from_bytes(head[6 : 6 + head[5]], "little")
    else:
        found = repr(head[:8]) if head else "the archive's end"
        raise MemberError(path, offset, f"no audio member there (a wav `RIFF` or kaldiio's `AUDIO`), found {found}: "
                          "a wrong offset, or not an archive of audio")
    if end > size and end > _HANDLES.refresh_size(path):
        raise MemberError(path, offset, f"the archive is truncated: the member ends at byte {end}, past the "
                          f"archive's end ({_HANDLES.open[path][1]} bytes)")
    return Member(path, offset, fd, start, end, kind, head[start - offset :])


class MemberFile(io.RawIOBase):
    """A member as a read-only file of its own (what soundfile and the wave module read), over the archive's
    shared handle: os.pread at its own position, its first bytes served from the head already read."""

    def __init__(self, member: Member):
        super().__init__()
        self.member, self.position = member, 0
        self.size = member.end - member.start

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer: memoryview) -> int:
        count = max(0, min(len(buffer), self.size - self.position))
        head = self.member.head
        if self.position + count <= len(head):
            data = head[self.position : self.position + count]
        else:
            data = os.pread(self.member.fd, count, self.member.start + self.position)
            if len(data) < count:
                raise MemberError(self.member.path, self.member.offset, "the archive is truncated: the member's "
                                  f"bytes stop at {self.member.start + self.position + len(data)}")
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)

    def close(self) -> None:  # the archive's handle stays open for the next member
        super().close()
