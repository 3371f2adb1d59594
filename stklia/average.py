"""`python -m stklia.average model_dir=DIR last=10` (or `checkpoints=[...]`): the mean of a run's last
checkpoints, saved as a checkpoint that test, extract, export, `stklia.load` and `init_from` accept by name."""

from stklia.core.command import command
from stklia.modeldir.averaging import average

main = command(average, "commands/average")

if __name__ == "__main__":
    main()
