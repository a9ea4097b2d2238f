from zoo.callbacks.sample_grid import SampleGridCallback

__all__ = ["SampleGridCallback"]
