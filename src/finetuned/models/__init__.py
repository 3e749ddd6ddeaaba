"""Base models: the built-ins, loading, LoRA wrapping."""
