"""`python -m stklia.export model_dir=DIR format=torchscript|onnx [convention=stklia|wespeaker] [frontend=true]
[checkpoint=...] [out=FILE]`.

Writes a standalone generator, features (batch, frames, dims) -> embeddings (batch, emb_size),
with the number of frames (and the batch size) dynamic and the training's mean normalisation
built in. It needs neither stklia nor Hydra to run: `torch.jit.load` or onnxruntime.

ONNX graphs follow a naming convention: stklia's (input `feats`, output `embedding`) or WeSpeaker's runtime's
(input `feats` (batch, frames, dims), output `embs`, and the metadata sherpa-onnx's speaker embedding extractor
reads: framework, sample_rate, output_dim, normalize_samples, feature_normalize_type), so that their runtimes run a
stklia model. With `frontend=true` the graph takes waveforms instead, `wav` (batch, samples) in [-1, 1] at the
model's sample rate, and computes the model's own front end.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from stklia.core.atomic import atomic_output
from stklia.core.errors import InputError, require_extra
from stklia.data.features import LogMelFeatures
from stklia.inference.model import SpeakerModel, StandaloneGenerator, load

log = logging.getLogger(__name__)

SUFFIXES = {"torchscript": ".pt", "onnx": ".onnx"}
# Shortest input exported models are traced and checked with: the ResNet halves frames 3 times.
MIN_FRAMES = 8
# (input, output) names of the ONNX graph by convention
CONVENTIONS = {"stklia": ("feats", "embedding"), "wespeaker": ("feats", "embs")}
WAVEFORM_INPUT = "wav"


class WaveformGenerator(nn.Module):
    """Waveforms (batch, samples) in [-1, 1] -> embeddings: the model's front end (no dither), its mean
    normalisation and its generator, for an ONNX graph that needs no feature code around it."""

    def __init__(self, features: LogMelFeatures, standalone: StandaloneGenerator):
        super().__init__()
        self.features, self.standalone = features, standalone

    def forward(self, wav: torch.Tensor) -> torch.Tensor:  # the argument's name is the ONNX input's (WAVEFORM_INPUT)
        return self.standalone(self.features.batch(wav * 32768))


def export_torchscript(embedder: StandaloneGenerator, path: Path) -> None:
    torch.jit.save(torch.jit.script(embedder), str(path))


@contextlib.contextmanager
def quiet_onnx_exporter() -> Iterator[None]:
    """The exporter's INFO pages (onnxscript's optimiser passes), its notes on torchvision operators a speaker
    model does not use, and torch.export's internal deprecation warnings are not the user's business."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [logger.level for logger in loggers]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module="copyreg")  # torch's LeafSpec notice
            for logger in loggers:
                logger.setLevel(logging.ERROR)
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def export_onnx(embedder: StandaloneGenerator, path: Path, features_per_frame: int, convention: str = "stklia",
                min_frames: int = MIN_FRAMES, metadata: dict[str, str] | None = None) -> None:
    """The ONNX graph of a features-in generator, input and output named by the convention (CONVENTIONS)."""
    # a batch of 2: traced with 1, an operation that treats size 1 specially (a convolution of a channel
    # slice, in ECAPA-TDNN's Res2Net) would fix the exported batch size at 1
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("frames", min=max(MIN_FRAMES, min_frames))}
    save_onnx(embedder, torch.randn(2, 100, features_per_frame), "feats", dims, CONVENTIONS[convention][1], path,
              metadata)


def export_waveform_onnx(embedder: WaveformGenerator, path: Path, min_frames: int, convention: str = "stklia",
                         metadata: dict[str, str] | None = None) -> None:
    """The ONNX graph of a waveform-in generator (`wav`: batch, samples), its output named by the convention."""
    features = embedder.features
    dims = {0: torch.export.Dim("batch"),
            1: torch.export.Dim("samples", min=features.num_samples(max(MIN_FRAMES, min_frames)))}
    save_onnx(embedder, torch.randn(2, features.num_samples(100)) * 0.1, WAVEFORM_INPUT, dims,
              CONVENTIONS[convention][1], path, metadata)


def save_onnx(module: nn.Module, example: torch.Tensor, input_name: str, dims: dict, output_name: str, path: Path,
              metadata: dict[str, str] | None) -> None:
    """`module` (whose forward's argument is named `input_name`) exported with dynamic `dims`, and `metadata`."""
    with quiet_onnx_exporter():
        program = torch.onnx.export(module.eval(), (example,), input_names=[input_name], output_names=[output_name],
                                    dynamic_shapes={input_name: dims}, dynamo=True, verbose=False)
    if metadata:
        program.model.metadata_props.update(metadata)
    program.save(str(path))


def sherpa_metadata(model: SpeakerModel) -> dict[str, str]:
    """What sherpa-onnx's speaker embedding extractor reads of a WeSpeaker-convention graph: the samples it
    computes features of are on the int16 scale (normalize_samples 0) unless the front end reads [-1, 1]; the
    graph subtracts the features' mean itself, which the runtime may do again (it changes nothing)."""
    scale = getattr(model.features, "sample_scale", 1.0) if model.features is not None else 1.0
    return {"framework": "wespeaker", "output_dim": str(model.emb_size),
            "sample_rate": str(model.features.sample_rate if model.features is not None else 16000),
            "normalize_samples": "0" if scale == 1.0 else "1", "feature_normalize_type": "",
            "language": "unknown", "comment": "exported by stklia", "url": ""}


def export(model_dir: str | os.PathLike, fmt: str, checkpoint: str | int = "last",
           out: str | os.PathLike | None = None, convention: str = "stklia", frontend: bool = False) -> Path:
    """Export a checkpoint's generator; default file `<model_dir>/export/generator[-<convention>][-frontend]<.pt|
    .onnx>`."""
    if fmt not in SUFFIXES:
        raise InputError("format", f"'{fmt}' is not one of {', '.join(SUFFIXES)}")
    if convention not in CONVENTIONS:
        raise InputError("convention", f"'{convention}' is not one of {', '.join(CONVENTIONS)}")
    if fmt != "onnx" and (convention != "stklia" or frontend):
        raise InputError("format", "convention= and frontend= are options of format=onnx")
    if fmt == "onnx":
        require_extra("export", "format=onnx", "onnx", "onnxscript")
    model = load(model_dir, checkpoint)
    if frontend and model.features is None:
        raise InputError("frontend", "the model's config has no front end (data.features) to put in the graph")
    name = "generator" + ("" if convention == "stklia" else f"-{convention}") + ("-frontend" if frontend else "")
    path = Path(out) if out else Path(model_dir) / "export" / f"{name}{SUFFIXES[fmt]}"
    with atomic_output(path) as tmp:
        metadata = sherpa_metadata(model) if convention == "wespeaker" else None
        if fmt == "torchscript":
            export_torchscript(model.network, tmp)
        elif frontend:
            export_waveform_onnx(WaveformGenerator(model.features, model.network), tmp, model.min_frames, convention,
                                 metadata)
        else:
            export_onnx(model.network, tmp, model.features_per_frame, convention, model.min_frames, metadata)
    return path


def export_model(cfg: DictConfig) -> None:
    """The command (stklia/conf/commands/export.yaml)."""
    print(f"wrote {export(cfg.model_dir, cfg.format, cfg.checkpoint, cfg.out, cfg.convention, cfg.frontend)}")
