"""Embeddings of utterances: one code path for validation, test and extraction, plus writers."""

from __future__ import annotations

import os
from pathlib import Path

import kaldiio
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from stklia.data.datasets import Utterances
from stklia.data.kaldi import DataSet
from stklia.io import atomic_output

FORMATS = ("ark", "txt", "pt")


@torch.inference_mode()
def embed_utterances(generator: nn.Module, data: DataSet, utts: list[str], cmn: bool,
                     device: torch.device, num_workers: int = 0, progress: bool = True) -> np.ndarray:
    """Embeddings (len(utts), emb_size) of whole utterances, with the generator in eval mode."""
    loader = DataLoader(Utterances(data, utts, cmn), batch_size=None, num_workers=num_workers)
    was_training = generator.training
    generator.eval()
    out = np.empty((len(utts), generator.emb_size), dtype=np.float32)
    try:
        for i, feats in enumerate(tqdm(loader, desc="embeddings", disable=not progress, leave=False)):
            out[i] = generator(feats[None].to(device)).float().cpu().numpy()
    finally:
        generator.train(was_training)
    return out


def write_embeddings(out_dir: str | os.PathLike, utts: list[str], emb: np.ndarray, fmt: str) -> list[Path]:
    """Write embeddings as a Kaldi binary ark + scp, a Kaldi text ark, or a torch dict; return the files."""
    out_dir = Path(out_dir)
    if fmt == "ark":
        ark, scp = out_dir / "embeddings.ark", out_dir / "embeddings.scp"
        with atomic_output(scp) as tmp_scp, atomic_output(ark) as tmp_ark:  # ark lands first
            kaldiio.save_ark(str(tmp_ark), dict(zip(utts, emb)), scp=str(tmp_scp))
            # the scp must point at the final ark name, not the temporary one
            tmp_scp.write_text(tmp_scp.read_text().replace(f"{tmp_ark}:", f"{ark.resolve()}:"))
        return [ark, scp]
    if fmt == "txt":
        txt = out_dir / "embeddings.txt"
        with atomic_output(txt) as tmp:
            kaldiio.save_ark(str(tmp), dict(zip(utts, emb)), text=True)
        return [txt]
    if fmt == "pt":
        pt = out_dir / "embeddings.pt"
        with atomic_output(pt) as tmp:
            torch.save({u: torch.from_numpy(e.copy()) for u, e in zip(utts, emb)}, tmp)
        return [pt]
    raise ValueError(f"unknown format '{fmt}', choose one of: {', '.join(FORMATS)}")
