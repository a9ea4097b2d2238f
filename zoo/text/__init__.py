"""Text tokenizers behind one interface (torch + open_clip / tokenizers only; no Lightning, no Hydra)."""

from zoo.text.base import TextTokenizer, sanitize_text
from zoo.text.clip_bpe import ClipBPETokenizer
from zoo.text.trained_bpe import LazyTrainedBPE, TrainedBPETokenizer

__all__ = ["TextTokenizer", "sanitize_text", "ClipBPETokenizer", "TrainedBPETokenizer", "LazyTrainedBPE"]
