"""`python -m stklia.demo DIR [small=true] [seed=N] [baseline=true]`: generate the demo corpus into DIR."""

from stklia.core.command import command
from stklia.demo.corpus import generate

main = command(generate, "commands/demo", positional="root", many=False)

if __name__ == "__main__":
    main()
