"""The Encoder pipeline: tokenizer -> backend -> pooling -> normalize."""
from bertserve.encode.config import EncoderConfig
from bertserve.encode.encoder import Encoder
from bertserve.encode.pooling import STRATEGIES as POOLING_STRATEGIES

__all__ = ["Encoder", "EncoderConfig", "POOLING_STRATEGIES"]
