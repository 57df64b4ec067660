"""bertserve: BERT-family text vectors, served, searched and distilled. Offline."""
from bertserve.encode import Encoder, EncoderConfig
from bertserve.models import CheckpointError

__version__ = "0.1.0"
__all__ = ["Encoder", "EncoderConfig", "CheckpointError", "__version__"]
