"""The tests' tiny model and settings: `training.tiny`, the fixture shared with bench's quick runs."""

from training.tiny import (  # noqa: F401
    TINY_SEED,
    build_random_adapter,
    build_tiny_gguf,
    build_tiny_model_dir,
    copy_model_dir,
    smollm2_tokenizer_dir,
    tiny_evaluation_settings,
    tiny_generation_settings,
    tiny_model,
    tiny_model_settings,
    tiny_training_settings,
)
