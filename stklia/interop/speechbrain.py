"""SpeechBrain's published ECAPA-TDNN (spkrec-ecapa-voxceleb): `hyperparams.yaml` (read as data: its
hyperpyyaml tags are never run), `embedding_model.ckpt` and, where present, `mean_var_norm_emb.ckpt` (the
embedding mean its `encode_batch(normalize=True)` subtracts; imported with `embedding_mean=true`).

SpeechBrain's ECAPA-TDNN differs from stklia's default in details the import sets: its convolutions pad by
reflection, its aggregation layer has a batch norm, its attention a ReLU and a batch norm, the pooling's context
standard deviation is biased, and there is no batch norm after the embedding layer (docs/pretrained.md).
"""

from __future__ import annotations

from pathlib import Path

import torch

from stklia.core.errors import InputError
from stklia.interop.files import (
    Rule,
    convert_state,
    load_tensors,
    mapping_at,
    read_yaml_mapping,
    require_file,
    squeeze_kernel,
)
from stklia.interop.presets import Imported, build_generator, features_config, model_config

ECAPA = "speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN"
FBANK = "speechbrain.lobes.features.Fbank"
NORMALISATION = "speechbrain.processing.features.InputNormalization"
# SpeechBrain's ECAPA_TDNN defaults (speechbrain/lobes/models/ECAPA_TDNN.py)
DEFAULTS = {"lin_neurons": 192, "channels": [512, 512, 512, 512, 1536], "kernel_sizes": [5, 3, 3, 3, 1],
            "dilations": [1, 2, 3, 4, 1], "attention_channels": 128, "res2net_scale": 8, "se_channels": 128,
            "global_context": True, "groups": [1, 1, 1, 1, 1]}
POOLING = {"attention_bn": True, "std_unbiased": False, "std_floor": 1e-12, "weighted_floor": 1e-12}


def read_speechbrain(path: Path, embedding_mean: bool = False) -> Imported:
    """A SpeechBrain speaker model: `path` is its folder (hyperparams.yaml, embedding_model.ckpt, ...)."""
    folder = path if path.is_dir() else path.parent
    hparams_path = folder / "hyperparams.yaml"
    hparams = read_yaml_mapping(hparams_path)
    node = instance(hparams, "embedding_model", ECAPA, hparams_path)
    args = {**DEFAULTS, **{key: resolve(hparams, value, hparams_path, f"embedding_model.{key}")
                           for key, value in node.items() if key != "!"}}
    channels, kernels, dilations = args["channels"], args["kernel_sizes"], args["dilations"]
    if kernels != DEFAULTS["kernel_sizes"] or len(set(channels[:-1])) != 1 or set(args["groups"]) != {1} or \
            not args["global_context"] or len(channels) != 5 or dilations[0] != 1 or dilations[-1] != 1:
        raise InputError(hparams_path, "embedding_model: this ECAPA_TDNN (kernel_sizes, channels, groups, "
                         "global_context) is not the published architecture, which the import maps")
    features = front_end(hparams, hparams_path)
    model = model_config("ecapa_tdnn", int(args["input_size"]), channels=channels[0], dilations=dilations[1:-1],
                         scale=args["res2net_scale"], se_channels=args["se_channels"], mfa_channels=channels[-1],
                         emb_size=args["lin_neurons"], pooling="channel_context_attentive", padding="reflect",
                         mfa_bn=True, emb_bn=False, emb_mean=embedding_mean,
                         pooling_options={**POOLING, "attention_channels": args["attention_channels"]})
    imported = Imported("speechbrain", "SpeechBrain ECAPA_TDNN", "ecapa_tdnn", model, "speechbrain", features,
                        cmn=True)
    checkpoint = folder / "embedding_model.ckpt"
    state = load_tensors(checkpoint)
    imported.files = [hparams_path, checkpoint]
    if embedding_mean:
        mean_path = folder / "mean_var_norm_emb.ckpt"
        state = {**state, "emb_mean": embedding_mean_of(mean_path, int(args["lin_neurons"]))}
        imported.files.append(mean_path)
    imported.generator = convert_state(state, RULES, build_generator(model), checkpoint, "SpeechBrain ECAPA_TDNN")
    return imported


def instance(hparams: dict, key: str, cls: str, path: Path) -> dict:
    """The arguments of the `!new:<cls>` object at `key` of a hyperparams.yaml."""
    node = hparams.get(key)
    if not isinstance(node, dict) or node.get("!") != f"!new:{cls}":
        found = node.get("!") if isinstance(node, dict) else node
        raise InputError(path, f"'{key}' is {found!r}, not !new:{cls} (an architecture this import knows)")
    return node


def resolve(hparams: dict, value: object, path: Path, key: str) -> object:
    """A value with hyperpyyaml's `!ref <name>` replaced by the top-level value it names."""
    if isinstance(value, dict) and value.get("!") == "!ref":
        text = str(value.get("value", "")).strip()
        name = text[1:-1] if text.startswith("<") and text.endswith(">") else None
        if name is None or name not in hparams:
            raise InputError(path, f"'{key}': !ref {text} is not a reference to a top-level value")
        return resolve(hparams, hparams[name], path, key)
    if isinstance(value, list):
        return [resolve(hparams, item, path, key) for item in value]
    return value


def front_end(hparams: dict, path: Path):
    """SpeechBrain's Fbank and sentence mean normalisation, as the hyperparams build them."""
    node = instance(hparams, "compute_features", FBANK, path)
    args = {key: resolve(hparams, value, path, f"compute_features.{key}") for key, value in node.items() if key != "!"}
    for key, allowed in (("deltas", False), ("context", False), ("filter_shape", "triangular")):
        if args.get(key, allowed) != allowed:
            raise InputError(path, f"compute_features.{key}: {args[key]!r} is not supported (only {allowed!r})")
    norm = instance(hparams, "mean_var_norm", NORMALISATION, path)
    if norm.get("norm_type", "global") != "sentence" or norm.get("std_norm", True):
        raise InputError(path, "mean_var_norm: only norm_type sentence with std_norm False (a per-utterance mean "
                         "subtraction) is supported")
    return features_config("speechbrain", sample_rate=args.get("sample_rate"), num_mel_bins=args.get("n_mels", 40),
                           n_fft=args.get("n_fft"), frame_length_ms=args.get("win_length"),
                           frame_shift_ms=args.get("hop_length"), f_min=args.get("f_min"), f_max=args.get("f_max"))


def embedding_mean_of(path: Path, size: int) -> torch.Tensor:
    """The global embedding mean of a SpeechBrain InputNormalization's saved statistics (glob_mean)."""
    require_file(path)
    try:
        stats = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputError(path, f"not readable statistics ({str(err).strip().splitlines()[0]})") from None
    stats = mapping_at(stats, path, "the file")
    mean = stats.get("glob_mean")
    if not isinstance(mean, torch.Tensor) or mean.numel() != size:
        raise InputError(path, f"'glob_mean' must be a tensor of {size} values, not {mean!r:.60}")
    return mean.reshape(size).float()


def _bn(prefix: str, target: str) -> Rule:
    return Rule(prefix + r"\.norm\.norm\.(.+)", target + r".\1")


RULES = [
    Rule(r"blocks\.0\.conv\.conv\.(.+)", r"layer1.conv.\1"), _bn(r"blocks\.0", "layer1.bn"),
    Rule(r"blocks\.(\d)\.(tdnn\d)\.conv\.conv\.(.+)", r"blocks.<1-1>.\2.conv.\3"),
    Rule(r"blocks\.(\d)\.(tdnn\d)\.norm\.norm\.(.+)", r"blocks.<1-1>.\2.bn.\3"),
    Rule(r"blocks\.(\d)\.res2net_block\.blocks\.(\d+)\.conv\.conv\.(.+)", r"blocks.<1-1>.res2conv.convs.\2.conv.\3"),
    Rule(r"blocks\.(\d)\.res2net_block\.blocks\.(\d+)\.norm\.norm\.(.+)", r"blocks.<1-1>.res2conv.convs.\2.bn.\3"),
    Rule(r"blocks\.(\d)\.se_block\.conv(\d)\.conv\.(.+)", r"blocks.<1-1>.se.fc\2.\3", squeeze_kernel),
    Rule(r"mfa\.conv\.conv\.(.+)", r"mfa.\1"), _bn(r"mfa", "mfa_bn"),
    Rule(r"asp\.tdnn\.conv\.conv\.(.+)", r"pooling.attention.0.\1"), _bn(r"asp\.tdnn", "pooling.attention.2"),
    Rule(r"asp\.conv\.conv\.(.+)", r"pooling.attention.4.\1"),
    Rule(r"asp_bn\.norm\.(.+)", r"pooling_bn.\1"),
    Rule(r"fc\.conv\.(.+)", r"fc.\1", squeeze_kernel),
    Rule(r"emb_mean", "emb_mean"),
]
