"""3D-Speaker's CAM++ as ModelScope publishes it (speech_campplus_sv_en_voxceleb_16k): `configuration.json`
(model.model_config: fbank_dim, emb_size, sample_rate; model.pretrained_model: the checkpoint's name) and
`campplus_voxceleb.bin`, a state dict of modelscope.models.audio.sv.DTDNN.CAMPPlus (tensors named as WeSpeaker's
CAM++). Its statistics pooling takes the unbiased standard deviation with no floor."""

from __future__ import annotations

from pathlib import Path

from stklia.interop.files import convert_state, load_tensors, mapping_at, read_json_mapping, require_file
from stklia.interop.presets import Imported, build_generator, features_config, model_config
from stklia.interop.wespeaker import campplus_rules

POOLING = {"std_floor": 0.0}  # torch's x.std(dim=-1, unbiased=True)


def read_3dspeaker(path: Path) -> Imported:
    """`path`: the ModelScope folder (configuration.json + the checkpoint it names), or the checkpoint itself (its
    configuration.json beside it, if any)."""
    folder = path if path.is_dir() else path.parent
    config_path = folder / "configuration.json"
    config = read_json_mapping(config_path) if path.is_dir() or config_path.is_file() else {}
    model_node = mapping_at(config.get("model"), config_path, "model")
    values = mapping_at(model_node.get("model_config"), config_path, "model.model_config")
    checkpoint = require_file(folder / model_node.get("pretrained_model", "campplus_voxceleb.bin")
                              if path.is_dir() else path)
    feat_dim = int(values.get("fbank_dim", 80))
    model = model_config("campplus", feat_dim, emb_size=values.get("emb_size"), pooling="statistical",
                         pooling_options=POOLING)
    features = features_config("3dspeaker", num_mel_bins=feat_dim, sample_rate=values.get("sample_rate"))
    imported = Imported("3dspeaker", "3D-Speaker CAM++", "campplus", model, "3dspeaker", features, cmn=True)
    imported.generator = convert_state(load_tensors(checkpoint), campplus_rules(), build_generator(model), checkpoint,
                                       "3D-Speaker CAM++")
    imported.files = [*([config_path] if config else []), checkpoint]
    return imported
