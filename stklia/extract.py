"""`python -m stklia.extract model_dir=DIR data=test|eval|train|/kaldi/dir format=ark|txt|pt`: embeddings of a
data set, as Kaldi ark + scp, Kaldi text vectors or a torch dict."""

from stklia.core.command import command
from stklia.evaluation.embeddings import extract

main = command(extract, "commands/extract")

if __name__ == "__main__":
    main()
