"""From a generator to numbers: embeddings of whole utterances, trial scoring (cosine, AS-norm, back-ends), the
metrics (Kaldi-exact EER and minDCF, actual DCF, Cllr), DET curves, calibration, and the score and result files."""
