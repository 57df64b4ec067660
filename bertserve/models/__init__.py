"""Finding and loading checkpoints (folders or registered names), and the tokenizer wrapper."""
from bertserve.models.checkpoint import Checkpoint, CheckpointError, default_model_path, load_checkpoint
from bertserve.models.packages import MissingPackage
from bertserve.models.registry import DEFAULT_MODEL, REGISTRY, ModelSpec, available
from bertserve.models.tokenizer import TextTokenizer, Tokenized

__all__ = ["Checkpoint", "CheckpointError", "DEFAULT_MODEL", "MissingPackage", "ModelSpec", "REGISTRY", "TextTokenizer",
           "Tokenized", "available", "default_model_path", "load_checkpoint"]
