from zoo.callbacks.last_checkpoint import LastCheckpoint
from zoo.callbacks.sample_grid import SampleGridCallback

__all__ = ["LastCheckpoint", "SampleGridCallback"]
