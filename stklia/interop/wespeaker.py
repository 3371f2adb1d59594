"""WeSpeaker's published models: `config.yaml` (model, model_args, dataset_args.fbank_args) with `avg_model.pt`
(or any one .pt), or the hub copies' `pytorch_model.bin` (the same tensors under a `resnet.` prefix) with their
`config.yaml` (pyannote's form: model._target_ ...WeSpeakerResNet34, num_mel_bins, ...).

Architectures (wespeaker/models/): ResNet18 ... ResNet293, ECAPA_TDNN[_GLOB]_c512/_c1024, CAMPPlus, XVEC. Their
pooling functions TSTP (std = sqrt(unbiased variance + 1e-7)), TAP, TSDP and ASTP (attention weights, variance
E[x^2] - mean^2 floored at 1e-7) map onto stklia's poolings with those options; their ResNets and CAM++ read the
features as a (frequency, time) image, whose 2-D kernels are transposed for stklia's (time, frequency) one.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from stklia.core.errors import InputError
from stklia.interop.files import (
    Rule,
    convert_state,
    find_file,
    load_tensors,
    mapping_at,
    read_yaml_mapping,
    require_file,
    squeeze_kernel,
    transpose_time_frequency,
)
from stklia.interop.presets import Imported, build_generator, features_config, model_config

RESNETS = {"18": "resnet18", "34": "resnet34", "50": "resnet50", "101": "resnet101", "221": "resnet221",
           "293": "resnet293"}
TSTP = {"std_floor": 0.0, "std_offset": 1e-7}  # sqrt(torch.var(x) + 1e-7)
ASTP = {**TSTP, "raw_moments": True, "weighted_floor": 1e-7}
POOLINGS = {"TSTP": ("statistical", TSTP), "TAP": ("mean", {}), "TSDP": ("std", TSTP)}
CHECKPOINTS = ("avg_model.pt", "pytorch_model.bin", "final_model.pt")
HUB_PREFIXES = ("resnet.", "module.", "model.")  # pyannote's wrapper, DataParallel, ...


def read_wespeaker(path: Path) -> Imported:
    """A WeSpeaker model: `path` is its folder (config.yaml + a checkpoint) or its checkpoint file (config.yaml
    beside it)."""
    folder = path if path.is_dir() else path.parent
    checkpoint = find_file(folder, CHECKPOINTS, "WeSpeaker checkpoint") if path.is_dir() else require_file(path)
    config_path = require_file(folder / "config.yaml")
    config = read_yaml_mapping(config_path)
    name, args = architecture(config, config_path)
    state = strip_prefix(load_tensors(checkpoint))
    imported = describe(name, args, state, config, config_path, checkpoint)
    generator = build_generator(imported.model)
    imported.generator = convert_state(state, rules(name, args, imported), generator, checkpoint,
                                       f"WeSpeaker {name}", ignored=r"projection\..*")
    imported.files = [config_path, checkpoint]
    return imported


def architecture(config: dict, path: Path) -> tuple[str, dict]:
    """(WeSpeaker's model name, its model_args) of a WeSpeaker config.yaml, or of a hub copy's (pyannote's)."""
    model = config.get("model")
    if isinstance(model, dict):  # pyannote's form: model: {_target_: ...WeSpeakerResNet34, num_mel_bins: 80, ...}
        target = str(model.get("_target_", ""))
        found = re.search(r"WeSpeakerResNet(\d+)$", target)
        if not found:
            raise InputError(path, f"model._target_ '{target}' is not a WeSpeaker model this import knows")
        return f"ResNet{found.group(1)}", {"feat_dim": model.get("num_mel_bins", 80), "embed_dim": 256,
                                           "pooling_func": "TSTP", "fbank": model}
    if not isinstance(model, str):
        raise InputError(path, "has no 'model' naming a WeSpeaker architecture")
    return model, mapping_at(config.get("model_args"), path, "model_args")


def strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in HUB_PREFIXES:
        if all(key.startswith(prefix) for key in state):
            return {key[len(prefix):]: value for key, value in state.items()}
    return state


def weight(state: dict[str, torch.Tensor], key: str, path: Path) -> torch.Tensor:
    if key not in state:
        raise InputError(path, f"has no tensor '{key}'")
    return state[key]


def describe(name: str, args: dict, state: dict, config: dict, config_path: Path, checkpoint: Path) -> Imported:
    """The stklia model and front end of WeSpeaker model `name`: sizes from model_args, widths the
    constructors do not take (m_channels, ECAPA's channels) from the tensors."""
    feat_dim = int(args.get("feat_dim", 80))
    pooling_func = args.get("pooling_func", "ASTP" if name.startswith("ECAPA") else "TSTP")
    if args.get("two_emb_layer"):
        raise InputError(config_path, "model_args.two_emb_layer: true is not supported (the published models "
                         "have one embedding layer)")
    resnet = re.fullmatch(r"ResNet(\d+)", name)
    if resnet and resnet.group(1) in RESNETS:
        preset = RESNETS[resnet.group(1)]
        pooling, options = pooling_of(pooling_func, config_path)
        model = model_config(preset, feat_dim, emb_size=args.get("embed_dim"), pooling=pooling,
                             pooling_options=options, emb_bn=False,
                             base_channels=int(weight(state, "conv1.weight", checkpoint).shape[0]))
    elif re.fullmatch(r"ECAPA_TDNN(_GLOB)?_c(512|1024)", name):
        preset = "ecapa_tdnn" if name.endswith("512") else "ecapa_tdnn_c1024"
        if pooling_func == "ASTP":
            pooling = "channel_context_attentive" if "_GLOB" in name else "attentive"
            options = ASTP if "_GLOB" in name else {**ASTP, "channel_dependent": True}
        else:
            pooling, options = pooling_of(pooling_func, config_path)
        model = model_config(preset, feat_dim, emb_size=args.get("embed_dim"), pooling=pooling,
                             pooling_options=options, emb_bn=bool(args.get("emb_bn", False)),
                             channels=int(weight(state, "layer1.conv.weight", checkpoint).shape[0]))
    elif name == "CAMPPlus":
        preset = "campplus"
        pooling, options = pooling_of(pooling_func, config_path)
        model = model_config(preset, feat_dim, emb_size=args.get("embed_dim"), pooling=pooling,
                             pooling_options=options, growth_rate=args.get("growth_rate"),
                             bottleneck_scale=args.get("bn_size"), channels=args.get("init_channels"))
    elif name == "XVEC":
        preset = "xvector"
        hidden, stats = int(args.get("hid_dim", 512)), int(args.get("stats_dim", 1500))
        pooling, options = pooling_of(pooling_func, config_path)
        emb = int(args.get("embed_dim", 512))
        model = model_config(preset, feat_dim, channels=[hidden] * 4 + [stats], segment_channels=emb, emb_size=emb,
                             frame_padding="valid", pooling=pooling, pooling_options=options)
    else:
        raise InputError(config_path, f"model '{name}' is not an architecture this import knows (ResNet18 ... "
                         "ResNet293, ECAPA_TDNN[_GLOB]_c512/_c1024, CAMPPlus, XVEC)")
    return Imported("wespeaker", f"WeSpeaker {name}", preset, model, "wespeaker",
                    front_end(config, args, config_path, feat_dim), cmn=True)


def pooling_of(pooling_func: str, path: Path) -> tuple[str, dict]:
    if pooling_func not in POOLINGS:
        raise InputError(path, f"model_args.pooling_func '{pooling_func}' is not one this import knows "
                         f"({', '.join(POOLINGS)}, and ASTP for ECAPA-TDNN)")
    return POOLINGS[pooling_func]


def front_end(config: dict, args: dict, path: Path, feat_dim: int):
    """WeSpeaker's fbank with the config's values (dataset_args.fbank_args, resample_rate)."""
    if "fbank" in args:  # pyannote's form
        fbank = args["fbank"]
        if fbank.get("window_type", "hamming") != "hamming":
            raise InputError(path, f"model.window_type '{fbank['window_type']}': WeSpeaker's models use hamming")
        return features_config("wespeaker", num_mel_bins=feat_dim, sample_rate=fbank.get("sample_rate"),
                               frame_length_ms=fbank.get("frame_length"), frame_shift_ms=fbank.get("frame_shift"))
    dataset = mapping_at(config.get("dataset_args"), path, "dataset_args")
    fbank = mapping_at(dataset.get("fbank_args"), path, "dataset_args.fbank_args")
    return features_config("wespeaker", num_mel_bins=fbank.get("num_mel_bins", feat_dim),
                           sample_rate=dataset.get("resample_rate"), frame_length_ms=fbank.get("frame_length"),
                           frame_shift_ms=fbank.get("frame_shift"), dither=fbank.get("dither"))


def res2net_rotation(channels: int, scale: int = 8) -> torch.Tensor:
    """WeSpeaker's Res2Net convolves its first channel group and passes the last one through; stklia's (Gao et
    al.'s) passes the first. The same computation with the groups rotated by one: stklia's channel c is
    WeSpeaker's rotation[c], before the Res2Net convolution (tdnn1's outputs) and after it (tdnn2's inputs)."""
    return torch.roll(torch.arange(channels), channels // scale)


def rules(name: str, args: dict, imported: Imported) -> list[Rule]:
    bn = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
    if name.startswith("ResNet"):
        return [Rule(r"conv1\.weight", "conv1.weight", transpose_time_frequency),
                Rule(r"bn1\." + bn, r"bn1.\1"),
                Rule(r"layer(\d)\.(\d+)\.(conv\d)\.weight", r"stages.<1-1>.\2.\3.weight", transpose_time_frequency),
                Rule(r"layer(\d)\.(\d+)\.(bn\d)\." + bn, r"stages.<1-1>.\2.\3.\4"),
                Rule(r"layer(\d)\.(\d+)\.shortcut\.0\.weight", r"stages.<1-1>.\2.downsample.0.weight",
                     transpose_time_frequency),
                Rule(r"layer(\d)\.(\d+)\.shortcut\.1\." + bn, r"stages.<1-1>.\2.downsample.1.\3"),
                Rule(r"seg_1\.(weight|bias)", r"fc.\1")]
    if name.startswith("ECAPA"):
        channels = int(imported.model.channels)
        rotation = res2net_rotation(channels, int(imported.model.scale))
        return [Rule(r"layer1\.(conv|bn)\.(.+)", r"layer1.\1.\2"),
                Rule(r"layer(\d)\.se_res2block\.0\.conv\.(weight|bias)", r"blocks.<1-2>.tdnn1.conv.\2",
                     lambda w: w[rotation]),
                Rule(r"layer(\d)\.se_res2block\.0\.bn\.(.+)", r"blocks.<1-2>.tdnn1.bn.\2",
                     lambda w: w[rotation] if w.dim() else w),
                Rule(r"layer(\d)\.se_res2block\.1\.convs\.(\d+)\.(.+)", r"blocks.<1-2>.res2conv.convs.\2.conv.\3"),
                Rule(r"layer(\d)\.se_res2block\.1\.bns\.(\d+)\.(.+)", r"blocks.<1-2>.res2conv.convs.\2.bn.\3"),
                Rule(r"layer(\d)\.se_res2block\.2\.conv\.weight", r"blocks.<1-2>.tdnn2.conv.weight",
                     lambda w: w[:, rotation]),
                Rule(r"layer(\d)\.se_res2block\.2\.(conv\.bias|bn\..+)", r"blocks.<1-2>.tdnn2.\2"),
                Rule(r"layer(\d)\.se_res2block\.3\.linear(\d)\.(.+)", r"blocks.<1-2>.se.fc\2.\3"),
                Rule(r"conv\.(weight|bias)", r"mfa.\1"),
                Rule(r"pool\.linear1\.(.+)", r"pooling.attention.0.\1"),
                Rule(r"pool\.linear2\.(.+)", r"pooling.attention.2.\1"),
                Rule(r"bn\.(.+)", r"pooling_bn.\1"),
                Rule(r"linear\.(.+)", r"fc.\1"),
                Rule(r"bn2\.(.+)", r"bn.\1")]
    if name == "CAMPPlus":
        return campplus_rules()
    return [Rule(r"frame_(\d)\.conv_1d\.(.+)", r"frame_layers.<1-1>.conv.\2"),
            Rule(r"frame_(\d)\.bn\.(.+)", r"frame_layers.<1-1>.bn.\2"),
            Rule(r"seg_1\.(.+)", r"segment6.\1"), Rule(r"seg_bn_1\.(.+)", r"bn6.\1"),
            Rule(r"seg_2\.(.+)", r"segment7.\1")]


def campplus_rules() -> list[Rule]:
    """CAM++'s tensors, named alike by WeSpeaker and 3D-Speaker (head: the FCM; xvector: the D-TDNN)."""
    return [Rule(r"head\.(conv\d)\.weight", r"front.\1.weight", transpose_time_frequency),
            Rule(r"head\.(bn\d)\.(.+)", r"front.\1.\2"),
            Rule(r"head\.layer(\d)\.(\d+)\.(conv\d)\.weight", r"front.stages.<1-1>.\2.\3.weight",
                 transpose_time_frequency),
            Rule(r"head\.layer(\d)\.(\d+)\.(bn\d)\.(.+)", r"front.stages.<1-1>.\2.\3.\4"),
            Rule(r"head\.layer(\d)\.(\d+)\.shortcut\.0\.weight", r"front.stages.<1-1>.\2.downsample.0.weight",
                 transpose_time_frequency),
            Rule(r"head\.layer(\d)\.(\d+)\.shortcut\.1\.(.+)", r"front.stages.<1-1>.\2.downsample.1.\3"),
            Rule(r"xvector\.tdnn\.linear\.weight", "tdnn.0.weight"),
            Rule(r"xvector\.tdnn\.nonlinear\.batchnorm\.(.+)", r"tdnn.1.\1"),
            Rule(r"xvector\.block(\d)\.tdnnd(\d+)\.nonlinear1\.batchnorm\.(.+)",
                 r"blocks.<1-1>.layers.<2-1>.bottleneck.0.0.\3"),
            Rule(r"xvector\.block(\d)\.tdnnd(\d+)\.linear1\.weight", r"blocks.<1-1>.layers.<2-1>.bottleneck.1.weight"),
            Rule(r"xvector\.block(\d)\.tdnnd(\d+)\.nonlinear2\.batchnorm\.(.+)",
                 r"blocks.<1-1>.layers.<2-1>.bottleneck.2.0.\3"),
            Rule(r"xvector\.block(\d)\.tdnnd(\d+)\.cam_layer\.linear_local\.(.+)",
                 r"blocks.<1-1>.layers.<2-1>.cam.local.\3"),
            Rule(r"xvector\.block(\d)\.tdnnd(\d+)\.cam_layer\.linear(\d)\.(.+)",
                 r"blocks.<1-1>.layers.<2-1>.cam.fc\3.\4"),
            Rule(r"xvector\.transit(\d)\.nonlinear\.batchnorm\.(.+)", r"blocks.<1-1>.transit.0.0.\2"),
            Rule(r"xvector\.transit(\d)\.linear\.weight", r"blocks.<1-1>.transit.1.weight"),
            Rule(r"xvector\.out_nonlinear\.batchnorm\.(.+)", r"out.0.\1"),
            Rule(r"xvector\.dense\.linear\.weight", "fc.weight", squeeze_kernel),
            Rule(r"xvector\.dense\.nonlinear\.batchnorm\.(.+)", r"bn.\1")]
