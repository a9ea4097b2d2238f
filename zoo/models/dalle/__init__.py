"""DALL·E 1 stage 2: the transformer over [text BPE ; image tokens] (``model.py``) and its Lightning module."""

from zoo.models.dalle.model import PRESETS, DalleTransformer, DalleTransformerConfig

__all__ = ["PRESETS", "DalleTransformer", "DalleTransformerConfig"]
