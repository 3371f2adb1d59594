"""`python -m stklia.check_data DIR [DIR...]`: check Kaldi data dirs before a long run.

Each dir's tables are checked as Kaldi's utils/validate_data_dir.sh checks them, then every utterance is read
once (features: dimensions, NaN/Inf; audio: sample rate, NaN/Inf), none empty or too short. Prints what each
dir holds (utterances, speakers, hours, frames); the first problem is one line and exit status 1.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from omegaconf import OmegaConf

from stklia.config import CONF_DIR, build
from stklia.data.check import check_data_dir
from stklia.errors import InputError, exit_on_input_error


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stklia.check_data", description=__doc__.split("\n\n")[1])
    parser.add_argument("dirs", nargs="+", type=Path, help="Kaldi data dirs (feats.scp or wav.scp, utt2spk, spk2utt)")
    parser.add_argument("--features-per-frame", type=int, help="the dimension every feature matrix must have "
                        "(default: that of each dir's first)")
    parser.add_argument("--min-frames", type=int, default=10, help="shortest utterance accepted, in frames "
                        "(default: 10, 0.1 s)")
    parser.add_argument("--features", default="fbank80", help="features config of audio dirs, from "
                        "stklia/conf/features/ (default: fbank80): its sample rate and framing")
    parser.add_argument("--sample-rate", type=int, help="the sample rate audio must have (default: the features')")
    parser.add_argument("--no-spk-sort", action="store_true", help="do not require utt2spk to be sorted by speaker "
                        "too (as validate_data_dir.sh --no-spk-sort)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    with exit_on_input_error():
        features_yaml = CONF_DIR / "features" / f"{args.features}.yaml"
        if not features_yaml.is_file():
            raise InputError(features_yaml, "no such features config")
        features = build(OmegaConf.merge(OmegaConf.load(features_yaml),
                                         {"sample_rate": args.sample_rate} if args.sample_rate else {}))
        total = None
        for path in args.dirs:
            summary = check_data_dir(path, features, min_frames=args.min_frames,
                                     features_per_frame=args.features_per_frame, speaker_sort=not args.no_spk_sort,
                                     progress=not args.no_progress)
            print(f"{path}: {summary}", flush=True)
            total = summary if total is None else total + summary
        if len(args.dirs) > 1:
            print(f"total: {total}")


if __name__ == "__main__":
    main()
