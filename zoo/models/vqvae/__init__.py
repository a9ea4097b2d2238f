from zoo.models.vqvae.model import PRESETS, VQVAE, VQVAEConfig

__all__ = ["VQVAE", "VQVAEConfig", "PRESETS"]
