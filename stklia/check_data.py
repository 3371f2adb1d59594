"""`python -m stklia.check_data DIR [DIR ...] [features_per_frame=80] [min_frames=10] ...`: Kaldi data dirs
checked as Kaldi's utils/validate_data_dir.sh checks them, then every utterance read once."""

from stklia.core.command import command
from stklia.data.check import check_data

main = command(check_data, "commands/check_data", positional="dirs")

if __name__ == "__main__":
    main()
