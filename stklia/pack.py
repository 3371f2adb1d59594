"""`python -m stklia.pack SRC OUT [format=flac|wav] [archive_size=1G] [nj=N]`: the audio of a Kaldi data dir, a
list of recordings or a lhotse manifest packed into a few large Kaldi archives, and a data dir pointing into them;
run again, it resumes."""

from stklia.core.command import command
from stklia.data.pack import pack

main = command(pack, "commands/pack", positional=("src", "out"))

if __name__ == "__main__":
    main()
