"""`python -m stklia.import_model source=wespeaker|speechbrain|3dspeaker path=<published files> model_dir=DIR`:
a published model of another toolkit as a stklia model directory (docs/pretrained.md)."""

from stklia.core.command import command
from stklia.interop.importing import import_model

main = command(import_model, "commands/import_model")

if __name__ == "__main__":
    main()
