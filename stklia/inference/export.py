"""`python -m stklia.export model_dir=DIR format=torchscript|onnx [checkpoint=...] [out=FILE]`.

Writes a standalone generator, features (batch, frames, dims) -> embeddings (batch, emb_size),
with the number of frames (and the batch size) dynamic and the training's mean normalisation
built in. It needs neither stklia nor Hydra to run: `torch.jit.load` or onnxruntime.
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

from stklia.core.atomic import atomic_output
from stklia.core.errors import InputError, require_extra
from stklia.inference.model import StandaloneGenerator, load

log = logging.getLogger(__name__)

SUFFIXES = {"torchscript": ".pt", "onnx": ".onnx"}
# Shortest input exported models are traced and checked with: the ResNet halves frames 3 times.
MIN_FRAMES = 8


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


def export_onnx(embedder: StandaloneGenerator, path: Path, features_per_frame: int) -> None:
    # a batch of 2: traced with 1, an operation that treats size 1 specially (a convolution of a channel
    # slice, in ECAPA-TDNN's Res2Net) would fix the exported batch size at 1
    example = torch.randn(2, 100, features_per_frame)
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("frames", min=MIN_FRAMES)}
    with quiet_onnx_exporter():
        program = torch.onnx.export(embedder.eval(), (example,), input_names=["feats"], output_names=["embedding"],
                                    dynamic_shapes={"feats": dims}, dynamo=True, verbose=False)
    program.save(str(path))


def export(model_dir: str | os.PathLike, fmt: str, checkpoint: str | int = "last",
           out: str | os.PathLike | None = None) -> Path:
    """Export a checkpoint's generator; default file `<model_dir>/export/generator<.pt|.onnx>`."""
    if fmt not in SUFFIXES:
        raise InputError("format", f"'{fmt}' is not one of {', '.join(SUFFIXES)}")
    if fmt == "onnx":
        require_extra("export", "format=onnx", "onnx", "onnxscript")
    model = load(model_dir, checkpoint)
    path = Path(out) if out else Path(model_dir) / "export" / f"generator{SUFFIXES[fmt]}"
    with atomic_output(path) as tmp:
        if fmt == "torchscript":
            export_torchscript(model.network, tmp)
        else:
            export_onnx(model.network, tmp, model.features_per_frame)
    return path


def export_model(cfg: DictConfig) -> None:
    """The command (stklia/conf/commands/export.yaml)."""
    print(f"wrote {export(cfg.model_dir, cfg.format, cfg.checkpoint, cfg.out)}")
