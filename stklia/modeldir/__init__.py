"""A model directory on disk, as training writes it and every other command reads it: its `config.yaml`, its
checkpoints (and `best.json`, averaged checkpoints), and the trained generator they rebuild. Evaluation owns
its `results/`, `backends/` and `embeddings/`; training its records (`status.json`, `.hydra/`, `train.log`)."""
