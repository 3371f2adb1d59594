"""The built-in demo corpus: synthetic speakers as real Kaldi data dirs, generated on first use
(`python -m stklia.demo DIR`)."""
