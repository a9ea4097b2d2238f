"""unCLIP's autoregressive prior (the paper's ablation): PCA bucket codes of the CLIP image embedding, predicted by a
causal transformer after the caption, the CLIP text embedding and a dot-product token."""

from zoo.models.ar_prior.model import PRESETS, ARPrior, ARPriorConfig, build_config, sample_codes
from zoo.models.ar_prior.pca import EmbeddingPCA, ScalarBins

__all__ = ["PRESETS", "ARPrior", "ARPriorConfig", "build_config", "sample_codes", "EmbeddingPCA", "ScalarBins"]
