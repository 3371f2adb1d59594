"""The peer toolkits' own code, as PyPI publishes it, for the tests that compare stklia with it (docs/pretrained.md).

Installed by `pip install --no-deps -r peers.txt` (.ci/run, the README): wespeaker-unofficial (WeSpeaker's model
modules), speechbrain, modelscope (3D-Speaker's CAM++) and torchaudio, whose front end (compliance.kaldi) WeSpeaker
and 3D-Speaker call. Their dependencies would replace torch or cannot load here, so two things are done, and
nothing else, to run the peers' code as published:

- torchaudio 2.11 is built for torch 2.11: its compiled library (torchaudio/lib/_torchaudio.so) does not load
  beside torch 2.13. torchaudio's `_extension` module, which loads it, is replaced by a stand-in that reports it
  absent, the state torchaudio itself is in when that library file is not there (its `_load_lib` returns False):
  the pure-torch parts (compliance.kaldi, and everything speechbrain and modelscope import) then load as they are.
- `wespeaker/__init__.py` imports WeSpeaker's command-line tool (silero_vad, s3prl, whisper, ...): the package is
  entered without running it, and its `wespeaker.models.*` modules (torch only) are imported as they are.

Peer code is never copied here: the models, poolings and front ends are theirs; the tests build them with random
weights, save them in the peer's file layout, and compare whole pipelines.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from conftest import require_system

PEERS = {"wespeaker": "wespeaker-unofficial", "speechbrain": "speechbrain", "modelscope": "modelscope",
         "torchaudio": "torchaudio"}
INSTALL = "pip install --no-deps -r peers.txt (and pip install -e \".[dev]\")"


def torchaudio_without_its_compiled_library() -> None:
    """Import torchaudio as it runs without its compiled library (see the module's docstring)."""
    if "torchaudio" in sys.modules:
        return
    stand_in = types.ModuleType("torchaudio._extension")
    stand_in._IS_TORCHAUDIO_EXT_AVAILABLE = False
    stand_in._IS_ALIGN_AVAILABLE = False
    stand_in.fail_if_no_align = lambda function: function
    stand_in._check_cuda_version = lambda: None
    sys.modules["torchaudio._extension"] = stand_in
    importlib.import_module("torchaudio")


def require_peer(package: str) -> None:
    """Skip (outside CI) or fail (CI=true) when a peer package is not installed, saying how to install it."""
    require_system(package in sys.modules or importlib.util.find_spec(package) is not None,
                   f"{PEERS[package]} is not installed: {INSTALL}")
    torchaudio_without_its_compiled_library()


def wespeaker_module(name: str) -> types.ModuleType:
    """`wespeaker.models.<name>` of the installed package, its package's __init__ not run."""
    require_peer("wespeaker")
    if "wespeaker" not in sys.modules:
        spec = importlib.util.find_spec("wespeaker")
        package = types.ModuleType("wespeaker")
        package.__path__ = [str(Path(spec.origin).parent)]
        sys.modules["wespeaker"] = package
    return importlib.import_module(f"wespeaker.models.{name}")


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """`model` in eval mode with random batch norm statistics and affine parameters: with the defaults (mean 0,
    variance 1, identity) a layer mapped to the wrong one could go unnoticed."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.3)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
                if module.affine:
                    module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                    module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.2)
    return model.eval()


def speech_like(seconds: float, seed: int, rate: int = 16000) -> np.ndarray:
    """int16 audio with a voice's spectrum: a pitch pulse train through formant resonances, amplitude-modulated,
    over noise (the parity tests need broadband, speech-level audio, not a language)."""
    from scipy import signal

    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    f0 = 110 + 40 * np.sin(2 * np.pi * 0.7 * np.arange(n) / rate + rng.uniform(0, 6))
    pulses = (np.diff(np.floor(np.cumsum(f0) / rate), prepend=0) > 0).astype(np.float64)
    voice = pulses
    for formant, width in ((700, 80), (1200, 90), (2600, 120)):
        b, a = signal.iirpeak(formant * rng.uniform(0.85, 1.15), formant / width, fs=rate)
        voice = voice + signal.lfilter(b, a, pulses)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.1 * np.arange(n) / rate + rng.uniform(0, 6)) ** 2
    x = voice * envelope + 0.02 * rng.standard_normal(n)
    return np.clip(x / np.abs(x).max() * 12000, -32768, 32767).astype(np.int16)


Transform = Callable[[torch.Tensor], torch.Tensor]


def outputs_of(model: nn.Module, names: list[str], run: Callable[[], object]) -> dict[str, torch.Tensor]:
    """The outputs of the named submodules of `model` while `run()` runs it."""
    found, hooks = {}, []
    for name in names:
        module = model.get_submodule(name)

        def keep(_module: nn.Module, _inputs: object, output: object, name: str = name) -> None:
            found[name] = (output[0] if isinstance(output, tuple) else output).detach().clone()

        hooks.append(module.register_forward_hook(keep))
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return found


def first_differing_layer(peer: nn.Module, ours: nn.Module, pairs: list[tuple[str, str, Transform | None]],
                          peer_feats: torch.Tensor, our_feats: torch.Tensor, run_peer: Callable[[], object],
                          tolerance: float = 1e-4) -> str:
    """Where two pipelines part: the front end, or the first (peer layer, stklia layer) pair whose outputs (stklia's
    brought to the peer's layout) differ by more than `tolerance` of the peer's largest value."""
    def apart(a: torch.Tensor, b: torch.Tensor) -> float:
        if a.numel() != b.numel():
            return float("inf")
        return float((a - b.reshape(a.shape)).abs().max() / a.abs().max().clamp(min=1e-12))

    if peer_feats.shape != our_feats.shape or apart(peer_feats, our_feats) > tolerance:
        return f"the front end (features {tuple(peer_feats.shape)} vs {tuple(our_feats.shape)})"
    theirs = outputs_of(peer, [p for p, _, _ in pairs], run_peer)
    with torch.no_grad():
        mine = outputs_of(ours, [o for _, o, _ in pairs], lambda: ours(our_feats))
    for peer_name, our_name, transform in pairs:
        a, b = theirs[peer_name], mine[our_name]
        b = transform(b) if transform else b
        difference = apart(a, b)
        if difference > tolerance:
            return f"peer layer '{peer_name}' vs stklia layer '{our_name}' (relative difference {difference:.2e})"
    return "no layer (the embeddings differ after the last compared layer)"
