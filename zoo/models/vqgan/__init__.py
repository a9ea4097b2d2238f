from zoo.models.vqgan.model import PRESETS, TamingVQGAN, TamingVQGANConfig

__all__ = ["TamingVQGAN", "TamingVQGANConfig", "PRESETS"]
