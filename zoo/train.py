"""``zoo-train``: the one training entry point (``python -m zoo.train``).

``main`` is a thin ``@hydra.main``; the work is in :func:`train`, a plain function of a composed config so tests
and notebooks can call it directly. It builds everything first (data, model, callbacks, loggers, trainer) and runs
the model's data checks, so a bad config fails before a single step is taken.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Collection, Optional

from omegaconf import DictConfig, OmegaConf

from zoo.config import entry_point, with_article
from zoo.errors import ConfigError, check_number, check_switch, check_whole, is_whole, shown

log = logging.getLogger("zoo.train")


def instantiate(node: DictConfig, what: str = "config", **kwargs) -> Any:
    """Kept for callers of ``zoo.train.instantiate``; the one implementation is ``zoo.config.instantiate``."""
    from zoo.config import instantiate as _instantiate

    return _instantiate(node, what, **kwargs)


def _instantiate_dict(node: Optional[DictConfig]) -> list[Any]:
    """Instantiate every ``_target_`` entry of a config group made of named entries (callbacks, loggers)."""
    from hydra.errors import InstantiationException
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    out = []
    if not node:
        return out
    for name, sub in node.items():
        if isinstance(sub, DictConfig) and "_target_" in sub:
            try:
                out.append(instantiate(sub, str(name)))
            except InstantiationException as e:
                if not isinstance(e.__cause__, MisconfigurationException):
                    raise
                # Lightning's own refusal of an option (ModelCheckpoint's save_top_k=-2, mode=mn): its message names
                # the option; the Hydra traceback around it did not say how to fix or drop the entry
                key = f"{node._get_full_key(None)}.{name}"
                raise ConfigError(
                    f"{key}: {e.__cause__} (fix: {key}.<that option>=<a value it accepts>, or {key}=null to leave "
                    f"it out)"
                ) from None
    return out


RESUME_NAMES = ("last.ckpt", "interrupted.ckpt")  # what ckpt_path=last looks for: see furthest_checkpoint


def checkpoint_step(path: Path) -> Optional[int]:
    """The global step a training checkpoint records, or None when it cannot be read (truncated, not a checkpoint,
    refused by ``weights_only``). Memory-mapped (``peek_checkpoint``): the tensors are not read, only the pickled dict.
    A legacy (non-zip) file, which cannot be mapped, is read whole: a bare mmap load refused it, so it counted as
    unreadable here although ``check_resume_file`` and Lightning resume from it."""
    from zoo.checkpoint import peek_checkpoint

    try:
        return int(peek_checkpoint(path)["global_step"])
    except Exception:  # whatever is wrong with it, check_resume_file names it if it is the one chosen
        return None


def furthest_checkpoint(found: list[Path]) -> tuple[Path, str]:
    """The file of ``found`` (one run's ``last.ckpt`` / ``interrupted.ckpt``) to resume from, and why.

    By the global step each file records, not by file time: a copied, restored or touched older file is newer on
    disk but not further in training. At the same step ``interrupted.ckpt`` wins: ``last.ckpt`` was saved at the end
    of that step, before its validation, and the run was stopped later -- in that validation (which a resume from
    ``last.ckpt`` counts as done: its metrics.csv row was lost) or after it (``last.ckpt`` has the RNG from before
    it) -- and ``InterruptCheckpoint`` saves the state to go on from exactly. An unreadable file is only chosen when
    no other is readable (``check_resume_file`` then says what is wrong with it)."""
    steps = {p: checkpoint_step(p) for p in found}
    readable = [p for p in found if steps[p] is not None]
    if not readable:
        return found[0], "no candidate could be read"
    best = max(readable, key=lambda p: (steps[p], p.name == "interrupted.ckpt"))
    others = [
        f"{p.name} at step {steps[p]}" if steps[p] is not None else f"{p.name} unreadable" for p in found if p != best
    ]
    why = f"step {steps[best]}" + (f"; {', '.join(others)}" if others else "")
    if any(steps[p] == steps[best] for p in readable if p != best):
        why += f"; at the same step {best.name} wins (saved when the run stopped, after that step's last.ckpt)"
    return best, why


def resolve_ckpt_path(cfg: DictConfig) -> Optional[str]:
    """``ckpt_path=last`` resumes this run directory's ``last.ckpt`` / ``interrupted.ckpt`` (the one further in
    training: :func:`furthest_checkpoint`) or, failing that, that of the newest earlier run with the same
    ``task_name`` (in a ``-m`` sweep: the newest earlier run with this job's settings); any other value is a file
    path."""
    ckpt = cfg.get("ckpt_path")
    if not ckpt:
        return None
    if ckpt != "last":
        if not Path(ckpt).is_file():
            raise ConfigError(f"ckpt_path={ckpt} does not exist (fix: pass a .ckpt file, or ckpt_path=last)")
        return str(ckpt)
    here = Path(cfg.paths.output_dir) / "checkpoints"
    found = [here / n for n in RESUME_NAMES if (here / n).is_file()]
    if not found:
        runs = Path(cfg.paths.log_dir) / cfg.task_name
        earlier = [
            p
            for n in RESUME_NAMES
            for pattern in (f"*/*/checkpoints/{n}", f"*/*/*/checkpoints/{n}")
            for p in runs.glob(pattern)
        ]
        settings = _sweep_job_settings()
        if settings is not None:
            # A sweep's jobs share one task_name: "the newest run of task_name" was whichever job of any sweep wrote
            # last, so each job went on from another job's weights and optimizer (another learning rate, another
            # model), even from a job of this very sweep. A job resumes an earlier run of its own settings.
            earlier = [p for p in earlier if _run_settings(p.parent.parent) == settings]
        if not earlier:
            also = " with this sweep job's settings" if settings is not None else ""
            log.warning(
                "ckpt_path=last but no last.ckpt under %s or %s%s: starting from scratch", here.parent, runs, also
            )
            return None
        # the newest earlier run (by its files' times: which run is wanted), then its furthest file
        newest_run = max(earlier, key=lambda p: p.stat().st_mtime).parent
        found = sorted((p for p in earlier if p.parent == newest_run), key=lambda p: RESUME_NAMES.index(p.name))
    chosen, why = furthest_checkpoint(found)
    log.info("ckpt_path=last: resuming from %s (%s)", chosen, why)
    return str(chosen)


# What a resume may change without being another run: where it starts from and how long it trains.
RESUME_FREE_KEYS = ("ckpt_path", "trainer.max_steps", "trainer.max_epochs", "trainer.max_time")


def _settings(overrides: list[str]) -> frozenset[str]:
    """A run's command-line overrides without those a resume may change (:data:`RESUME_FREE_KEYS`)."""
    return frozenset(o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in RESUME_FREE_KEYS)


def _sweep_job_settings() -> Optional[frozenset[str]]:
    """In a job of a ``-m`` sweep, its settings (:func:`_settings` of its overrides); None outside a sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return _settings(list(HydraConfig.get().overrides.task))


def _run_settings(run_dir: Path) -> Optional[frozenset[str]]:
    """The settings an earlier run was started with (its ``.hydra/overrides.yaml``), or None when unreadable."""
    import yaml

    try:
        return _settings(yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) or [])
    except Exception:  # no Hydra record (a copied checkpoint folder): not known to be this job's
        return None


def earlier_run_checkpoints(cfg: DictConfig, out_dir: Path) -> list[Path]:
    """The resume points (``last*.ckpt``, the on-exception ``interrupted.ckpt``) an earlier run left in the
    checkpoint directories of this run's config (``out_dir/checkpoints`` and any callback's ``dirpath``)."""
    import re

    dirs, names = {out_dir / "checkpoints"}, {"interrupted.ckpt"}
    for node in (cfg.get("callbacks") or {}).values():
        if not isinstance(node, DictConfig) or "Checkpoint" not in str(node.get("_target_", "")):
            continue
        try:  # a dirpath that does not resolve here (an interpolation of another tool) is Lightning's to report
            if node.get("dirpath"):
                dirs.add(Path(str(node.dirpath)))
            if "Exception" in str(node._target_) or "Interrupt" in str(node._target_):
                names.add(f"{node.get('filename') or 'on_exception'}.ckpt")
        except Exception:
            continue
    last = re.compile(r"^last(-\d+)?\.ckpt$")
    return sorted(
        {p for d in dirs if d.is_dir() for p in d.iterdir() if p.is_file() and (p.name in names or last.match(p.name))}
    )


def slurm_requeued() -> bool:
    """This process is a SLURM job started again after a requeue (``scontrol requeue``: preemption, submitit's
    checkpointing, Lightning's auto-requeue), which SLURM says with ``SLURM_RESTART_COUNT`` >= 1."""
    return os.environ.get("SLURM_RESTART_COUNT", "0").strip() not in ("", "0")


def check_no_earlier_run(cfg: DictConfig, out_dir: Path) -> None:
    """A training run without ``ckpt_path`` in a directory that holds an earlier run's resume points is refused
    (ConfigError) before anything is built or written.

    Lightning itself resumes silently there: with an on-exception checkpoint callback (ours, ``callbacks.on_exception``)
    ``trainer.fit(ckpt_path=None)`` becomes ``ckpt_path="last"`` and loads the newest ``last*.ckpt`` /
    ``interrupted.ckpt`` it finds, past ``check_resume_file``: a run meant to start over (another learning rate, a
    re-run with the same explicit ``hydra.run.dir``) went on from the earlier weights and step, and a run of another
    model failed on a state-dict mismatch. Without that callback the new run's last checkpoint became
    ``last-v1.ckpt`` beside the earlier ``last.ckpt``, which ``ckpt_path=last`` would later resume. So the user
    says which: resume, or another directory.

    Except in a requeued SLURM job (``SLURM_RESTART_COUNT`` > 0: preempted or timed out, then started again with the
    same command in the same directory, by submitit or Lightning's auto-requeue): resuming is the point there, and
    Lightning's own choice (its ``hpc_ckpt_*.ckpt``, else the newest last / interrupted checkpoint) is kept."""
    if not cfg.get("train", True) or cfg.get("ckpt_path"):
        return
    if slurm_requeued():
        log.info(
            "requeued SLURM job (SLURM_RESTART_COUNT=%s): Lightning resumes from this run's newest checkpoint",
            os.environ["SLURM_RESTART_COUNT"],
        )
        return
    found = earlier_run_checkpoints(cfg, out_dir)
    if found:
        steps = ", ".join(
            f"{p.name} (step {s})" if (s := checkpoint_step(p)) is not None else f"{p.name} (unreadable)" for p in found
        )
        raise ConfigError(
            f"{out_dir} holds an earlier run's checkpoints: {steps} in {found[0].parent}. A new run there would "
            f"resume from them or mix with them (fix: ckpt_path=last to go on with that run, or another "
            f"hydra.run.dir to start over; delete {found[0].parent} to start over in this directory)"
        )


def _wandb_run_id(wandb_dir: Path) -> Optional[str]:
    """The id of the newest W&B run under ``wandb_dir`` (``latest-run``, else the newest ``*run-*`` folder)."""
    latest = wandb_dir / "latest-run"
    runs = [latest] if latest.is_dir() else sorted(wandb_dir.glob("*run-*"), key=lambda p: p.stat().st_mtime)
    for run in reversed(runs):
        for f in run.glob("run-*.wandb"):
            return f.stem[len("run-") :]
    return None


def continue_wandb_run(logger_cfg: Optional[DictConfig], ckpt_path: str) -> None:
    """A resumed training continues the W&B run of the checkpoint's run directory (same id, ``resume=allow``)
    instead of opening a second, unrelated run under the same name: its history then picks up where the
    checkpoint's left off, and ``wandb sync <run dir>/wandb/offline-run-*`` uploads the offline pieces as one run.
    A ``logger.wandb.id`` given on the command line wins."""
    from omegaconf import open_dict

    for name, sub in (logger_cfg or {}).items():
        if not (isinstance(sub, DictConfig) and str(sub.get("_target_", "")).endswith("WandbLogger")):
            continue
        if sub.get("id"):
            continue
        run_dir = Path(ckpt_path).resolve().parent.parent
        run_id = _wandb_run_id(run_dir / "wandb")
        if run_id is None:
            log.info("W&B: no earlier run under %s; the resumed training is logged as a new run", run_dir / "wandb")
            continue
        with open_dict(sub):
            sub.id = run_id
            sub.resume = "allow"
        log.info("W&B: continuing run %s of %s (resumed from %s)", run_id, run_dir, ckpt_path)


def check_resume_file(path: str, model) -> int:
    """``ckpt_path=`` goes through the project's safe loader before Lightning opens it: a missing, corrupt, unsafe or
    wrong-kind file fails here, with a message that names the fix, instead of in torch's own words (which suggest
    ``weights_only=False``, the one thing never to do with a file from elsewhere). Returns the file's global step."""
    from zoo.checkpoint import CorruptCheckpointError, peek_checkpoint
    from zoo.registry import checked_hparams, component_in, component_name_of

    # memory-mapped: its plain values are checked here, and Lightning reads the weights (a whole load read them twice)
    ckpt = peek_checkpoint(path)
    name = component_in(ckpt, str(path))
    checked_hparams(name, ckpt.get("hyper_parameters", {}), str(path))  # same rules as every other file input
    missing = [k for k in ("state_dict", "pytorch-lightning_version", "loops") if k not in ckpt]
    if missing:
        raise CorruptCheckpointError(
            f"ckpt_path={path} lacks {missing}: it is not a complete training checkpoint "
            f"(fix: resume from a run's last.ckpt / interrupted.ckpt)"
        )
    mine = component_name_of(model)
    if name != mine:
        raise ConfigError(
            f"ckpt_path={path} holds {with_article(name)} checkpoint but the model is {mine} "
            f"(fix: model={name}, or {with_article(mine)} checkpoint)"
        )
    return int(ckpt.get("global_step") or 0)


def _state_dict_mismatch(error: BaseException, path: str) -> ConfigError:
    """Lightning's restore of ``ckpt_path`` failed on the weights: the file's network is not the configured one."""
    detail = str(error).strip().splitlines()
    overrides = Path(path).resolve().parent.parent / ".hydra" / "overrides.yaml"
    where = f" (its run's overrides: {overrides})" if overrides.is_file() else ""
    return ConfigError(
        f"ckpt_path={path} does not fit the configured model: it was trained with other model settings{where}; "
        f"{detail[0] if detail else ''} {detail[1].strip()[:300] if len(detail) > 1 else ''} "
        f"(fix: the same model.preset / model.net.* as the run that wrote it, or another checkpoint)"
    )


def _where_to_resume(trainer, ckpt_path: Optional[str], resume_step: int) -> str:
    """What an interrupted run's message says about its state: the interrupted.ckpt this run saved, or (nothing was
    trained since it started, so ``InterruptCheckpoint`` saved nothing) the truth and what to do instead."""
    from lightning.pytorch.callbacks import OnExceptionCheckpoint

    from zoo.callbacks import InterruptCheckpoint

    saver = next((cb for cb in trainer.callbacks if isinstance(cb, OnExceptionCheckpoint)), None)
    if saver is None:
        return "no interrupted.ckpt (callbacks.on_exception is off); ckpt_path=last resumes the newest last.ckpt"
    if not isinstance(saver, InterruptCheckpoint) or saver.saved:
        return f"state saved to {saver.ckpt_path}; resume with ckpt_path=last"
    if ckpt_path:
        return (
            f"nothing trained since {ckpt_path} (step {resume_step}), which is still the resume point: ckpt_path=last"
        )
    return "nothing was trained yet, so nothing was saved: run the same command again to start over"


RUN_LOCK = ".zoo-train.lock"


def lock_run_dir(out_dir: Path):
    """Hold an exclusive lock on the run directory for the whole run; refuse a second ``zoo-train`` writing there.

    Two runs in one directory (the same explicit ``hydra.run.dir``, or two jobs of an array started in the same
    second under the default timestamped one) otherwise both "succeed": their rows interleave in one
    metrics.csv, the second's checkpoints become last-v1.ckpt (which ``ckpt_path=last`` never picks) and whichever
    ends last wins metrics.json. ``flock`` is released by the kernel when the process dies (even kill -9), so a
    crashed run never leaves a stale lock. Only the launching process locks: DDP / SLURM ranks > 0 share rank 0's
    directory by design. Returns the open lock file (close it to release), or None on a rank > 0."""
    import fcntl
    import socket

    if any(os.environ.get(k, "0") not in ("", "0") for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")):
        return None
    f = open(out_dir / RUN_LOCK, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise ConfigError(
            f"another zoo-train ({holder}) is running in {out_dir}: two runs in one directory would mix their "
            f"checkpoints and logs (fix: another hydra.run.dir, or wait for it to end and resume with ckpt_path=last)"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    return f


def _take_run_dir_lock(out_dir: Path):
    """The lock the Hydra callback ``zoo.hydra_callbacks.LockRunDir`` already took on ``out_dir`` (now the caller's
    to close), else a new one (:func:`lock_run_dir`): a second ``flock`` of this process on a newly opened lock file
    would conflict with the first."""
    from zoo.hydra_callbacks import take_held_run_dir_lock

    held = take_held_run_dir_lock(out_dir)
    return held if held is not None else lock_run_dir(out_dir)


def run_dir_holder(run_dir: Path) -> Optional[str]:
    """Who holds ``run_dir``'s lock (:func:`lock_run_dir`: "pid N on host"), or None when no run is going on there."""
    import fcntl

    lock = run_dir / RUN_LOCK
    if not lock.is_file():
        return None
    with open(lock, "a+") as f:  # writable: NFS emulates flock with fcntl locks, whose exclusive kind needs it
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            return f.read().strip() or "another process"
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


def remove_stale_temp_checkpoints(ckpt_path: str, out_dir: Path) -> None:
    """Delete the temp files a killed save left beside the checkpoint being resumed (``.last.ckpt.<random>.tmp``).

    ``zoo.checkpoint.atomic_torch_save`` writes a checkpoint to such a file and renames it into place; ``kill -9``
    (or a node failure) mid-save leaves it, as large as a checkpoint, and nothing would ever remove it. It is only
    removed when no process can still be writing it: the checkpoint is in this run's own (locked) directory, or its
    run directory's lock (:func:`lock_run_dir`) can be taken, i.e. the run that saved it has ended."""

    ckpt_dir = Path(ckpt_path).resolve().parent
    stale = sorted(ckpt_dir.glob(".*.ckpt.*.tmp"))
    if not stale:
        return
    run_dir = ckpt_dir.parent
    if run_dir != out_dir.resolve() and run_dir_holder(run_dir):
        return  # that run is still going: its temp file may be a save in progress
    for tmp in stale:
        size_mb = tmp.stat().st_size / 2**20
        tmp.unlink(missing_ok=True)
        log.warning(
            "removed %s (%.1f MB): a checkpoint save that never finished (the run was killed mid-save)", tmp, size_mb
        )


def check_compatibility(model, datamodule, validates: bool = False, tests: bool = False) -> None:
    """Checks that need both the model and the data, before any step runs: each model's own ``check_data``
    (e.g. DALL·E: text vocabulary / context length / pad id against the data's tokenizer; the image tokenizers
    refuse a resolution their downsampling does not divide and otherwise *adapt* their resolution to the data's,
    as their docstrings say). ``validates`` / ``tests``: the run will validate / test, so a model whose evaluation
    batches need precomputed features (its ``val_features_needed``) needs ``data.features.val`` / ``.test`` as well
    as ``.train``."""
    check = getattr(model, "check_data", None)
    if callable(check):
        check(datamodule)
    needed = getattr(model, "val_features_needed", ())
    features = getattr(datamodule, "features", None) or {}
    # the val batches would lack the features and the run stop at its first validation: in the sanity check, or after
    # all the training steps when sanity checks are off (experiment=leaderboard/ar_prior); the test batches, after
    # all of them (zoo-train's default test=true)
    for split, runs, what, skip in (
        ("val", validates, "validation", "trainer.limit_val_batches=0 to train without validation"),
        ("test", tests, "the test stage", "test=false to skip the test stage"),
    ):
        if runs and needed and "train" in features and split not in features:
            # image codes come from zoo-tokenize, CLIP features from zoo-embed: the message said "zoo-embed file" for
            # a DALL·E trained from codes too (its test split needs `zoo-tokenize ... split=test`)
            makers = {"image_tokens": f"zoo-tokenize tokenizer_ckpt=<its dvae/vqvae ckpt> split={split}"}
            commands = list(dict.fromkeys(makers.get(k, f"zoo-embed ... split={split}") for k in needed))
            tools = " / ".join(dict.fromkeys(c.split()[0] for c in commands))
            raise ConfigError(
                f"data.features.train={features['train']} is given but no data.features.{split}: {what} reads "
                f"{', '.join(needed)} from the {split} split's {tools} file (fix: data.features.{split}=<file from "
                f"{' and '.join(f'`{c}`' for c in commands)}>, or {skip})"
            )


def validates(cfg: DictConfig) -> bool:
    """Whether this zoo-train run will run validation (training, and limit_val_batches not 0)."""
    return bool(cfg.get("train", True)) and cfg.trainer.get("limit_val_batches") != 0  # None: Lightning's default


def tests(cfg: DictConfig) -> bool:
    """Whether this zoo-train run will run the test stage (``test``, and limit_test_batches not 0)."""
    return bool(cfg.get("test", False)) and cfg.trainer.get("limit_test_batches") != 0


def command_line_fields(node: str) -> Optional[set[str]]:
    """The fields of ``node`` (e.g. ``model.net``) this run's command line sets, as ``node.<field>=`` or in a whole
    ``node={<field>: ...}``; None outside a Hydra run (nothing known of its command line)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not HydraConfig.initialized():
        return None
    fields: set[str] = set()
    for o in OverridesParser.create().parse_overrides(list(HydraConfig.get().overrides.task)):
        if o.is_delete():
            continue
        if o.key_or_group == node and isinstance(value := o.value(), dict):
            fields |= {str(k) for k in value}
        elif o.key_or_group.startswith(node + "."):
            fields.add(o.key_or_group[len(node) + 1 :].split(".")[0])
    return fields


def fit_tiny_to_data(model, datamodule, given: Optional[Collection[str]] = None):
    """``model.preset=tiny`` means a tiny network *for the data at hand*: the sizes the data dictates (the model's
    ``data_sizes``: text vocabulary and length, resolution, CLIP width, image codebook and grid) replace the tiny
    preset's own where those do not fit (a tiny run that fits its data is unchanged), so ``zoo-train
    experiment=<any> model.preset=tiny`` keeps the experiment's data and only shrinks width and depth. ``given``: the
    fields of ``model.net`` the user set (zoo-train: those of its command line); they stay as given (check_data
    reports a mismatch in them). A field a config set gives way to the data's size: experiment=dalle1/train_shapes
    sets the 12x12 grid of its 48 px tokenizer, and with data.resolution=32 and a 32 px tokenizer the tiny run
    stopped on "makes a 8x8 grid ... expects 12x12". None: every field of ``model.net`` counts as given. Other presets
    are returned as they are. Returns the model, rebuilt with the data's sizes in its ``net`` hyper-parameters when
    any differ (so its checkpoint loads as it trained)."""
    hp = getattr(model, "hparams", None)
    if not hp or hp.get("preset") != "tiny" or not callable(getattr(model, "data_sizes", None)):
        return model
    net = dict(hp.get("net") or {})
    own = net if given is None else {k: v for k, v in net.items() if k in given}  # the user's: kept as given
    sizes = {k: v for k, v in model.data_sizes(datamodule).items() if k not in own and getattr(model.cfg, k) != v}
    if not sizes:
        return model
    if replaced := {k: net[k] for k in sizes if k in net}:
        log.info("model.preset=tiny: the data's sizes replace model.net's %s, set by the config", replaced)
    old_size, new_size = getattr(model.cfg, "image_size", None), sizes.get("image_size")
    if new_size and old_size and "attention_resolutions" not in own and getattr(model.cfg, "attention_resolutions", ()):
        # attention sits at the same LEVELS at the data's size (the resolutions are pixels at image_size: the tiny
        # GLIDE's (16, 8) at 32 px would put 8 px on no level of its two, and that attention would be dropped)
        sizes["attention_resolutions"] = [
            r * new_size // old_size for r in model.cfg.attention_resolutions if r * new_size % old_size == 0
        ]
    log.info("model.preset=tiny takes its data-dependent sizes from the data: %s", sizes)
    return type(model)(
        **{**hp, "net": {**net, **sizes}}, optimizer=model.optimizer_factory, scheduler=model.scheduler_factory
    )


def check_optimizer(model) -> None:
    """Build ``model.optimizer`` (and ``model.scheduler`` on it) once on a stand-in parameter before anything runs.

    They are ``_partial_`` factories the module calls only inside ``trainer.fit``: a value torch refuses
    (``model.optimizer.lr=-1``, ``betas=[0.9,1.5]``) was torch's ValueError and a traceback once fit had started,
    naming no key. Torch's own checks decide; the message says which node to fix."""
    import torch

    factory = getattr(model, "optimizer_factory", None)
    if factory is None:
        return
    try:
        optimizer = factory([torch.nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model.optimizer: {e} (fix: model.optimizer.<that argument>=<a value it accepts>)") from None
    scheduler = getattr(model, "scheduler_factory", None)
    if scheduler is not None:
        try:
            scheduler(optimizer)
        except (ValueError, TypeError, ZeroDivisionError) as e:
            raise ConfigError(
                f"model.scheduler: {e} (fix: model.scheduler.<that argument>=<a value it accepts>, or "
                f"model.scheduler=null)"
            ) from None


def check_val_check_interval(trainer_cfg: Any, datamodule: Any) -> None:
    """A step-count ``trainer.val_check_interval`` larger than an epoch fails inside ``trainer.fit`` with Lightning's
    traceback (after set-up, leaving an interrupted.ckpt at step 0); it is what a step-based experiment
    (``val_check_interval: 400``) gives on a smaller ``data.train_size``, or with ``trainer.limit_train_batches``
    for a short try. Checked here against an upper bound of the batches per epoch (one device, drop_last) as
    Lightning counts them: the train split's batches, cut by ``limit_train_batches`` (a count, or a fraction of
    them). Lightning does not check it when validation is off (``limit_val_batches=0``), so neither does this."""
    vci = trainer_cfg.get("val_check_interval")
    if isinstance(vci, bool) or not isinstance(vci, int) or trainer_cfg.get("check_val_every_n_epoch", 1) is None:
        return
    if trainer_cfg.get("fast_dev_run") or trainer_cfg.get("limit_val_batches") == 0:
        return
    limit = trainer_cfg.get("limit_train_batches")
    n_batches, why = None, ""
    dataset, batch_size = getattr(datamodule, "dataset", None), getattr(datamodule, "batch_size", None)
    if callable(dataset) and is_whole(batch_size, 1):
        try:
            n_batches, why = len(dataset("train")) // batch_size, f"data.batch_size={batch_size}"
        except TypeError:  # a streamed (iterable) split: its length is unknown
            pass
    if is_whole(limit, 0) and (n_batches is None or limit < n_batches):
        n_batches, why = limit, f"trainer.limit_train_batches={limit}"
    elif isinstance(limit, float) and n_batches is not None and limit < 1.0:
        n_batches, why = int(n_batches * limit), f"{why}, trainer.limit_train_batches={limit}"
    if n_batches is not None and 0 < n_batches < vci:
        raise ConfigError(
            f"trainer.val_check_interval={vci} is more than the {n_batches} training batches of an epoch "
            f"({why}) (fix: trainer.check_val_every_n_epoch=null to validate every {vci} steps across epochs, or "
            f"trainer.val_check_interval<={n_batches})"
        )


def check_lr_schedule(model, callbacks: list) -> None:
    """A warm-up + cosine schedule (``zoo.models.base.WarmupCosine``) needs the run's length. The experiments give
    it as ``total_steps: ${trainer.max_steps}``; in a run bounded by epochs or time instead (``trainer.max_steps=-1``)
    that was -1, and the learning rate fell to ``min_ratio`` of its peak right after the warm-up, silently. A
    ConfigError before training, unless ``TimeBudget`` sets the length (it fits ``total_steps`` to the budget)."""
    from zoo.callbacks import TimeBudget

    if any(isinstance(cb, TimeBudget) for cb in callbacks):
        return
    for fn in _cosine_schedules(model):
        if fn.total_steps < 1:
            raise ConfigError(
                f"model.scheduler.total_steps={fn.total_steps}: the cosine schedule has no length (it is "
                f"trainer.max_steps in the experiments, -1 in a run bounded by epochs or time), so the learning rate "
                f"would drop to min_ratio={fn.min_ratio} of its peak after the {fn.warmup_steps} warm-up steps (fix: "
                f"trainer.max_steps=<the run's optimizer steps>, or model.scheduler.total_steps=<steps>)"
            )


def _cosine_schedules(model) -> list:
    """The ``WarmupCosine`` factors of the model's configured scheduler (built on a stand-in optimizer: the model's
    own is only made inside fit); none when it has another scheduler or none."""
    import torch

    from zoo.models.base import WarmupCosine

    factory = getattr(model, "scheduler_factory", None)
    if factory is None:
        return []
    try:
        scheduler = factory(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0))
    except Exception:  # another scheduler's own needs: it reports them when fit builds it
        return []
    return [fn for fn in getattr(scheduler, "lr_lambdas", []) if isinstance(fn, WarmupCosine)]


def warn_resumed_schedule(ckpt_path: str, model, callbacks: list) -> None:
    """A resume restores the learning-rate schedule of the checkpoint, with its ``total_steps``: a run trained to N
    steps with the experiments' ``total_steps: ${trainer.max_steps}`` and resumed to 2N went on at ``min_ratio`` of
    the peak for every resumed step, the configured length unused, without a word. A WARNING says so (TimeBudget
    re-fits the length itself)."""
    from zoo.callbacks import TimeBudget
    from zoo.checkpoint import peek_checkpoint

    configured = _cosine_schedules(model)
    if not configured or any(isinstance(cb, TimeBudget) for cb in callbacks):
        return
    try:
        saved = peek_checkpoint(ckpt_path).get("lr_schedulers") or []
        saved_fns = [fn for s in saved for fn in s.get("lr_lambdas", []) if isinstance(fn, dict)]
    except Exception:  # check_resume_file has read it; anything odd here is Lightning's to report
        return
    for fn, state in zip(configured, saved_fns):
        if state.get("total_steps") not in (None, fn.total_steps):
            log.warning(
                "ckpt_path=%s: the learning-rate schedule goes on as it was saved, with total_steps=%s, not the "
                "configured model.scheduler.total_steps=%d: its cosine %s (a resume keeps the schedule it was saved "
                "with)",
                ckpt_path,
                state["total_steps"],
                fn.total_steps,
                f"ends at step {state['total_steps']} and later steps run at min_ratio={state.get('min_ratio')} of "
                f"the peak",
            )


def _plain_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        out[k] = f if math.isfinite(f) else str(f)
    return out


def check_trainer_counts(trainer_cfg: Any) -> None:
    """The trainer's counts and limits are checked before anything is built, each problem named with its fix.

    Lightning checks some of them only when the Trainer is built, after the data and the model (a tokenizer fit, a
    dataset made), and reports them as a Hydra traceback (``max_steps=-2``, ``limit_val_batches=2.5``,
    ``val_check_interval=1.5``); others it took as given: ``accumulate_grad_batches=0`` and
    ``val_check_interval=0`` / ``check_val_every_n_epoch=0`` failed on a ZeroDivisionError part-way into training
    (leaving an interrupted.ckpt), ``accumulate_grad_batches=-1`` trained on other gradients,
    ``gradient_clip_val=-1`` clipped nothing, ``val_check_interval=true`` validated after every batch and
    ``log_every_n_steps=-1`` / ``check_val_every_n_epoch=-1`` / ``num_sanity_val_steps=-2`` meant every step, every
    epoch and none, all without a word."""
    problems = []

    def whole(key: str, least: int, fix: str, none_ok: bool = True) -> None:
        if key in trainer_cfg or none_ok:  # max_steps: Lightning's default when left out, but not null
            check_whole(f"trainer.{key}", trainer_cfg.get(key), least, fix, none_ok=none_ok, problems=problems)

    whole("accumulate_grad_batches", 1, "1 to step the optimizer every batch")
    whole("max_steps", -1, "<steps>, or -1 for no step limit", none_ok=False)
    whole("max_epochs", -1, "<epochs>, -1 for no epoch limit, or null")
    whole("log_every_n_steps", 0, "<steps>, or 0 to log nothing during training")
    whole("check_val_every_n_epoch", 1, "1, or null to validate every trainer.val_check_interval steps across epochs")
    whole("num_sanity_val_steps", -1, "<batches>, or -1 for all of them")
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches"):
        value = trainer_cfg.get(key)
        if value is not None and not (is_whole(value, 0) or _fraction(value, 0.0)):
            problems.append(
                f"trainer.{key}={value!r} is not a limit (fix: an integer >= 0 for a number of batches, a fraction "
                f"in [0, 1] of them, or null for all)"
            )
    vci = trainer_cfg.get("val_check_interval")
    if isinstance(vci, (str, DictConfig)):  # a duration ("DD:HH:MM:SS", or {minutes: 30})
        from lightning.pytorch.trainer.setup import _parse_time_interval_seconds

        try:
            _parse_time_interval_seconds(OmegaConf.to_container(vci) if isinstance(vci, DictConfig) else vci)
        except Exception as e:  # Lightning's own parser decides; its message says what it expected
            problems.append(f"trainer.val_check_interval={vci!r} is not a duration: {e} (fix: e.g. '00:00:30:00')")
    elif vci is not None and not (is_whole(vci, 1) or _fraction(vci, 0.0, open_low=True)):
        problems.append(
            f"trainer.val_check_interval={vci!r} is not an interval (fix: an integer >= 1 for every N training "
            f"batches, a fraction in (0, 1] of an epoch, 'DD:HH:MM:SS' of time, or null for once an epoch)"
        )
    # inf clipped nothing, as null or 0 say: refused as for every other number option
    fix = "<a threshold > 0>, or null / 0 to not clip"
    check_number(
        "trainer.gradient_clip_val", trainer_cfg.get("gradient_clip_val"), 0, fix=fix, none_ok=True, problems=problems
    )
    algorithm = trainer_cfg.get("gradient_clip_algorithm")
    if algorithm is not None and str(algorithm).lower() not in ("norm", "value"):
        problems.append(f"trainer.gradient_clip_algorithm={algorithm!r} is not norm or value (fix: norm, or value)")
    if problems:
        raise ConfigError("; ".join(problems))


def _fraction(value: Any, low: float, open_low: bool = False) -> bool:
    """A float in [low, 1] (in (low, 1] with ``open_low``), or a whole float above 1 (Lightning takes 2.0 as 2)."""
    if isinstance(value, bool) or not isinstance(value, float) or not math.isfinite(value):
        return False
    return (low < value if open_low else low <= value) and (value <= 1.0 or value.is_integer())


def check_accelerator(trainer_cfg: Any) -> None:
    """``trainer=gpu|ddp|fsdp`` (accelerator gpu / cuda) on a machine without a visible CUDA device: Lightning said
    "No supported gpu backend found!" once data and model were built; now a ConfigError naming the CPU configs."""
    import torch

    accelerator = str(trainer_cfg.get("accelerator") or "auto").lower()
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator}, but no CUDA device is visible on this machine (fix: trainer=cpu, "
            f"trainer=ddp_cpu for several CPU processes, or trainer.accelerator=auto)"
        )
    check_cpu_devices(trainer_cfg)


def check_cpu_devices(trainer_cfg: Any) -> None:
    """``trainer.devices`` on the CPU accelerator (``trainer=cpu`` / ``ddp_cpu``, or ``auto`` on a machine with no
    accelerator) takes what Lightning's CPUAccelerator takes: a number of processes >= 1 (an int, or its digits) or
    ``auto``. ``devices=0``, ``abc``, ``-1`` or a list of device ids failed inside ``Trainer(...)``, after the data and
    the model were built, as a Hydra traceback. Other accelerators' devices (GPU ids, -1 for all) are Lightning's."""
    accelerator = str(trainer_cfg.get("accelerator") or "auto").lower()
    if accelerator == "auto":
        from lightning.fabric.utilities.device_parser import _select_auto_accelerator

        accelerator = _select_auto_accelerator()
    if accelerator != "cpu":
        return
    devices = trainer_cfg.get("devices", "auto")
    if devices == "auto" or devices is True or is_whole(devices, 1):
        return
    if isinstance(devices, str) and devices.strip().isdigit() and int(devices) >= 1:
        return
    raise ConfigError(
        f"trainer.devices={devices!r} is not a number of CPU processes (fix: trainer.devices=1, trainer.devices=auto, "
        f"or trainer=ddp_cpu trainer.devices=<N >= 2> for N processes; -1 and device ids are for GPUs)"
    )


def check_memory(cfg: DictConfig, available: Optional[int] = None) -> None:
    """A ``paper`` preset on a CPU machine: ``zoo-train model=dalle model.preset=paper`` (12.3B parameters) began to
    allocate ~200 GB and was killed by the kernel ("Killed", no message, nothing saved). The module is first built on
    the meta device (no memory; a second or two) and the bytes it must hold come what may -- fp32 weights, and for
    each trained parameter its gradient and AdamW's two moments (16 bytes; another 4 with the EMA callback) -- are
    compared with the memory available (``available_memory``). Activations come on top, so passing is no promise.
    Only ``paper*`` presets (the others fit any machine of this project) on the CPU; a build that fails on the meta
    device is left to the real build, which reports its own errors."""
    import torch

    preset = str(cfg.model.get("preset") or "")
    accelerator = str(cfg.trainer.get("accelerator") or "auto").lower()
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if not preset.startswith("paper") or not on_cpu or not cfg.get("train", True):
        return
    from zoo.precision import available_memory  # not at import: zoo.train starts without torch

    available = available_memory() if available is None else available
    if not available:
        return
    try:
        with torch.device("meta"):
            probe = instantiate(cfg.model, "model")
    except Exception:  # the real build below names what is wrong
        return
    params = list(probe.parameters())
    n = sum(p.numel() for p in params)
    trained = sum(p.numel() for p in params if p.requires_grad)
    ema = any("ema" in str((c or {}).get("_target_", "")).lower() for c in (cfg.get("callbacks") or {}).values())
    need = 4 * n + 12 * trained + (4 * n if ema else 0)
    if need > available:
        gib = 2**30
        raise ConfigError(
            f"model.preset={preset}: {n / 1e9:.2f}B parameters need at least {need / gib:.0f} GiB to train (fp32 "
            f"weights, gradients and AdamW's two moments{', the EMA copy' if ema else ''}; activations on top) and "
            f"this machine has {available / gib:.1f} GiB available (fix: model.preset=shapes or tiny here; the paper "
            f"presets are for counting and for machines with the memory)"
        )


MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision's


def check_run_options(cfg: DictConfig) -> None:
    """train.yaml's own top-level knobs: seed=abc was int()'s ValueError inside Lightning (a traceback), and
    float32_matmul_precision=hihg only a torch warning that the call "has no effect": the run went on at another
    precision than asked."""
    seed = cfg.get("seed")
    check_whole("seed", seed, fix=42, none_ok=True)
    check_compile(cfg)
    precision = cfg.get("float32_matmul_precision")
    if precision and precision not in MATMUL_PRECISIONS:
        raise ConfigError(
            f"float32_matmul_precision={precision!r} is not one of {', '.join(MATMUL_PRECISIONS)} "
            f"(fix: float32_matmul_precision=high, or null to keep torch's default)"
        )


def check_compile(cfg: DictConfig) -> None:
    """``compile=true`` (zoo.callbacks.compile) applies to components whose training step is one call of their
    network; with any other it would compile nothing and change nothing, so it is refused before anything is built."""
    flag = check_switch("compile", cfg.get("compile", False))
    if not flag or not cfg.get("train", True) or "model" not in cfg or "_target_" not in cfg.model:
        return
    from hydra._internal.utils import _locate

    try:
        target = _locate(str(cfg.model._target_))
    except Exception:  # an unimportable target: instantiate names the node
        return
    if not getattr(target, "compile_module", None):
        raise ConfigError(
            f"compile=true does not apply to {target.__name__}: its training step is not one call of a network "
            f"(it compiles model=diffusion_prior, glide, glide_inpaint, unclip_decoder and upsampler; fix: drop "
            f"compile=true)"
        )


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (and test) the configured model; write ``metrics.json`` in the run directory; return the metrics."""
    import lightning as L
    import torch

    check_run_options(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    if cfg.get("float32_matmul_precision"):
        torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    from zoo.nn.conv import apply_conv_backend  # conv_backend=auto: NNPACK's 3x3 convolutions on AVX2 CPUs

    apply_conv_backend(cfg.get("conv_backend", "auto"))
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_lock = _take_run_dir_lock(out_dir)
    try:
        return _train(cfg, out_dir)
    finally:
        if run_lock is not None:
            run_lock.close()


def _train(cfg: DictConfig, out_dir: Path) -> dict[str, float]:
    """``train`` once the run directory is locked."""
    import lightning as L
    import torch

    from zoo.callbacks.checkpoint_info import CheckpointInfo
    from zoo.config import check_types
    from zoo.precision import check_precision

    check_no_earlier_run(cfg, out_dir)  # first: nothing of the earlier run is touched
    check_accelerator(cfg.trainer)
    check_trainer_counts(cfg.trainer)
    # the rest of the trainer node's plain values against Trainer's annotations, and trainer.precision, now: the
    # Trainer is built after the data and the model (a BPE fit, a dataset), where a typo was found minutes later
    check_types(cfg.trainer, "trainer", skip={"precision", "plugins"})
    check_precision(cfg.trainer.get("precision", "auto"))
    check_memory(cfg)
    plain_cfg = OmegaConf.to_container(cfg, resolve=True)
    # the callbacks before the data and the model: their constructors check their options (a sample grid of 0
    # images, a NaN time budget), which failed after a dataset was made and a tokenizer fitted; none needs either
    callbacks = _instantiate_dict(cfg.get("callbacks"))

    # --- build everything (fails here, before training, on a bad config) ---------------------------------
    log.info("data: %s", cfg.data._target_)
    datamodule = instantiate(cfg.data, "data")
    log.info("model: %s", cfg.model._target_)
    # the model before the tokenizer: a misspelt model knob fails at once, not after a first BPE fit (~40 s on
    # the shapes captions); the model's checks against the data (check_compatibility) need the tokenizer
    model = instantiate(cfg.model, "model")
    # the model's checks of the data that need no text tokenizer, before it is fitted (a DALL·E's image tokenizer
    # trained at another data.resolution was refused after a 48 s BPE fit)
    if callable(check_image_data := getattr(model, "check_image_data", None)):
        check_image_data(datamodule)
    if hasattr(datamodule, "prepare_tokenizer"):
        datamodule.prepare_tokenizer()
    model = fit_tiny_to_data(model, datamodule, command_line_fields("model.net"))
    check_compatibility(model, datamodule, validates(cfg), tests(cfg))
    check_optimizer(model)
    if cfg.get("train", True):
        check_val_check_interval(cfg.trainer, datamodule)
    callbacks.append(CheckpointInfo(plain_cfg))
    if cfg.get("compile", False) and cfg.get("train", True):
        from zoo.callbacks.compile import CompileTraining

        callbacks.append(CompileTraining())
    if cfg.get("train", True):
        check_lr_schedule(model, callbacks)
    from zoo.callbacks.progress import default_progress_bar  # "Epoch 0", not Lightning's "Epoch 0/-2"

    bar = default_progress_bar(callbacks, bool(cfg.trainer.get("enable_progress_bar", True)))
    if bar is not None:
        callbacks.append(bar)
    ckpt_path = resolve_ckpt_path(cfg)
    if ckpt_path:
        remove_stale_temp_checkpoints(ckpt_path, out_dir)
    if ckpt_path:
        continue_wandb_run(cfg.get("logger"), ckpt_path)
    loggers = _instantiate_dict(cfg.get("logger"))
    from omegaconf import open_dict

    from zoo.precision import resolve_precision  # trainer.precision=auto -> what this hardware runs fast

    precision, why = resolve_precision(cfg.trainer.get("precision", "auto"), cfg.trainer.get("accelerator", "auto"))
    log.info("precision: %s (%s)", precision, why)
    with open_dict(cfg.trainer):  # the resolved value (the run config saved above keeps "auto")
        cfg.trainer.precision = precision
    from lightning.fabric.plugins import CheckpointIO

    from zoo.checkpoint_io import AtomicCheckpointIO  # last.ckpt is never half-written (see its module)

    plugins = [
        instantiate(p, "trainer.plugins") if isinstance(p, DictConfig) else p for p in cfg.trainer.get("plugins") or []
    ]
    if not any(isinstance(p, CheckpointIO) for p in plugins):  # a user's own CheckpointIO wins
        plugins.append(AtomicCheckpointIO())
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        plugins=plugins,
        callbacks=callbacks,
        logger=loggers or False,
        default_root_dir=str(out_dir),
        # Our ResumableDataLoader shards by rank itself (and keeps its mid-epoch position across restarts).
        use_distributed_sampler=False,
    )
    resume_step = check_resume_file(ckpt_path, model) if ckpt_path else 0
    if ckpt_path and cfg.get("train", True):
        warn_resumed_schedule(ckpt_path, model, callbacks)
    max_steps = cfg.trainer.get("max_steps")
    if ckpt_path and cfg.get("train", True) and isinstance(max_steps, int) and 0 <= max_steps <= resume_step:
        # Lightning would end fit at once without a word; a warning, not an error: a requeued job that already
        # finished (SLURM, a sweep re-run) must still exit cleanly
        log.warning(
            "ckpt_path=%s is at step %d and trainer.max_steps=%d: nothing left to train "
            "(to train on: trainer.max_steps=%d or more)",
            ckpt_path,
            resume_step,
            max_steps,
            resume_step + 1,
        )
    if ckpt_path and cfg.get("train", True) and trainer.is_global_zero:
        from zoo.loggers import ResumableCSVLogger

        for lg in loggers:
            if isinstance(lg, ResumableCSVLogger) and (n := lg.drop_rows_from(resume_step)):
                log.warning(
                    "%s: removed %d rows logged at step %d or later, after the checkpoint (the run that wrote them was "
                    "stopped before saving them); the resume logs those steps again",
                    Path(lg.log_dir) / "metrics.csv",
                    n,
                    resume_step,
                )
    for lg in loggers:
        lg.log_hyperparams(logged_config(plain_cfg, model))
    # Lightning would log model.hparams again at fit start, flattened at the top level (preset, net, lr ... beside
    # our model.*): two copies of the model's hyper-parameters in W&B's config (and CSV / TensorBoard hparams),
    # differing where the Lit or fit_tiny_to_data changed net, the top-level one overwriting any run-config key of
    # the same name. logged_config already holds them under model; this is the flag save_hyperparameters(logger=)
    # sets, set here once for every Lit.
    for m in (model, datamodule):
        if hasattr(m, "_log_hyperparams"):
            m._log_hyperparams = False

    try:
        if cfg.get("train", True):
            from lightning.pytorch.utilities.exceptions import SIGTERMException

            try:
                t_fit = time.perf_counter()
                with warnings.catch_warnings():
                    if not ckpt_path and not slurm_requeued():
                        # check_no_earlier_run left nothing for Lightning's implicit ckpt_path="last" to find; its two
                        # warnings ("the last model of the previous fit will be used", "no last checkpoint") would
                        # tell every new run otherwise
                        for message in (
                            r".*ckpt_path=None\)` was called without a model",
                            r'.*ckpt_path="last"\) is set',
                        ):
                            warnings.filterwarnings("ignore", message=message)
                    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
                fit_minutes = (time.perf_counter() - t_fit) / 60.0
            except SIGTERMException:
                # Lightning raises SystemExit() (status 0) on SIGTERM after the on-exception checkpoint is saved.
                # A scheduler or a shell script must see that the job did not finish: exit 128 + SIGTERM.
                log.warning(
                    "SIGTERM at step %d: %s",
                    trainer.global_step,
                    _where_to_resume(trainer, ckpt_path, resume_step),
                )
                raise SystemExit(143) from None
            except SystemExit:
                if not trainer.interrupted:
                    raise
                # Ctrl-C (SIGINT): Lightning saves interrupted.ckpt (on_exception) then calls sys.exit(1), so the
                # user never heard how to go on; 128 + SIGINT says "interrupted" to a shell as SIGTERM's 143 does
                log.warning(
                    "interrupted (SIGINT) at step %d: %s",
                    trainer.global_step,
                    _where_to_resume(trainer, ckpt_path, resume_step),
                )
                raise SystemExit(130) from None
            except Exception as e:
                if ckpt_path:
                    if isinstance(e, RuntimeError) and "Error(s) in loading state_dict" in str(e):
                        raise _state_dict_mismatch(e, ckpt_path) from e
                raise
            _save_final_last(trainer, out_dir / "checkpoints" / "last.ckpt")
            if trainer.interrupted:  # Ctrl-C: Lightning stopped gracefully; keep the state, skip testing
                log.warning("interrupted at step %d; resume with ckpt_path=last", trainer.global_step)
                return _plain_metrics(dict(trainer.callback_metrics)) | {"global_step": trainer.global_step}
        metrics = dict(trainer.callback_metrics)
        if cfg.get("test", False):
            if cfg.get("train", True):
                best = getattr(trainer.checkpoint_callback, "best_model_path", "")
            else:
                # train=false test=true ckpt_path=<file>: the test is of that file's weights (it tested the model as
                # built, untrained, and wrote those metrics to metrics.json without a word)
                best = ckpt_path or ""
                if not best:
                    log.warning("train=false and no ckpt_path: the test stage evaluates the model as built (untrained)")
            try:
                trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
            except RuntimeError as e:
                if best and "Error(s) in loading state_dict" in str(e):
                    raise _state_dict_mismatch(e, best) from e
                raise
            metrics.update(trainer.callback_metrics)
        metrics = _plain_metrics(metrics)
        # a test-only run (train=false) of ckpt_path: the step of the weights tested (the trainer's own stays 0)
        metrics["global_step"] = trainer.global_step if cfg.get("train", True) else resume_step
        # What the training cost and where (zoo-eval's leaderboard reports it beside each row): wall minutes of
        # this fit (a resumed run counts only its last leg), the threads it ran on and the CPU's capability.
        if cfg.get("train", True):
            from zoo.precision import describe_cpu

            metrics["train_minutes"] = round(fit_minutes, 2)
            metrics["threads"] = torch.get_num_threads()
            metrics["cpu"] = describe_cpu()
        if trainer.is_global_zero:
            (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
            log.info("metrics written to %s", out_dir / "metrics.json")
        return metrics
    finally:
        _finish_wandb()


def logged_config(plain_cfg: dict, model: Any) -> dict:
    """What the loggers record as the run's hyper-parameters (once): the whole run config, its ``model`` section
    updated with the model's own hyper-parameters, i.e. the values it was built with (the Lit may complete ``net``,
    and ``model.preset=tiny`` takes data-dependent sizes from the data), so the record is one complete set."""
    hparams = dict(getattr(model, "hparams", None) or {})
    if not hparams:
        return plain_cfg
    plain = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in hparams.items()}
    return {**plain_cfg, "model": {**(plain_cfg.get("model") or {}), **plain}}


def _save_final_last(trainer, path: Path) -> None:
    """Leave last.ckpt at the final step. If the step-based callback already saved this very step (mid-epoch,
    from inside the loop), keep its file: saved after fit returns, Lightning would mark the epoch finished and a
    resume would skip the rest of that epoch's data. Not in ``fast_dev_run`` (``debug=fdr``): Lightning suppresses
    checkpointing there, and a one-batch debug run's last.ckpt would become the newest run of its task_name, the one
    a later ``ckpt_path=last`` resumes."""
    if trainer.fast_dev_run:
        return
    for cb in trainer.checkpoint_callbacks:
        if getattr(cb, "save_last", False) and getattr(cb, "_last_global_step_saved", -1) == trainer.global_step:
            if Path(cb.last_model_path or "") == path:
                return
    # weights_only=False said, not left to Lightning's default: last.ckpt is the resume point, so it must hold the
    # optimizer, scheduler, loop and callback states (what ModelCheckpoint saves too); left unset, Lightning logged
    # "`weights_only` was not set, defaulting to `False`" at the end of every training run
    trainer.save_checkpoint(path, weights_only=False)


def _finish_wandb() -> None:
    """Close the W&B run so the next multirun job gets a run of its own."""
    try:
        import wandb
    except ImportError:  # pragma: no cover
        return
    if wandb.run is not None:
        wandb.finish()


def objective(cfg: DictConfig) -> Optional[float]:
    """Train; what a sweep optimises: ``cfg.optimized_metric`` of the metrics, or None."""
    metrics = train(cfg)
    name = cfg.get("optimized_metric")
    if name:
        if name not in metrics:  # e.g. validation switched off: nothing to optimise, but the run itself is fine
            from lightning.pytorch.utilities import rank_zero_only

            note = missing_metric_note(cfg, str(name), metrics)
            if note and rank_zero_only.rank == 0:  # once, not once per DDP process
                log.warning(note)
            return None
        return metrics[name]
    return None


def missing_metric_note(cfg: DictConfig, name: str, metrics: dict[str, Any]) -> Optional[str]:
    """Why ``optimized_metric`` is not among a finished run's ``metrics``, or None when nothing needs saying.

    "optimized_metric=val/loss was not logged" was all a short run said (found: trainer.max_steps=3 on tiny presets,
    where the first validation is at the end of an 8-batch epoch). A val/ (test/) metric of a run that scheduled no
    validation (test) stage at all is expected: no word. A val/ metric of a run whose validation never came within
    its steps says so and how to get one. When the stage ran and the metric is still missing (a misspelt name), the
    logged metrics are listed, as before."""
    stage = name.split("/", 1)[0]
    ran = any(str(k).startswith(stage + "/") for k in metrics)
    if stage == "val" and not ran:
        if not validates(cfg):
            return None  # train=false or trainer.limit_val_batches=0: no validation was asked for
        steps = metrics.get("global_step")
        interval = cfg.trainer.get("val_check_interval")
        every = cfg.trainer.get("check_val_every_n_epoch", 1)
        when = "at the end of each epoch" if interval in (None, 1.0) else f"every {interval} training batches"
        if every is not None and every != 1:
            when += f" of every {every}th epoch"
        max_steps = cfg.trainer.get("max_steps")
        limit = f"; trainer.max_steps={max_steps}" if isinstance(max_steps, int) and max_steps > 0 else ""
        return (
            f"optimized_metric={name} was not logged: no validation ran within the run's {steps} training steps "
            f"(validation runs {when}: trainer.val_check_interval={shown(interval)}, "
            f"trainer.check_val_every_n_epoch={shown(every)}{limit}) (fix: trainer.val_check_interval=<at most "
            f"{steps} steps> for a validation within the run, with trainer.check_val_every_n_epoch=null when that is "
            f"more than an epoch, or a longer run)"
        )
    if stage == "test" and not ran and not tests(cfg):
        return None  # test=false: the test stage was not asked for
    return f"optimized_metric={name} was not logged; logged: {sorted(metrics)}"


# model.inpaint_masks is open as model.net is: a dict of zoo.data.masks.MaskConfig overrides, {} in the yaml, so its
# documented forms (model.inpaint_masks.rect_prob=0.5, model.inpaint_masks={...}, the masks errors' fix text) were
# "not in struct" without ++; MaskConfig still refuses a field it does not have
main = entry_point(objective, "train", returns=True, open_keys=("model.net.", "model.inpaint_masks."))

if __name__ == "__main__":
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    main()
