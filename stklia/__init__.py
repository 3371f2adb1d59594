"""Speaker embeddings (x-vectors) with PyTorch and Hydra on Kaldi data; `stklia.load(model_dir)` for Python use."""

from stklia.api import SpeakerModel, load

__all__ = ["SpeakerModel", "load"]
