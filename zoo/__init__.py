"""dalle-zoo: the DALL·E family of text-to-image components as Lightning modules composed by Hydra."""

import os

from omegaconf import OmegaConf

# conf/paths/default.yaml: paths.root_dir defaults to the launch directory. It cannot be ${hydra:runtime.cwd}:
# Hydra resolves hydra.sweep.dir (which lives under paths.log_dir) before it sets its runtime config, so every
# `-m` run whose sweep dir used the log dir failed with "HydraConfig was not set". With hydra.job.chdir false the
# process's working directory at resolution time is the launch directory, which is what runtime.cwd would give.
if not OmegaConf.has_resolver("zoo.cwd"):
    OmegaConf.register_new_resolver("zoo.cwd", os.getcwd)
