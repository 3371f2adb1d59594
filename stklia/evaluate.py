"""`python -m stklia.evaluate model_dir=DIR [checkpoint=last|best|N] [scoring.backend=plda ...]` (also
`python -m stklia.test`): EER, minDCF, actual DCF, Cllr and minCllr of every test trial list of a trained model."""

from stklia.core.command import command
from stklia.evaluation.testing import evaluate_checkpoint

main = command(evaluate_checkpoint, "commands/test")

if __name__ == "__main__":
    main()
