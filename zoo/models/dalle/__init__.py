"""DALL·E 1 stage 2: the transformer over [text BPE ; image tokens] (``zoo.nn.transformer``) as a LightningModule."""
from zoo.models.dalle.model import PRESETS, DalleTransformer, DalleTransformerConfig, build_config

__all__ = ["PRESETS", "DalleTransformer", "DalleTransformerConfig", "build_config"]
