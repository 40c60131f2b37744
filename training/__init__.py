"""Offline training (`cbmir train`): fine-tuning and metric learning into checkpoints the services load."""
