"""VoxCeleb as distributed -> Kaldi data dirs and stklia trial lists.

    python local/prepare.py data CORPUS_DIR OUT_DIR     # CORPUS_DIR/<speaker>/<video>/<n>.wav|.flac|.m4a
    python local/prepare.py trials OFFICIAL_LIST OUT    # `1 id10270/x6uYqmx31kE/00001.wav id10270/...`

Utterance ids are `<speaker>-<video>-<n>`, so they sort by speaker as Kaldi requires. m4a files
(VoxCeleb2) become `ffmpeg ... |` pipe entries of wav.scp, decoded on the fly at 16 kHz: slow for
training (a whole decode per training item), which is why run.sh converts them to FLAC first.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from stklia.core.atomic import atomic_output
from stklia.core.errors import InputError, exit_on_input_error
from stklia.data.kaldi import read_table

EXTENSIONS = (".wav", ".flac", ".m4a")


def utt_id(relative: str) -> str:
    """`id10270/x6uYqmx31kE/00001.wav` -> `id10270-x6uYqmx31kE-00001`."""
    return "-".join(Path(relative).with_suffix("").parts)


def wav_entry(path: Path) -> str:
    if path.suffix == ".m4a":
        return f"ffmpeg -nostdin -loglevel error -i {shlex.quote(str(path))} -f wav -ar 16000 -ac 1 - |"
    return str(path)


def prepare_data(corpus: Path, out: Path) -> int:
    """Write wav.scp, utt2spk and spk2utt for every recording under corpus; return their number."""
    files = sorted(p for p in corpus.rglob("*") if p.suffix in EXTENSIONS)
    if not files:
        raise InputError(corpus, f"no {' or '.join(EXTENSIONS)} files (expected <speaker>/<video>/<n>.wav)")
    utt2spk, wavs, spk2utt = {}, {}, {}
    for path in files:
        relative = path.relative_to(corpus)
        if len(relative.parts) != 3:
            raise InputError(path, "not at <speaker>/<video>/<n>.wav in the corpus directory")
        utt = utt_id(str(relative))
        utt2spk[utt], wavs[utt] = relative.parts[0], wav_entry(path.resolve())
        spk2utt.setdefault(relative.parts[0], []).append(utt)
    for name, lines in (("wav.scp", [f"{u} {wavs[u]}" for u in sorted(wavs)]),
                        ("utt2spk", [f"{u} {utt2spk[u]}" for u in sorted(utt2spk)]),
                        ("spk2utt", [f"{s} {' '.join(sorted(us))}" for s, us in sorted(spk2utt.items())])):
        with atomic_output(out / name) as tmp:
            tmp.write_text("".join(f"{line}\n" for line in lines))
    return len(files)


def convert_trials(official: Path, out: Path) -> int:
    """Official `label path path` lines -> stklia's `label utt utt` lines; return the number of trials."""
    lines = []
    for lineno, (label, a, b) in read_table(official, 3, 3):
        if label not in ("0", "1"):
            raise InputError(official, f"label '{label}' is not 0 or 1", lineno)
        lines.append(f"{label} {utt_id(a)} {utt_id(b)}\n")
    with atomic_output(out) as tmp:
        tmp.write_text("".join(lines))
    return len(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="a Kaldi data dir from a corpus directory tree")
    data.add_argument("corpus", type=Path)
    data.add_argument("out", type=Path)
    trials = sub.add_parser("trials", help="an official trial list in stklia's format")
    trials.add_argument("official", type=Path)
    trials.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    with exit_on_input_error():
        if args.command == "data":
            print(f"{args.out}: {prepare_data(args.corpus, args.out)} utterances")
        else:
            print(f"{args.out}: {convert_trials(args.official, args.out)} trials")


if __name__ == "__main__":
    main()
