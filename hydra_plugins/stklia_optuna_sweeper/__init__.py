"""stklia's Hydra sweeper plugin for Optuna (`hydra/sweeper=stklia_optuna`); see optuna_sweeper.py."""
