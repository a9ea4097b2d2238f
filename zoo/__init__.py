"""dalle-zoo: the DALL·E family of text-to-image components as Lightning modules composed by Hydra."""

import os

from omegaconf import OmegaConf

# conf/paths/default.yaml: paths.root_dir defaults to the launch directory. It cannot be ${hydra:runtime.cwd}:
# Hydra resolves hydra.sweep.dir (which lives under paths.log_dir) before it sets its runtime config, so every
# `-m` run whose sweep dir used the log dir failed with "HydraConfig was not set". With hydra.job.chdir false the
# process's working directory at resolution time is the launch directory, which is what runtime.cwd would give.
if not OmegaConf.has_resolver("zoo.cwd"):
    OmegaConf.register_new_resolver("zoo.cwd", os.getcwd)


def _job_suffix() -> str:
    """``-job<n>`` in job n of a ``-m`` sweep, else "": the W&B run name (conf/logger/wandb.yaml, conf/eval/logger/
    wandb.yaml) is ``${task_name}${zoo.job_suffix:}``, so a sweep's runs, all of one task_name, are told apart in
    W&B's run list, numbered as their job folders."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return ""
    hc = HydraConfig.get()
    return f"-job{hc.job.num}" if hc.mode == RunMode.MULTIRUN else ""


if not OmegaConf.has_resolver("zoo.job_suffix"):
    OmegaConf.register_new_resolver("zoo.job_suffix", _job_suffix)
