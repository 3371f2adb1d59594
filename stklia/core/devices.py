"""The `device` setting of every command."""

from __future__ import annotations

import torch


def resolve_device(device: str) -> torch.device:
    """The torch device of a `device` setting: auto (cuda when available), cpu, cuda, cuda:1, ..."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
