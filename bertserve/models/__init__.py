"""Finding and loading checkpoints, and the tokenizer wrapper."""
from bertserve.models.checkpoint import Checkpoint, CheckpointError, default_model_path, load_checkpoint
from bertserve.models.tokenizer import TextTokenizer, Tokenized

__all__ = ["Checkpoint", "CheckpointError", "TextTokenizer", "Tokenized", "default_model_path", "load_checkpoint"]
