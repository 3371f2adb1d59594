"""The scoring options of a test, and the back-end statistics they need: fitted once on the embeddings of
a named data set, stored under the model dir, reused by later tests of the same checkpoint.

Each statistics file (`<model_dir>/backends/<checkpoint>/<name>.npz`) has a `<name>.json` beside it
that records what it was fitted on (the options, the data's directories and a digest of its
utterances, speakers and feature entries); a file is reused only when that record matches, so
changed data or options refit it instead of silently scoring with stale statistics. The same holds for
the statistics adapted to unlabelled in-domain data (`<name>-adapt_<data>.npz`, whose record holds the fitted
file's and the in-domain data's) and for AS-norm cohorts reduced to one mean embedding per speaker
(`cohort_<data>.npz`): a million-utterance cohort is embedded once per checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from stklia.core.atomic import file_stem, write_json
from stklia.core.errors import InputError
from stklia.data.kaldi import DataSet
from stklia.evaluation.backends.cohort import Cohort
from stklia.evaluation.backends.normalize import KINDS, EmbeddingNormalizer
from stklia.evaluation.backends.plda import PldaBackend
from stklia.evaluation.backends.scorer import Scorer
from stklia.evaluation.embeddings import Embedder

log = logging.getLogger(__name__)

BACKENDS = ("cosine", "plda")


@dataclass(frozen=True)
class ScoringOptions:
    """The `scoring` node of stklia/conf/commands/test.yaml."""

    backend: str = "cosine"
    normalize: str = "none"
    data: str = "train"  # a split of the experiment or a Kaldi dir: what the statistics are fitted on
    lda_dim: int | None = None  # LDA first (whitening, PLDA)
    num_em_iters: int = 10
    adapt: str | None = None  # unlabelled in-domain data (a split or a Kaldi dir) the statistics are adapted to
    within_covar_scale: float = 0.3  # PLDA adaptation: the share of the excess in-domain variance given to W
    between_covar_scale: float = 0.7  # ... and to B (Kaldi's ivector-adapt-plda defaults)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise InputError("scoring.backend", f"'{self.backend}' is not one of {', '.join(BACKENDS)}")
        if self.normalize not in KINDS:
            raise InputError("scoring.normalize", f"'{self.normalize}' is not one of {', '.join(KINDS)}")
        if self.lda_dim is not None and (self.lda_dim < 1 or (self.backend != "plda" and self.normalize != "whiten")):
            raise InputError("scoring.lda_dim", "a positive dimension, for scoring.normalize=whiten or "
                                                "scoring.backend=plda only")
        if self.num_em_iters < 1:
            raise InputError("scoring.num_em_iters", f"must be at least 1, not {self.num_em_iters}")
        if self.adapt is not None and self.plain:
            raise InputError("scoring.adapt", "adapts the back-end's statistics: cosine scoring has none unless "
                                              "scoring.normalize=mean or whiten (or use scoring.backend=plda)")
        if min(self.within_covar_scale, self.between_covar_scale) < 0:
            raise InputError("scoring.within_covar_scale", f"and scoring.between_covar_scale must be >= 0, not "
                                                           f"{self.within_covar_scale} and {self.between_covar_scale}")

    @property
    def plain(self) -> bool:
        """Cosine of the raw embeddings: no statistics needed."""
        return self.backend == "cosine" and self.normalize == "none"


@dataclass(frozen=True)
class Scoring:
    """A ready scorer, the suffix of its results' name ("" for plain cosine), and what the results record."""

    scorer: Scorer = Scorer()
    tag: str = ""
    summary: dict[str, Any] = field(default_factory=lambda: {"backend": "cosine", "normalize": "none"})


class Stored(Protocol):
    def save(self, path: Path) -> None: ...


T = TypeVar("T", bound=Stored)


def _stored(path: Path, record: dict[str, Any], load: Callable[[Path], T], fit: Callable[[], T]) -> T:
    """The statistics in `path` if its record matches, else freshly fitted and stored with the record."""
    record_path = path.with_suffix(".json")
    if path.is_file() and record_path.is_file() and json.loads(record_path.read_text()) == record:
        log.info("reusing %s", path)
        return load(path)
    stats = fit()
    stats.save(path)
    write_json(record_path, record)
    log.info("fitted %s", path)
    return stats


def data_record(data: DataSet) -> dict[str, Any]:
    """What identifies a data set: its directories, size and a digest of its utterances, speakers and entries."""
    digest = hashlib.sha256("\n".join(f"{u} {data.utt2spk[u]} {data.source(u)}" for u in data.utts).encode())
    return {"dirs": sorted({str(path.parent) for path, _ in data.origin.values()}), "utterances": len(data.utts),
            "speakers": len(data.speakers), "sha256": digest.hexdigest()}


ADAPT_KEYS = ("adapt", "within_covar_scale", "between_covar_scale")  # options of the adaptation, not of the fit


def prepare_scoring(options: ScoringOptions, data: DataSet | None, data_name: str, embed: Embedder,
                    store: Path, adapt: tuple[DataSet, str] | None = None) -> Scoring:
    """The Scorer of `options`, its statistics fitted on embed(data) or reused from `store`, then adapted to the
    unlabelled data `adapt` (a data set and its name) when options.adapt names it. `data` may be None for plain
    cosine."""
    if options.plain:
        return Scoring()
    if data is None:
        raise ValueError("scoring statistics need a data set")
    if (adapt is None) != (options.adapt is None):
        raise ValueError("scoring.adapt and the adaptation data go together")
    name = file_stem(data_name)
    record = {"data": data_record(data)}
    speakers = [data.utt2spk[u] for u in data.utts]

    def fitted(fit: Callable[[], T], what: str = f"scoring.data ({data_name})") -> Callable[[], T]:
        def run() -> T:
            try:
                return fit()
            except ValueError as err:  # e.g. too few utterances per speaker for LDA / PLDA
                raise InputError(what, str(err)) from None
        return run

    whiten_lda = options.lda_dim if options.normalize == "whiten" else None
    normalizer_stem = "" if options.normalize == "none" else (
        options.normalize + (f"-lda{whiten_lda}" if whiten_lda else ""))
    plda_stem = "" if options.backend != "plda" else (
        "plda" + (f"-lda{options.lda_dim}" if options.lda_dim else "")
        + (f"-em{options.num_em_iters}" if options.num_em_iters != 10 else ""))
    tag = "+".join(stem for stem in (plda_stem, normalizer_stem) if stem)  # e.g. plda-lda200+mean
    normalizer, plda, files = None, None, {}
    records: dict[str, dict[str, Any]] = {}
    if normalizer_stem:
        path = store / f"{normalizer_stem}_{name}.npz"
        records["normalizer"] = {**record, "normalize": options.normalize, "lda_dim": whiten_lda}
        normalizer = _stored(
            path, records["normalizer"], EmbeddingNormalizer.load,
            fitted(lambda: EmbeddingNormalizer.fit(embed(data), options.normalize, speakers, whiten_lda)))
        files["normalizer"] = path
    if plda_stem:
        path = store / f"{tag}_{name}.npz"  # fitted on the normalised embeddings
        def plda_input() -> np.ndarray:
            return normalizer(embed(data)) if normalizer is not None else embed(data)

        records["plda"] = {**record, "options": {k: v for k, v in asdict(options).items() if k not in ADAPT_KEYS}}
        plda = _stored(path, records["plda"], PldaBackend.load,
                       fitted(lambda: PldaBackend.fit(plda_input(), speakers, options.lda_dim, options.num_em_iters)))
        files["plda"] = path
    tag = tag if options.data == "train" else f"{tag}_{name}"
    summary = {**asdict(options), "data_dirs": record["data"]["dirs"]}
    if adapt is not None:
        in_domain, adapt_name = adapt
        suffix = f"-adapt_{file_stem(adapt_name)}"
        adapt_record = {"data": data_record(in_domain)}
        if plda is not None:
            adapt_record |= {key: getattr(options, key) for key in ADAPT_KEYS[1:]}
        summary |= {"adapt_dirs": adapt_record["data"]["dirs"], "fitted_files": {k: str(v) for k, v in files.items()}}
        files = {key: path.with_name(path.stem + suffix + path.suffix) for key, path in files.items()}
        records = {key: {"fitted": fitted_record, "adapt": adapt_record} for key, fitted_record in records.items()}
        what = f"scoring.adapt ({adapt_name})"
        if normalizer is not None:  # the in-domain mean (and whitening)
            normalizer = _stored(files["normalizer"], records["normalizer"], EmbeddingNormalizer.load,
                                 fitted(lambda: normalizer.adapt(embed(in_domain)), what))
        if plda is not None:  # PLDA adapted to the in-domain embeddings, normalised as the back-end's input
            def adapted_plda() -> PldaBackend:
                x = embed(in_domain) if normalizer is None else normalizer(embed(in_domain))
                return plda.adapt(x, options.within_covar_scale, options.between_covar_scale)

            plda = _stored(files["plda"], records["plda"], PldaBackend.load, fitted(adapted_plda, what))
        tag += suffix
    return Scoring(Scorer(normalizer, plda), tag, {**summary, "files": {k: str(v) for k, v in files.items()}})


def prepare_cohort(data: DataSet, embed: Embedder, store: Path) -> Cohort:
    """The AS-norm cohort `data` reduced to one mean embedding per speaker, reused from `store` when its record
    matches (`cohort_<dirs>.npz`)."""
    record = {"data": data_record(data)}
    name = "+".join(Path(d).name for d in record["data"]["dirs"])
    return _stored(store / f"cohort_{file_stem(name)}.npz", record, Cohort.load,
                   lambda: Cohort.of(embed(data), [data.utt2spk[u] for u in data.utts]))
