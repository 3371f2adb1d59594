"""Deterministic synthetic multi-speaker corpus: the toolkit's built-in demo data set.

Real corpora cannot be shipped or downloaded at run time, so the demo recipe trains on
synthetic speech.  Each speaker is a source-filter voice (pitch range, vocal-tract
length, spectral tilt, jitter/shimmer, breathiness, glottal open quotient, formant
bandwidths, a personal high resonance and personal vowel realisations); each utterance
is a random syllable sequence with its own intonation and level, recorded through a
random channel with background noise.  The session variability keeps a trivial system
far from perfect (about 25% EER, see :func:`baseline_eer`), while a small ResNet learns
the speakers within minutes.

The output is three Kaldi data directories (``train``, ``eval``, ``test``) with disjoint
speakers, 16-bit wav files and Kaldi-compatible log-mel filterbanks; ``train_wav``, the train
recordings without features (read as audio, for online augmentation); ``augment/``, the
demo's stand-ins for MUSAN (``noise``, ``music``, ``babble`` of speakers outside every split)
and for simulated room impulse responses (``rirs``), as Kaldi dirs holding a ``wav.scp``; and
``test_noisy``, the test recordings reverberated and mixed with noise, music or babble from
held-out recordings (``augment_heldout/``), with the same trials: the condition that online
augmentation is for.

The ``heldout`` variant is a corpus for judging recipes tuned on the demo (``variant="heldout"``): only a
``test`` set and its ``test_noisy`` copy, of speakers drawn apart from every demo speaker, recorded in other
conditions (narrower bands, other microphones, noisier rooms: ``_HELDOUT_SESSION``), and corrupted with noise,
music, babble and rooms that no demo set holds.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import kaldiio
import numpy as np
from omegaconf import DictConfig
from scipy import ndimage, signal
from scipy.io import wavfile
from tqdm import tqdm

from stklia.core.config import demo_root
from stklia.core.errors import InputError
from stklia.core.progress import progress_bar
from stklia.data.augment import AddNoise, Reverb
from stklia.data.features import Fbank
from stklia.data.trials import read_trials
from stklia.evaluation.metrics import compute_eer

# Bump when the synthesis changes, so cached corpora are rebuilt.
_VERSION = 6  # 6: features by the torch fbank, augmentation by its torch application
_SPLITS = ("train", "eval", "test")
_TRIALS_SPLITS = ("eval", "test", "test_noisy")

# Vowel-like phone targets for an adult male: F1-F4 (Hz), then bandwidths B1-B4 (Hz).
# Peterson & Barney / Hillenbrand averages; the last two rows are nasal murmurs.
_VOWELS = np.array([
    [270, 2290, 3010, 3500, 60, 90, 150, 200],  # iy
    [390, 1990, 2550, 3500, 60, 100, 150, 200],  # ih
    [530, 1840, 2480, 3500, 60, 100, 150, 200],  # eh
    [660, 1720, 2410, 3500, 70, 110, 160, 200],  # ae
    [520, 1190, 2390, 3500, 70, 80, 150, 200],  # ah
    [730, 1090, 2440, 3500, 80, 90, 150, 200],  # aa
    [570, 840, 2410, 3500, 70, 80, 150, 200],  # ao
    [440, 1020, 2240, 3500, 60, 90, 150, 200],  # uh
    [300, 870, 2240, 3500, 60, 80, 150, 200],  # uw
    [490, 1350, 1690, 3500, 70, 100, 120, 200],  # er
    [480, 2090, 2690, 3600, 60, 100, 150, 200],  # ey
    [500, 900, 2300, 3400, 70, 80, 150, 200],  # ow
    [500, 1500, 2500, 3500, 70, 100, 150, 200],  # ax
    [280, 1000, 2200, 3300, 100, 200, 300, 400],  # m
    [280, 1700, 2600, 3400, 100, 200, 300, 400],  # n
], dtype=float)
# Noise-excited phones (fricatives), same layout.
_FRICATIVES = np.array([
    [3800, 5000, 6200, 7200, 600, 800, 1000, 1200],  # s
    [2200, 2800, 3800, 5000, 400, 500, 700, 900],  # sh
    [1500, 3000, 5000, 6500, 1500, 2000, 2500, 3000],  # f
    [600, 1500, 2500, 3500, 300, 300, 400, 500],  # h
], dtype=float)
# F6-F8 (Hz, bandwidth), scaled with the vocal tract: they stand in for the higher poles of a
# real vocal tract, which keep energy above F4 where speaker differences live.
_HIGHER_POLES = np.array([[5500, 500], [6500, 600], [7500, 700]], dtype=float)
_RADIATION = 0.7  # first-order high-frequency emphasis of the radiated speech
_FRICATIVE_GAIN = 0.3  # fricative excitation level relative to the voiced source
_VOWEL, _FRICATIVE, _SILENCE = 0, 1, 2
_SYNTH_RATE = 16000  # voices are designed at this rate, other sample rates are resampled

# Session (recording) variability, the knobs that set the difficulty: they were tuned so that
# the mean+std baseline of `baseline_eer` sits around 25% EER on the default test trials,
# while a small ResNet learns the speakers within minutes.
_SESSION = {
    "eq_db": 3.0,  # std of a smooth random EQ curve (one knot per octave)
    "tilt_db_per_octave": 1.5,  # channel tilt drawn in +-this
    "low_cut_hz": (60, 300),
    "high_cut": (0.34, 0.49),  # fraction of the sample rate (5.4-7.8 kHz at 16 kHz)
    "noise_colour": (0.3, 0.98),  # one-pole coefficient: white-ish to brown background noise
    "snr_db": (20, 40),
    "level_dbfs": (-31, -25),  # RMS level
}
# The heldout variant's recording conditions, outside the demo's: rougher microphones, narrower bands (3.8-5.6 kHz
# at 16 kHz), whiter and louder room noise, a wider range of levels.
_HELDOUT_SESSION = {"eq_db": 5.0, "tilt_db_per_octave": 3.0, "low_cut_hz": (150, 450), "high_cut": (0.24, 0.35),
                    "noise_colour": (-0.3, 0.6), "snr_db": (12, 30), "level_dbfs": (-40, -20)}
VARIANTS = ("demo", "heldout")
_HELDOUT_SPEAKERS = 2_000_000  # the heldout variant's speakers are drawn from here on: no demo speaker is one

# Augmentation sets: number of recordings and duration range (s) of each.
_AUGMENT_SETS = {"noise": (20, (2.0, 5.0)), "music": (10, (4.0, 8.0)), "babble": (20, (2.0, 4.0)),
                 "rirs": (20, (0.2, 0.8))}  # rirs: RT60 range
_BABBLE_SPEAKERS = 1_000_000  # babble voices are speakers from here on: in no split
_HELD_OUT = 1000  # augmentation recordings from this index on corrupt test_noisy and are never trained on
_HELDOUT_VARIANT_NOISES = 2000  # ... and from this index on, the heldout variant's test_noisy

SMALL_DEMO = {
    "num_train_speakers": 6, "num_eval_speakers": 3, "num_test_speakers": 4, "utts_per_speaker": 4,
    "test_utts_per_speaker": 4, "num_trials": 60, "num_eval_trials": 40, "duration_range": (0.8, 1.5),
}
"""Keyword arguments of :func:`make_demo` for a tiny corpus (tests, smoke runs)."""


@dataclass(frozen=True)
class _Speaker:
    f0: float  # mean pitch (Hz)
    f0_range: float  # intonation excursion (semitones)
    vtl: float  # formant scaling (shorter vocal tract -> higher formants)
    vowel_shift: np.ndarray  # personal multiplicative offsets of each vowel's F1-F4
    bandwidth: float  # formant bandwidth scaling (damping of the vocal tract)
    f5: float  # personal fixed resonance (Hz), as the hypopharyngeal cavities of real speakers
    tilt: float  # one-pole coefficient on the source: > 0 darker voice, < 0 brighter
    jitter: float  # relative period-to-period f0 perturbation
    shimmer: float  # relative period-to-period amplitude perturbation
    breath: float  # aspiration noise level relative to the voiced source
    open_quotient: float  # fraction of the glottal cycle with open glottis
    rate: float  # speaking-rate factor (phone durations are divided by it)


def _make_speaker(rng: np.random.Generator) -> _Speaker:
    """A random voice; half are female (higher pitch, shorter vocal tract)."""
    female = rng.random() < 0.5
    return _Speaker(
        f0=rng.uniform(170, 260) if female else rng.uniform(90, 150),
        f0_range=rng.uniform(1.0, 5.0),
        vtl=rng.uniform(1.02, 1.2) if female else rng.uniform(0.85, 1.03),
        vowel_shift=np.exp(rng.normal(0, 0.05, size=(len(_VOWELS), 4))),
        bandwidth=np.exp(rng.uniform(-0.4, 0.5)),
        f5=rng.uniform(3500, 6000),
        tilt=rng.uniform(-0.4, 0.85),
        jitter=rng.uniform(0.002, 0.03),
        shimmer=rng.uniform(0.02, 0.2),
        breath=rng.uniform(0.02, 0.5),
        open_quotient=rng.uniform(0.35, 0.85),
        rate=rng.uniform(0.8, 1.25),
    )


def _resonators(freqs: np.ndarray, bandwidths: np.ndarray, sr: int) -> np.ndarray:
    """Cascade of 2nd-order resonators (Klatt style, unity gain at DC) as an SOS array."""
    r = np.exp(-np.pi * bandwidths / sr)
    a1, a2 = -2 * r * np.cos(2 * np.pi * np.minimum(freqs, 0.45 * sr) / sr), r**2
    zeros = np.zeros(len(freqs))
    return np.stack([1 + a1 + a2, zeros, zeros, np.ones(len(freqs)), a1, a2], axis=1)


def _vowel_filter(spk: _Speaker, idx: int, rng: np.random.Generator, sr: int) -> np.ndarray:
    """The speaker's rendition of vowel ``idx`` (with a little token-to-token variation)."""
    freqs = _VOWELS[idx, :4] * spk.vtl * spk.vowel_shift[idx] * np.exp(rng.normal(0, 0.02, size=4))
    bandwidths = _VOWELS[idx, 4:] * spk.bandwidth
    return _resonators(np.concatenate([freqs, [spk.f5], _HIGHER_POLES[:, 0] * spk.vtl]),
                       np.concatenate([bandwidths, [250], _HIGHER_POLES[:, 1]]), sr)


def _glottal_source(spk: _Speaker, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Rosenberg glottal-flow derivative with intonation, jitter, shimmer, tilt and aspiration."""
    t = np.arange(n) / sr
    dur = n / sr
    knots = rng.normal(0, spk.f0_range / 2, size=int(dur * 3) + 2)  # ~3 pitch movements/s
    semitones = (np.interp(t, np.linspace(0, dur, len(knots)), knots)
                 + rng.normal(0, 0.5) - rng.uniform(0, 3) * t / dur)  # utt shift + declination
    jitter = rng.standard_normal(int(dur * spk.f0 * 2) + 2)[(t * spk.f0).astype(int)]
    f0 = spk.f0 * 2 ** (semitones / 12) * (1 + spk.jitter * jitter)
    phase = np.cumsum(f0) / sr
    period = phase.astype(int)
    frac = phase - period
    oq = spk.open_quotient
    tp = 0.65 * oq
    flow = np.where(frac < tp, 0.5 * (1 - np.cos(np.pi * frac / tp)),
                    np.where(frac < oq, np.cos(0.5 * np.pi * (frac - tp) / (oq - tp)), 0.0))
    flow *= 1 + spk.shimmer * rng.standard_normal(period[-1] + 1)[period]
    src = signal.lfilter([1 - spk.tilt], [1, -spk.tilt], np.diff(flow, prepend=0.0))
    src /= np.sqrt(np.mean(src**2)) + 1e-12
    return src + spk.breath * rng.standard_normal(n) * (0.5 + flow)  # pulsed aspiration


def _phones(spk: _Speaker, rng: np.random.Generator, n: int, sr: int) -> list[tuple[int, int, int]]:
    """Random syllables as (kind, inventory index, length in samples) segments, total length n.

    Syllables (optional fricative onset and coda around a vowel, occasional pauses) keep the
    voiced fraction of an utterance stable, as in real speech.
    """
    rate = spk.rate * rng.uniform(0.9, 1.1)
    segs = []

    def add(kind: int, size: int, low: float, high: float) -> None:
        segs.append((kind, int(rng.integers(size)), max(int(rng.uniform(low, high) / rate * sr), 1)))

    add(_SILENCE, 1, 0.05, 0.25)
    while sum(length for _, _, length in segs) < n:
        if rng.random() < 0.4:
            add(_FRICATIVE, len(_FRICATIVES), 0.05, 0.14)
        add(_VOWEL, len(_VOWELS), 0.07, 0.22)
        if rng.random() < 0.2:
            add(_FRICATIVE, len(_FRICATIVES), 0.05, 0.14)
        if rng.random() < 0.1:
            add(_SILENCE, 1, 0.05, 0.2)
    ends = np.cumsum([length for _, _, length in segs])
    last = int(np.searchsorted(ends, n))  # first segment reaching n: truncate it, drop the rest
    kind, idx, length = segs[last]
    return [*segs[:last], (kind, idx, length - int(ends[last] - n))]


def _speech(spk: _Speaker, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Clean speech of ``n`` samples: phone-wise excitation through phone-wise formant filters."""
    segs = _phones(spk, rng, n, sr)
    lengths = [length for _, _, length in segs]
    kinds = np.repeat([k for k, _, _ in segs], lengths)
    gains = np.repeat(rng.uniform(0.6, 1.4, size=len(segs)), lengths)
    ramp = int(0.012 * sr)  # 12 ms linear onsets and offsets
    voiced = ndimage.uniform_filter1d(gains * (kinds == _VOWEL), ramp)
    noisy = ndimage.uniform_filter1d(_FRICATIVE_GAIN * gains * (kinds == _FRICATIVE), ramp)
    excitation = voiced * _glottal_source(spk, rng, n, sr) + noisy * rng.standard_normal(n)

    # Time-varying filter as overlap-add: each phone filters its crossfaded share of the
    # excitation from rest and rings out into the next (no clicks from switching states).
    fade, tail = int(0.01 * sr), int(0.04 * sr)
    t = np.arange(n)
    out = np.zeros(n + tail)
    sos = _vowel_filter(spk, 12, rng, sr)
    start = 0
    for kind, idx, length in segs:
        if kind == _VOWEL:
            sos = _vowel_filter(spk, idx, rng, sr)
        elif kind == _FRICATIVE:
            sos = _resonators(_FRICATIVES[idx, :4] * spk.vtl, _FRICATIVES[idx, 4:], sr)
            impulse_response = signal.sosfilt(sos, np.eye(1, 256)[0])
            sos[0, 0] /= np.sqrt(np.sum(impulse_response**2))  # unit power gain for white noise
        # silences keep the previous filter so that it rings out smoothly
        lo, hi = max(start - fade, 0), min(start + length + fade, n)
        window = (np.clip((t[lo:hi] - start) / fade + 0.5, 0, 1) if start else 1.0) - (
            np.clip((t[lo:hi] - start - length) / fade + 0.5, 0, 1))
        out[lo:hi + tail] += signal.sosfilt(sos, np.concatenate([excitation[lo:hi] * window, np.zeros(tail)]))
        start += length
    out = signal.lfilter([1, -_RADIATION], [1], out[:n])
    return out / (np.sqrt(np.mean(out**2)) + 1e-12)


def _to_int16(x: np.ndarray) -> np.ndarray:
    """Samples on the int16 scale, rounded and clipped, as a 16-bit wav stores them."""
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def _session(speech: np.ndarray, rng: np.random.Generator, sr: int, conditions: dict = _SESSION) -> np.ndarray:
    """Recording conditions (ranges of `conditions`): random microphone/channel EQ, band limits, noise, level ->
    int16."""
    grid = np.linspace(0, sr / 2, 65)
    knots = np.geomspace(100, 0.45 * sr, 8)
    octaves = np.log2(np.maximum(grid, 50) / 1000)
    eq_db = np.interp(octaves, np.log2(knots / 1000), rng.normal(0, conditions["eq_db"], size=len(knots)))
    eq_db += rng.uniform(-1, 1) * conditions["tilt_db_per_octave"] * octaves
    fir = signal.firwin2(129, grid, 10 ** (eq_db / 20), fs=sr)
    band = signal.butter(2, [rng.uniform(*conditions["low_cut_hz"]), rng.uniform(*conditions["high_cut"]) * sr],
                         btype="bandpass", fs=sr, output="sos")
    x = signal.sosfilt(band, signal.oaconvolve(speech, fir, mode="same"))
    x /= np.sqrt(np.mean(x**2)) + 1e-12
    colour = rng.uniform(*conditions["noise_colour"])
    noise = signal.lfilter([1], [1, -colour], rng.standard_normal(len(x)))
    noise /= np.sqrt(np.mean(noise**2))
    x += noise * 10 ** (-rng.uniform(*conditions["snr_db"]) / 20)
    x *= 32768 * 10 ** (rng.uniform(*conditions["level_dbfs"]) / 20) / np.sqrt(np.mean(x**2))
    return _to_int16(x)


def _noise(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Stationary-ish background noise: coloured, slowly modulated, sometimes with a mains-like hum."""
    x = signal.lfilter([1], [1, -rng.uniform(-0.5, 0.98)], rng.standard_normal(n))
    t = np.arange(n) / sr
    x *= 1 + rng.uniform(0, 0.6) * np.sin(2 * np.pi * rng.uniform(0.1, 2) * t + rng.uniform(0, 2 * np.pi))
    if rng.random() < 0.3:
        x += np.std(x) * rng.uniform(0.5, 2) * np.sin(2 * np.pi * rng.choice([50, 60, 100, 120]) * t)
    return x


def _music(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A sequence of decaying chords of harmonic notes (plucked or bowed)."""
    x, start = np.zeros(n), 0
    rolloff = rng.uniform(0.8, 2.0)  # harmonic k has amplitude k^-rolloff
    while start < n:
        length = min(int(rng.uniform(0.2, 0.8) * sr), n - start)
        t = np.arange(length) / sr
        envelope = np.exp(-t * rng.uniform(1, 8)) * np.minimum(t / 0.01, 1)
        for midi in rng.integers(40, 84, size=int(rng.integers(1, 4))):
            f0 = 440 * 2 ** ((midi - 69) / 12)
            for k in range(1, min(8, int(0.45 * sr / f0)) + 1):
                x[start:start + length] += k**-rolloff * envelope * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6.3))
        start += length
    return x


def _rir(rng: np.random.Generator, rt60: float, sr: int) -> np.ndarray:
    """A simulated room impulse response: a direct path, then diffuse exponentially decaying noise."""
    n = int(rt60 * sr)
    t = np.arange(n) / sr
    tail = rng.standard_normal(n) * np.exp(-6.908 * t / rt60)  # -60 dB at rt60
    tail[: int(rng.uniform(0.002, 0.01) * sr)] = 0  # the first reflections arrive after the direct path
    rir = rng.uniform(0.1, 0.4) * tail / np.max(np.abs(tail))
    rir[0] = 1.0
    return rir


def _augment_recording(p: dict, name: str, index: int) -> np.ndarray:
    """int16 samples of recording ``index`` of augmentation set ``name``: a pure function of its seeds."""
    sr = p["sample_rate"]
    rng = np.random.default_rng([p["seed"], 3, list(_AUGMENT_SETS).index(name), index])
    low, high = _AUGMENT_SETS[name][1]
    if name == "rirs":
        x = _rir(rng, rng.uniform(low, high), sr)
        return np.round(x * 32767).astype(np.int16)
    seconds = rng.uniform(low, high)
    if name == "babble":
        spk = _make_speaker(np.random.default_rng([p["seed"], 0, _BABBLE_SPEAKERS + index]))
        return _recording(spk, rng, seconds, sr)
    x = (_noise if name == "noise" else _music)(rng, int(seconds * sr), sr)
    x *= 32768 * 10 ** (rng.uniform(-35, -25) / 20) / np.sqrt(np.mean(x**2))
    return _to_int16(x)


def _trials(utt2spk: list[tuple[str, str]], num: int, rng: np.random.Generator) -> list[str]:
    """About half target pairs, the rest non-target, sampled without replacement."""
    utts = [utt for utt, _ in utt2spk]
    spks = np.array([spk for _, spk in utt2spk])
    i, j = np.triu_indices(len(utts), k=1)
    same = spks[i] == spks[j]
    target, nontarget = np.flatnonzero(same), np.flatnonzero(~same)
    n_target = min(num // 2, len(target))
    n_nontarget = min(num - n_target, len(nontarget))
    pick = np.concatenate([rng.choice(target, n_target, replace=False),
                           rng.choice(nontarget, n_nontarget, replace=False)])
    rng.shuffle(pick)
    return [f"{int(same[p])} {utts[i[p]]} {utts[j[p]]}\n" for p in pick]


def _recording(spk: _Speaker, rng: np.random.Generator, seconds: float, sr: int, conditions: dict = _SESSION
               ) -> np.ndarray:
    """int16 samples of the speaker saying something for ``seconds``, in a random session of `conditions`."""
    speech = _speech(spk, rng, int(seconds * _SYNTH_RATE), _SYNTH_RATE)
    if sr != _SYNTH_RATE:
        speech = signal.resample_poly(speech, sr, _SYNTH_RATE)
    return _session(speech, rng, sr, conditions)


def _utterance(p: dict, speaker: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """int16 samples and fbank features of one utterance: a pure function of its seeds."""
    sr = p["sample_rate"]
    spk = _make_speaker(np.random.default_rng([p["seed"], 0, speaker]))
    rng = np.random.default_rng([p["seed"], 1, speaker, index])
    conditions = _HELDOUT_SESSION if p.get("variant") == "heldout" else _SESSION
    samples = _recording(spk, rng, rng.uniform(*p["duration_range"]), sr, conditions)
    return samples, Fbank(sr, p["num_mel_bins"], dither=0)(samples)


def _write_kaldi_dir(d: Path, utt2spk: list[tuple[str, str]], wav_scp: list[str]) -> None:
    """wav.scp, utt2spk and spk2utt of a data dir (its feats.scp is written by the caller)."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "wav.scp").write_text("".join(wav_scp))
    (d / "utt2spk").write_text("".join(f"{utt} {spk}\n" for utt, spk in utt2spk))
    spk2utt: dict[str, list[str]] = {}
    for utt, spk in utt2spk:
        spk2utt.setdefault(spk, []).append(utt)
    (d / "spk2utt").write_text("".join(f"{spk} {' '.join(utts)}\n" for spk, utts in spk2utt.items()))


def _write_augment_sets(tmp: Path, p: dict, folder: str, first: int, sizes: dict[str, int], bar: tqdm) -> None:
    """Recordings first..first+size of each augmentation set, as Kaldi dirs tmp/folder/<set>/wav.scp."""
    for name, count in sizes.items():
        (tmp / folder / name).mkdir(parents=True)
        (tmp / "wav" / folder / name).mkdir(parents=True)
        wav_scp = []
        for index in range(first, first + count):
            wav = tmp / "wav" / folder / name / f"{name}{index:04d}.wav"
            wavfile.write(wav, p["sample_rate"], _augment_recording(p, name, index))
            wav_scp.append(f"{name}{index:04d} {wav}\n")
            bar.update(1)
        (tmp / folder / name / "wav.scp").write_text("".join(wav_scp))


def _corrupt(tmp: Path, p: dict, bar: tqdm) -> None:
    """test_noisy: each test recording reverberated (p=0.5) and mixed with noise, music or babble at the
    SNRs of augment=musan_rirs, all from held-out recordings of the augmentation sets (never trained on)."""
    sr, held_out = p["sample_rate"], tmp / "augment_heldout"
    reverb = Reverb(held_out / "rirs", prob=0.5, sample_rate=sr)
    noise = AddNoise({"noise": {"list": held_out / "noise", "snr": [5, 15]},
                      "music": {"list": held_out / "music", "snr": [5, 15]},
                      "babble": {"list": held_out / "babble", "snr": [13, 20], "count": [3, 7]}},
                     prob=1.0, sample_rate=sr)
    fbank = Fbank(sr, p["num_mel_bins"], dither=0)
    d = tmp / "test_noisy"
    d.mkdir()
    utt2spk, wav_scp = [], []
    with kaldiio.WriteHelper(f"ark,scp:{d / 'feats.ark'},{d / 'feats.scp'}") as writer:
        for line in (tmp / "test" / "wav.scp").read_text().splitlines():
            utt, path = line.split()
            spk, index = utt.split("-")
            rng = np.random.default_rng([p["seed"], 4, int(spk[3:]), int(index)])
            samples = _to_int16(noise(reverb(wavfile.read(path)[1].astype(np.float32), rng), rng))
            wav = tmp / "wav" / "test_noisy" / spk / f"{utt}-noisy.wav"
            wav.parent.mkdir(parents=True, exist_ok=True)
            wavfile.write(wav, sr, samples)
            writer(f"{utt}-noisy", fbank(samples))
            utt2spk.append((f"{utt}-noisy", spk))
            wav_scp.append(f"{utt}-noisy {wav}\n")
            bar.update(1)
    _write_kaldi_dir(d, utt2spk, wav_scp)
    trials = [line.split() for line in (tmp / "test" / "trials").read_text().splitlines()]
    (d / "trials").write_text("".join(f"{label} {a}-noisy {b}-noisy\n" for label, a, b in trials))


def _num_recordings(p: dict) -> int:
    """How many recordings _build writes (its progress bar's total)."""
    if p.get("variant") == "heldout":  # test, test_noisy, the held-out halves of the augmentation sets
        return 2 * p["num_test_speakers"] * p["test_utts_per_speaker"] + sum(c // 2 for c, _ in _AUGMENT_SETS.values())
    utterances = (p["num_train_speakers"] * p["utts_per_speaker"]
                  + (p["num_eval_speakers"] + 2 * p["num_test_speakers"]) * p["test_utts_per_speaker"])  # + test_noisy
    return utterances + sum(count + count // 2 for count, _ in _AUGMENT_SETS.values())  # + held-out halves


def _build(tmp: Path, root: Path, p: dict, bar: tqdm) -> None:
    """Write the corpus into ``tmp``, then point every path of its scp files into ``root``."""
    heldout = p.get("variant") == "heldout"
    counts = [0 if heldout else p["num_train_speakers"], 0 if heldout else p["num_eval_speakers"],
              p["num_test_speakers"]]
    utts_per_spk = [p["utts_per_speaker"], p["test_utts_per_speaker"], p["test_utts_per_speaker"]]
    num_trials = {"eval": p["num_eval_trials"], "test": p["num_trials"]}
    first = _HELDOUT_SPEAKERS if heldout else 0
    for split_idx, (split, count, n_utts) in enumerate(zip(_SPLITS, counts, utts_per_spk)):
        if count == 0:
            continue
        d = tmp / split
        d.mkdir(parents=True)
        utt2spk, wav_scp = [], []
        with kaldiio.WriteHelper(f"ark,scp:{d / 'feats.ark'},{d / 'feats.scp'}") as writer:
            for s in range(first, first + count):
                spk_id = f"spk{s:04d}"
                (tmp / "wav" / split / spk_id).mkdir(parents=True)
                for u in range(n_utts):
                    samples, feats = _utterance(p, s, u)
                    utt = f"{spk_id}-{u:04d}"
                    wav = tmp / "wav" / split / spk_id / f"{utt}.wav"
                    wavfile.write(wav, p["sample_rate"], samples)
                    writer(utt, feats)
                    utt2spk.append((utt, spk_id))
                    wav_scp.append(f"{utt} {wav}\n")
                    bar.update(1)
        first += count
        _write_kaldi_dir(d, utt2spk, wav_scp)
        if split in num_trials:
            rng = np.random.default_rng([p["seed"], 2, split_idx])
            (d / "trials").write_text("".join(_trials(utt2spk, num_trials[split], rng)))
    if not heldout:
        (tmp / "train_wav").mkdir()
        for name in ("wav.scp", "utt2spk", "spk2utt"):
            shutil.copy(tmp / "train" / name, tmp / "train_wav" / name)
        _write_augment_sets(tmp, p, "augment", 0, {name: count for name, (count, _) in _AUGMENT_SETS.items()}, bar)
    _write_augment_sets(tmp, p, "augment_heldout", _HELDOUT_VARIANT_NOISES if heldout else _HELD_OUT,
                        {name: count // 2 for name, (count, _) in _AUGMENT_SETS.items()}, bar)
    _corrupt(tmp, p, bar)
    for scp in tmp.rglob("*.scp"):
        scp.write_text(scp.read_text().replace(str(tmp), str(root)))


def _is_complete(root: Path, marker: dict) -> bool:
    try:
        return json.loads((root / "params.json").read_text()) == marker
    except (OSError, ValueError):
        return False


def make_demo(
    root: str | os.PathLike,
    *,
    num_train_speakers: int = 40,
    num_eval_speakers: int = 10,
    num_test_speakers: int = 20,
    utts_per_speaker: int = 24,
    test_utts_per_speaker: int = 12,
    num_trials: int = 2000,
    num_eval_trials: int = 600,
    duration_range: tuple[float, float] = (1.5, 4.0),
    seed: int = 0,
    sample_rate: int = 16000,
    num_mel_bins: int = 40,
    variant: str = "demo",
    progress: bool = True,
) -> Path:
    """Build (or reuse) the demo corpus under ``root`` and return its absolute path (``variant``: the demo, or
    its ``heldout`` test sets, which use the test speakers' numbers and trials; see the module docstring).

    ``utts_per_speaker`` applies to train speakers, ``test_utts_per_speaker`` to eval and
    test speakers; ``num_trials`` / ``num_eval_trials`` size the test / eval trial lists.
    The corpus is built in a sibling temporary directory and moved into place only once
    complete, with ``params.json`` as the completeness marker, so an interrupted build
    is never mistaken for a finished one and a finished one is never rebuilt. A build shows its
    progress on stderr (``progress``; stklia.core.progress).
    """
    root = Path(root).expanduser().resolve()
    params = {
        "num_train_speakers": num_train_speakers, "num_eval_speakers": num_eval_speakers,
        "num_test_speakers": num_test_speakers, "utts_per_speaker": utts_per_speaker,
        "test_utts_per_speaker": test_utts_per_speaker, "num_trials": num_trials,
        "num_eval_trials": num_eval_trials, "duration_range": list(duration_range), "seed": seed,
        "sample_rate": sample_rate, "num_mel_bins": num_mel_bins,
    }
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
    if variant != "demo":  # (the demo's marker stays as it was: its cached corpora stay valid)
        params["variant"] = variant
    # The root is part of the marker: scp files hold absolute paths, a moved corpus is stale.
    marker = {"version": _VERSION, "root": str(root), "params": params}
    if _is_complete(root, marker):
        return root
    if root.exists() and any(root.iterdir()) and not (root / "params.json").exists():
        raise FileExistsError(f"{root} is not empty and does not hold a demo corpus")
    tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
    old = root.with_name(f"{root.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with progress_bar(total=_num_recordings(params), desc=f"generating the demo corpus in {root}", unit="rec",
                          enabled=progress) as bar:
            _build(tmp, root, params, bar)
        (tmp / "params.json").write_text(json.dumps(marker, indent=2) + "\n")
        if _is_complete(root, marker):  # a concurrent process finished first
            shutil.rmtree(tmp)
            return root
        if root.exists():
            os.replace(root, old)
        try:
            os.replace(tmp, root)
        except OSError:  # a concurrent process put its (identical) corpus there meanwhile
            if not _is_complete(root, marker):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return root


def ensure_demo(root: str | None = None, **kw) -> Path:
    """Hydra entry point: the demo corpus at ``root`` (default cache location), built if needed."""
    return make_demo(root or demo_root(), **kw)


def baseline_eer(data_dir: str | os.PathLike) -> float:
    """EER (%) on ``data_dir/trials`` of a trivial system: cosine of per-utterance feature mean+std.

    The statistics are centred on their mean over the directory before scoring (otherwise
    the large common offset of log energies makes all cosines ~1).  This calibrates the
    corpus: session variability should keep this baseline far from perfect.
    """
    d = Path(data_dir)
    utts, stats = [], []
    for utt, feats in kaldiio.load_scp_sequential(str(d / "feats.scp")):
        utts.append(utt)
        stats.append(np.concatenate([feats.mean(0), feats.std(0)]))
    x = np.stack(stats)
    x -= x.mean(0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = {u: i for i, u in enumerate(utts)}
    trials = read_trials(d / "trials", index)
    a, b = (np.array([index[u] for u in side]) for side in (trials.enroll, trials.test))
    return 100 * compute_eer(np.sum(x[a] * x[b], axis=1), trials.labels)[0]


def generate(cfg: DictConfig) -> None:
    """The command (stklia/conf/commands/demo.yaml): the corpus at cfg.root, and the baseline's EERs if asked."""
    if cfg.variant not in VARIANTS:
        raise InputError("variant", f"'{cfg.variant}' is not one of {', '.join(VARIANTS)}")
    start = time.perf_counter()
    root = make_demo(cfg.root, seed=cfg.seed, variant=cfg.variant, progress=cfg.progress,
                     **(SMALL_DEMO if cfg.small else {}))
    print(f"demo corpus in {root} ({time.perf_counter() - start:.1f} s)")
    if cfg.baseline:
        for split in [split for split in _TRIALS_SPLITS if (root / split / "trials").is_file()]:
            print(f"baseline (feature mean+std, cosine) EER on {split}: {baseline_eer(root / split):.2f}%")
