"""SlimLM training pipeline: model, data, training, evaluation and GGUF export."""
