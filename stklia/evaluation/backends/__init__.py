"""Scoring back-ends applied to embeddings after extraction: mean subtraction and whitening, Kaldi's LDA,
Kaldi's two-covariance PLDA with its x-vector recipe's preprocessing, the scorer that turns them into trial
score tables, and their statistics, fitted once and stored."""
