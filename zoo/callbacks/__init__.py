from zoo.callbacks.ema import EMA
from zoo.callbacks.interrupt_checkpoint import InterruptCheckpoint
from zoo.callbacks.last_checkpoint import LastCheckpoint
from zoo.callbacks.sample_grid import SampleGridCallback
from zoo.callbacks.time_budget import TimeBudget

__all__ = ["EMA", "InterruptCheckpoint", "LastCheckpoint", "SampleGridCallback", "TimeBudget"]
