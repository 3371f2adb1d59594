"""Training runs: the loop, its classifier heads and learning-rate schedules, checkpointing and exact resume,
several processes (DDP), pre-emption signals, the run's records, the Hydra job around it, and the leaderboard
that compares runs."""
