from zoo.callbacks.last_checkpoint import LastCheckpoint
from zoo.callbacks.sample_grid import SampleGridCallback
from zoo.callbacks.time_budget import TimeBudget

__all__ = ["LastCheckpoint", "SampleGridCallback", "TimeBudget"]
