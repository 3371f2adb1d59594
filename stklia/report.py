"""`python -m stklia.report DIR [DIR ...] [sort=COLUMN] [format=markdown|csv|json] [top=K] [det=PNG]`: a
leaderboard of the training runs under the DIRs (a sweep dir, an exp/ dir, model dirs), with their DET curves."""

from stklia.core.command import command
from stklia.training.leaderboard import report

main = command(report, "commands/report", positional="dirs")

if __name__ == "__main__":
    main()
