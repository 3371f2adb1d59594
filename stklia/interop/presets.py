"""What an imported model becomes in stklia's terms: a model preset of stklia/conf/model/ and a front end of
stklia/conf/features/, each with the values the published files give, and the generator they build."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from stklia.core.config import CONF_DIR, build
from stklia.models.generator import Generator


def preset(group: str, name: str) -> DictConfig:
    """A config group's option as its yaml file holds it, its `defaults` (options of the same group) merged in."""
    node = OmegaConf.load(CONF_DIR / group / f"{name}.yaml")
    bases = [preset(group, base) for base in node.pop("defaults", []) if base != "_self_"]
    return OmegaConf.merge(*bases, node) if bases else node


@dataclass
class Imported:
    """A published model read and converted: what `import_model` writes as a model directory."""

    source: str  # wespeaker, speechbrain, 3dspeaker
    architecture: str  # the peer's name of it, e.g. WeSpeaker ResNet34
    model_preset: str  # stklia/conf/model/<name>.yaml
    model: DictConfig  # the preset with the published values
    features_preset: str  # stklia/conf/features/<name>.yaml
    features: DictConfig
    cmn: bool
    generator: dict[str, torch.Tensor] = field(default_factory=dict)  # the converted state dict
    files: list[Path] = field(default_factory=list)  # the published files read


def model_config(name: str, features_per_frame: int, **values: Any) -> DictConfig:
    """Model preset `name` with the published values (None: the preset's)."""
    node = preset("model", name)
    node.features_per_frame = features_per_frame
    return OmegaConf.merge(node, {key: value for key, value in values.items() if value is not None})


def features_config(name: str, **values: Any) -> DictConfig:
    node = preset("features", name)
    return OmegaConf.merge(node, {key: value for key, value in values.items() if value is not None})


def build_generator(model: DictConfig) -> Generator:
    """The stklia generator a model config describes (an InputError names a value that cannot work)."""
    return build(model).eval()
