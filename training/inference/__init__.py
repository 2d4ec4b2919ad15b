"""Drafting inference: the base model and its adapters turned into replies, apart from the trainers.

`engine.Engine` holds one base model with its LoRA adapters and picks who decodes
(`generation.backend`): transformers itself, or on a CPU the merged weights converted once by
`serving` for llama.cpp (`llamacpp`) or CTranslate2. Training code reuses the engine only to score
and sample held-out drafts during evaluation.
"""
