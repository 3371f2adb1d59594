"""What every speaker model of stklia is: a generator of embeddings."""

from __future__ import annotations

from torch import nn


class Generator(nn.Module):
    """Features (batch, frames, dims) and optionally their valid lengths (batch,) -> embeddings (batch, emb_size);
    a padded batch with its lengths embeds each utterance as alone (stklia.models.masking). Every generator sets
    its `emb_size` (an attribute, not a class annotation: TorchScript would take that for a module attribute);
    `min_frames` is the fewest frames an utterance may have (more where convolutions drop or reflect frames)."""

    min_frames = 1

    def fold_batch_norms(self) -> Generator:
        """For an inference copy in eval mode: the batch norms folded into the layers before them, where the
        architecture has such pairs (ResNet); the others keep theirs."""
        return self
