"""Speaker embeddings (x-vectors) with PyTorch and Hydra on Kaldi data; `stklia.load(model_dir)` for Python use."""

__all__ = ["SpeakerModel", "load"]


def __getattr__(name: str) -> object:
    """Import the Python API on first use, so `python -m stklia.<module>` does not load it twice."""
    if name in __all__:
        from stklia import api

        return getattr(api, name)
    raise AttributeError(f"module 'stklia' has no attribute '{name}'")
