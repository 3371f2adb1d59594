"""`python -m stklia.pack SRC OUT`: the audio of a data set packed into a few large Kaldi archives, and a data dir
pointing into them.

On the shared file systems of clusters every `open` is a metadata round trip; a corpus of a million files costs a
million of them per epoch. A packed dir holds the same utterances in `audio.<n>.ark` files of about
`archive_size` bytes each (stklia.data.archives: wav members as Kaldi writes them, or FLAC members as kaldiio
does), its `wav.scp` entries `<utt> <OUT>/audio.<n>.ark:<offset>`, and training reads a crop's window of a member
through one open handle per archive and loader worker.

SRC is a Kaldi data dir (wav.scp, with segments: each segment becomes a member of its own; `command |` pipes are
decoded here, once), a list of recordings as augmentation sets have (`path` or `key entry` lines), or a lhotse
manifest (stklia.data.manifests). Its order is kept (the draws from noise and impulse-response lists depend on
it); its other tables (utt2spk, spk2utt, text, trials, ...) are copied; a manifest's speakers written as
utt2spk and spk2utt. Every member is decoded back after encoding and must hold the source's samples at its sample
rate; a source that cannot be read is one line naming it, its file and line.

Packing resumes: an archive, once full, is synced and its part of the scp (`audio.<n>.scp`) written; a pack run
again with the same settings keeps the full archives and rewrites the one it was writing. `wav.scp` comes last
(nothing uses a dir without it), after `archives.sha256` (`sha256sum -c` format), which staging checks copies
against (stklia.data.staging).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import kaldiio
import numpy as np
import soundfile
from omegaconf import DictConfig

from stklia.core.atomic import atomic_output, write_json
from stklia.core.errors import InputError
from stklia.core.progress import progress_bar
from stklia.data.archives import close_archives
from stklia.data.audio import Recording, Segment
from stklia.data.entries import AudioEntries, read_audio_entries
from stklia.data.manifests import is_manifest, read_manifest

FORMATS = ("flac", "wav")
CHECKSUMS = "archives.sha256"
SETTINGS = "pack.json"
# Tables of a Kaldi dir that a packed copy does not keep: what wav.scp and segments were, and features.
NOT_COPIED = {"wav.scp", "segments", "feats.scp", "cmvn.scp", "reco2file_and_channel", "reco2dur", "utt2num_frames",
              "feats.len", SETTINGS, CHECKSUMS}
UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
CHUNK = 16  # utterances a worker encodes per task
BLOCK = 1 << 24  # bytes read at a time to hash an archive


def archive_name(index: int) -> str:
    return f"audio.{index}.ark"


def parse_size(value: int | str) -> int:
    """Bytes of `archive_size`: a number, or one with a K, M, G or T suffix (powers of 1024)."""
    text = str(value).strip().upper().removesuffix("B")
    number, unit = (text[:-1], text[-1]) if text[-1:] in UNITS and text[-1:] else (text, "")
    try:
        size = int(float(number) * UNITS[unit])
    except ValueError:
        size = 0
    if size < 1:
        raise InputError("archive_size", f"must be a size in bytes (e.g. 1G, 500M, 1000000), not {value!r}")
    return size


@dataclass
class Source:
    """What a pack reads: its audio entries (in their order), its tables to copy, and for a lhotse manifest the
    speakers (None: the tables have them)."""

    audio: AudioEntries
    tables: list[Path]
    utt2spk: dict[str, str] | None = None


def read_source(src: Path) -> Source:
    if is_manifest(src):
        audio, utt2spk = read_manifest(src)
        return Source(audio, [], utt2spk)
    if src.is_dir():
        if not (src / "wav.scp").is_file():
            raise InputError(src / "wav.scp", "no such file: pack packs the audio of a dir's wav.scp")
        tables = sorted(p for p in src.iterdir() if p.is_file() and p.name not in NOT_COPIED
                        and p.suffix not in (".ark", ".scp"))
        return Source(read_audio_entries(src), tables)
    if src.is_file():
        return Source(read_audio_entries(src, bare_paths=True), [])
    raise InputError(src, "no such data dir, list or lhotse manifest")


def encode(item: tuple[str, str, Segment | None, Path, int | None, int, str]) -> bytes:
    """The archive bytes (`<key> ` and the member) of one utterance, decoded back and checked: its samples at the
    sample rate of the source."""
    utt, entry, segment, where, line, sample_rate, fmt = item
    what = f"audio of '{utt}'"
    with Recording(entry, sample_rate, where, line, what, segment) as recording:
        samples = recording.read(keep_int16=True)
    out = io.BytesIO()
    if samples.dtype == np.int16 and fmt == "wav":  # Kaldi's own wav-in-ark
        kaldiio.save_ark(out, {utt: (sample_rate, samples)})
    elif samples.dtype == np.int16:
        kaldiio.save_ark(out, {utt: (sample_rate, samples)}, write_function="soundfile",
                         write_kwargs={"format": "FLAC"})
    elif fmt == "wav":  # float or 24/32-bit samples: a float wav, as stklia reads them (Kaldi reads 16-bit only)
        kaldiio.save_ark(out, {utt: (sample_rate, samples / np.float32(32768))}, write_function="soundfile",
                         write_kwargs={"format": "WAV", "subtype": "FLOAT"})
    else:
        raise InputError(where, f"{what} does not hold 16-bit samples: a FLAC member would round them (pack it with "
                         "format=wav, which keeps them as float wav members)", line)
    data = out.getvalue()
    member = data[len(utt) + 1 :]
    if member[:5] == b"AUDIO":
        member = member[6 + member[5] :]
    info = soundfile.info(io.BytesIO(member))
    if (info.frames, info.samplerate) != (len(samples), sample_rate):
        raise InputError(where, f"{what}: its member holds {info.frames} samples at {info.samplerate} Hz, the source "
                         f"{len(samples)} at {sample_rate} Hz", line)
    return data


def encode_chunk(items: list[tuple]) -> tuple[list[bytes], InputError | None]:
    """encode() of the items up to the first that fails, and its error (None: they all encoded)."""
    done = []
    for item in items:
        try:
            done.append(encode(item))
        except InputError as err:
            return done, err
    return done, None


def in_order(pool: ProcessPoolExecutor, chunks: Iterator[list[tuple]], ahead: int
             ) -> Iterator[tuple[list[bytes], InputError | None]]:
    """encode_chunk of each chunk by the pool, in order, at most `ahead` chunks submitted before their turn (a
    million utterances are not all queued at once)."""
    pending: collections.deque = collections.deque()
    try:
        for chunk in chunks:
            pending.append(pool.submit(encode_chunk, chunk))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


def encoded(items: list[tuple], nj: int) -> Iterator[bytes]:
    """encode() of each item, in order, by nj processes; the items before one that cannot be read are all given
    before its error is raised."""
    chunks = (items[i : i + CHUNK] for i in range(0, len(items), CHUNK))
    with ProcessPoolExecutor(nj) if nj > 1 else contextlib.nullcontext() as pool:
        for done, err in (in_order(pool, chunks, 4 * nj) if pool else map(encode_chunk, chunks)):
            yield from done
            if err is not None:
                raise err


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


class ArchiveWriter:
    """Archives audio.<n>.ark of OUT filled one after the other, each closed (synced, its scp written) once it
    holds `size` bytes or more."""

    def __init__(self, out: Path, index: int, size: int):
        self.out, self.index, self.size = out, index, size
        self.file: io.BufferedWriter | None = None
        self.checksums: dict[str, str] = {}

    def add(self, utt: str, data: bytes) -> None:
        if self.file is None:
            self.path = (self.out / archive_name(self.index)).resolve()
            self.file, self.lines, self.digest = open(self.path, "wb"), [], hashlib.sha256()  # noqa: SIM115
        offset = self.file.tell() + len(utt) + 1
        self.file.write(data)
        self.digest.update(data)
        self.lines.append(f"{utt} {self.path}:{offset}\n")
        if self.file.tell() >= self.size:
            self.close()

    def close(self) -> None:
        """Close the archive being written: synced, then its scp (which marks it full)."""
        if self.file is None:
            return
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        self.file = None
        self.checksums[self.path.name] = self.digest.hexdigest()
        with atomic_output(self.path.with_suffix(".scp")) as tmp:
            tmp.write_text("".join(self.lines))
        self.index += 1

    def abandon(self) -> None:
        """Remove the archive being written (an error stopped the pack)."""
        if self.file is not None:
            self.file.close()
            self.file = None
            self.path.unlink(missing_ok=True)


def full_archives(out: Path, keys: list[str]) -> list[Path]:
    """The scps of the archives a previous pack of the same source into OUT filled, which must hold its first
    utterances in order."""
    scps, done = [], 0
    while (scp := out / archive_name(len(scps) + 1)).with_suffix(".scp").is_file():
        scps.append(scp.with_suffix(".scp"))
        held = [line.split(maxsplit=1)[0] for line in scps[-1].read_text().splitlines()]
        if held != keys[done : done + len(held)]:
            raise InputError(scps[-1], "does not hold the source's utterances in order: remove the packed dir")
        done += len(held)
    return scps


def write_tables(source: Source, out: Path) -> None:
    for table in source.tables:
        shutil.copyfile(table, out / table.name)
    if source.utt2spk is not None:
        spk2utt: dict[str, list[str]] = {}
        for utt in sorted(source.utt2spk):
            spk2utt.setdefault(source.utt2spk[utt], []).append(utt)
        with atomic_output(out / "utt2spk") as tmp:
            tmp.write_text("".join(f"{utt} {source.utt2spk[utt]}\n" for utt in sorted(source.utt2spk)))
        with atomic_output(out / "spk2utt") as tmp:
            tmp.write_text("".join(f"{spk} {' '.join(utts)}\n" for spk, utts in sorted(spk2utt.items())))


def settings_of(cfg: DictConfig, src: Path, keys: list[str], size: int) -> dict:
    """What a pack is of: its source (the digest of its keys, in order) and settings; a resumed pack must have the
    same (a source's entries may have been mended: that of a file that could not be read)."""
    digest = hashlib.sha256("".join(f"{key}\n" for key in keys).encode()).hexdigest()
    return {"source": str(src.resolve()), "keys_sha256": digest, "format": cfg.format, "archive_size": size,
            "sample_rate": cfg.sample_rate}


def pack(cfg: DictConfig) -> None:
    """The command (stklia/conf/commands/pack.yaml): SRC's audio into archives in OUT, resumed where a previous
    pack into OUT stopped."""
    src, out = Path(cfg.src), Path(cfg.out)
    if cfg.format not in FORMATS:
        raise InputError("format", f"must be {' or '.join(FORMATS)}, not {cfg.format!r}")
    if not isinstance(cfg.nj, int) or cfg.nj < 1:
        raise InputError("nj", f"must be a whole number, 1 or more, not {cfg.nj!r}")
    size = parse_size(cfg.archive_size)
    started = time.perf_counter()
    source = read_source(src)
    keys = list(source.audio.entries)
    if not keys:
        raise InputError(src, "empty: nothing to pack")
    settings = settings_of(cfg, src, keys, size)
    out.mkdir(parents=True, exist_ok=True)
    if (out / SETTINGS).exists():
        previous = json.loads((out / SETTINGS).read_text())
        if previous != settings:
            changed = ", ".join(k for k in settings if previous.get(k) != settings[k])
            raise InputError(out / SETTINGS, f"{out} holds a pack of another source or settings ({changed} differ): "
                             "remove it, or pack into another dir")
        if (out / "wav.scp").exists():
            print(f"{out}: packed already ({len(keys)} utterances)")
            return
    else:
        write_json(out / SETTINGS, settings)
    scps = full_archives(out, keys)
    done = sum(len(scp.read_text().splitlines()) for scp in scps)
    close_archives()  # a handle on an archive rewritten here must not serve old bytes
    writer = ArchiveWriter(out, len(scps) + 1, size)
    items = [(key, source.audio.entries[key], source.audio.segments.get(key), *source.audio.origin[key],
              cfg.sample_rate, cfg.format) for key in keys[done:]]
    bar = progress_bar(total=len(keys), desc=f"packing {src.name}", unit="utt", enabled=cfg.progress)
    bar.update(done)
    try:
        for (key, *_), data in zip(items, encoded(items, cfg.nj)):
            writer.add(key, data)
            bar.update(1)
        writer.close()
    except BaseException:
        writer.abandon()
        raise
    finally:
        bar.close()
    scps = full_archives(out, keys)
    checksums = {scp.with_suffix(".ark").name: writer.checksums.get(scp.with_suffix(".ark").name)
                 or sha256_of(scp.with_suffix(".ark")) for scp in scps}  # archives of an earlier run: hashed again
    write_tables(source, out)
    with atomic_output(out / CHECKSUMS) as tmp:
        tmp.write_text("".join(f"{digest}  {name}\n" for name, digest in checksums.items()))
    with atomic_output(out / "wav.scp") as tmp:
        tmp.write_text("".join(scp.read_text() for scp in scps))
    for scp in scps:  # wav.scp holds them now
        scp.unlink()
    total = sum((out / name).stat().st_size for name in checksums)
    print(f"{out}: {len(keys)} utterances of {src} in {len(checksums)} archives ({human_size(total)}, "
          f"{cfg.format}), {time.perf_counter() - started:.1f} s")


def human_size(size: int) -> str:
    """`size` bytes in the largest unit of UNITS it holds at least one of (1.50 GiB, 320.00 KiB)."""
    unit = next(u for u in reversed(UNITS) if size >= UNITS[u] or not u)
    return f"{size / UNITS[unit]:.2f} {unit}iB" if unit else f"{size} bytes"
