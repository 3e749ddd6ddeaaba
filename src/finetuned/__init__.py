"""finetuned: a fine-tuning daemon. Drop JSONL into an inbox folder, get a trained model."""

__version__ = "0.1.0"
