"""Published models of other toolkits as stklia model directories (`python -m stklia.import_model`): WeSpeaker's,
SpeechBrain's and 3D-Speaker's files read as data, their tensors mapped onto stklia's generators and their front
ends onto stklia's features (docs/pretrained.md). It sits beside evaluation, training and inference: it writes
model directories (modeldir) of stklia's models (models) with their front ends (data)."""
