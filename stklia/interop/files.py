"""Reading the files another toolkit publishes, as data: checkpoints with torch.load(weights_only=True), YAML with
yaml's safe loader (SpeechBrain's hyperpyyaml tags kept as data, never run), JSON; every problem one InputError
naming the file (and the key); what was read recorded with its sha256."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from stklia.core.errors import InputError


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_file(folder: Path, names: Iterable[str], what: str) -> Path:
    """The first of `names` present in `folder` (an InputError naming them all when none is)."""
    names = list(names)
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise InputError(folder, f"no {what} found (looked for {', '.join(names)})")


def require_file(path: Path) -> Path:
    if not path.is_file():
        raise InputError(path, "no such file")
    return path


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A state dict of tensors (under a `state_dict` key or not), loaded as data: weights_only=True."""
    require_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many kinds for a file that is not a checkpoint
        first = str(err).strip().splitlines()
        raise InputError(path, f"not a readable checkpoint ({first[0] if first else type(err).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise InputError(path, "holds no state dict (a mapping of tensor names to tensors)")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise InputError(path, f"'{key}' is a {type(value).__name__}, not a tensor")
    return state


class _PeerYamlLoader(yaml.SafeLoader):
    """yaml's safe loader that reads any `!tag` (hyperpyyaml's !new:, !ref, !name:, ...) as data: a dict with the
    tag under "!", and the node's mapping, list (under "items") or scalar (under "value")."""


def _tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict:
    tag = "!" + suffix
    if isinstance(node, yaml.MappingNode):
        return {"!": tag, **loader.construct_mapping(node, deep=True)}
    if isinstance(node, yaml.SequenceNode):
        return {"!": tag, "items": loader.construct_sequence(node, deep=True)}
    return {"!": tag, "value": loader.construct_scalar(node)}


_PeerYamlLoader.add_multi_constructor("!", _tagged)


def read_yaml_mapping(path: Path) -> dict:
    """A YAML file that must be a mapping (tags kept as data, see _PeerYamlLoader)."""
    require_file(path)
    try:
        value = yaml.load(path.read_text(), Loader=_PeerYamlLoader)  # noqa: S506 (a SafeLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise InputError(path, f"not readable YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(value, dict):
        raise InputError(path, f"is not a YAML mapping (it holds a {type(value).__name__})")
    return value


def read_json_mapping(path: Path) -> dict:
    require_file(path)
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(path, f"not readable JSON ({err})") from None
    if not isinstance(value, dict):
        raise InputError(path, f"is not a JSON object (it holds a {type(value).__name__})")
    return value


def mapping_at(value: Any, path: Path, key: str) -> dict:
    """`value`, which the file has at `key`, as a mapping (else an InputError naming both)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(path, f"'{key}' must be a mapping, not {value!r}")
    return value


Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Rule:
    """Source tensors whose names match `pattern` (a full match) are stklia's `target` (re.Match.expand syntax;
    `<g-k>`: the number group g matched, less k, as peers count layers from 1 or 2), after `transform`."""

    pattern: str
    target: str
    transform: Transform | None = None


def transpose_time_frequency(weight: torch.Tensor) -> torch.Tensor:
    """A 2-D convolution's kernel (out, in, frequency, time), as WeSpeaker's and 3D-Speaker's ResNet parts see a
    (frequency, time) image, for stklia's (time, frequency) image."""
    return weight.transpose(-1, -2).contiguous()


def squeeze_kernel(weight: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution's kernel (out, in, 1) as a linear layer's weight (out, in)."""
    return weight[..., 0] if weight.dim() == 3 and weight.shape[-1] == 1 else weight


def target_name(match: re.Match, target: str) -> str:
    """`target` expanded by `match`, each `<g-k>` the number group g matched less k."""
    return re.sub(r"<(\d+)-(\d+)>", lambda shift: str(int(match.group(int(shift[1]))) - int(shift[2])),
                  match.expand(target))


def convert_state(source: dict[str, torch.Tensor], rules: list[Rule], target: nn.Module, path: Path,
                  architecture: str, ignored: str | None = None) -> dict[str, torch.Tensor]:
    """stklia's state dict for `target` from a peer's, by `rules`; tensors matching `ignored` (a training head)
    are left out. A tensor no rule maps, one whose shape differs from the target's, or a target tensor no source
    tensor fills is one InputError naming the file and the tensor."""
    expected = target.state_dict()
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        if ignored is not None and re.fullmatch(ignored, key):
            continue
        for rule in rules:
            match = re.fullmatch(rule.pattern, key)
            if match:
                name = target_name(match, rule.target)
                value = rule.transform(tensor) if rule.transform else tensor
                break
        else:
            raise InputError(path, f"tensor '{key}' does not map to any layer of {architecture}")
        if name not in expected:
            raise InputError(path, f"tensor '{key}' ({tuple(tensor.shape)}) has no place in {architecture} as its "
                             "configuration describes it")
        if value.shape != expected[name].shape:
            raise InputError(path, f"tensor '{key}' has shape {tuple(tensor.shape)}, {architecture} as its "
                             f"configuration describes it needs {tuple(expected[name].shape)}")
        converted[name] = value.to(expected[name].dtype)
    missing = [name for name in expected if name not in converted]
    if missing:
        raise InputError(path, f"has no tensor for '{missing[0]}' of {architecture} ({len(missing)} missing)")
    return converted
