from zoo.models.dvae.model import DVAE, PRESETS, DVAEConfig

__all__ = ["DVAE", "DVAEConfig", "PRESETS"]
