"""Tests of the training room: models, datasets, trainers, drafting engines, metrics."""
