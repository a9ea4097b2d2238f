"""unCLIP's diffusion prior: caption -> CLIP image embedding (``model.py``: network; ``lit.py``: training, sampling)."""

from zoo.models.diffusion_prior.model import PAPER_PARAMS, PRESETS, DiffusionPriorConfig, DiffusionPriorNet

__all__ = ["PAPER_PARAMS", "PRESETS", "DiffusionPriorConfig", "DiffusionPriorNet"]
