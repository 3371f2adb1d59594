"""`python -m stklia.train [overrides]`: train a generator as composed from stklia/conf/train.yaml, then test it.

Also `torchrun --nproc_per_node=N -m stklia.train [overrides]` for DistributedDataParallel, and `-m` for sweeps.
"""

from stklia.core.command import command
from stklia.training.job import before_hydra, train_job

main = command(train_job, "train", before=before_hydra)

if __name__ == "__main__":
    main()
