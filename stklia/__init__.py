"""Speaker embeddings (x-vectors) with PyTorch and Hydra on Kaldi data; `stklia.load(model_dir)` for Python use.

The package is in layers, each importing only those below it (tests/test_layers.py; docs/architecture.md):
core -> data, models -> modeldir -> evaluation -> demo, training, inference; interop above modeldir -> the commands
(`stklia/<command>.py`).
"""

__all__ = ["SpeakerModel", "load"]


def __getattr__(name: str) -> object:
    """Import the Python API on first use, so `python -m stklia.<command>` does not load it."""
    if name in __all__:
        from stklia.inference import model

        return getattr(model, name)
    raise AttributeError(f"module 'stklia' has no attribute '{name}'")
