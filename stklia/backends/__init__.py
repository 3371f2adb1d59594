"""Scoring back-ends applied to embeddings and scores after extraction.

normalize: mean subtraction / whitening of embeddings; lda: Kaldi's LDA; plda: Kaldi's two-covariance
PLDA with its x-vector recipe's preprocessing; calibration: scores to calibrated log-likelihood ratios;
arrays: how their statistics are stored.
"""
