"""Hydra callbacks of every entry point (conf/hydra/default.yaml, ``hydra.callbacks``)."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class SetAsideEarlierSweep(Callback):
    """A multirun into a sweep directory that already holds numbered job folders (the tables' fixed
    ``hydra.sweep.dir``, e.g. ``logs/eval/glide/guidance_sweep``) first moves them, with the earlier
    ``multirun.yaml``, to ``<sweep dir>/earlier/<time of the earlier sweep>/``.

    Job numbers follow the new sweep's list, so a subset or "more points" re-run overwrote some of the earlier jobs
    with other settings and left the rest in place: ``eval.leaderboard <sweep dir>`` then read a table of both
    sweeps, with no sign of which job came from which (e.g. guidance 8 from today beside guidance 3 from last week).
    Folders named otherwise (``subdir: ${row}``) are one row each, replaced row by row, and stay.

    Not when ``ckpt_path=last`` (zoo-train) repeats the earlier sweep (the same overrides but for ckpt_path and the
    training length): that re-run continues it, each job from its own folder (``zoo.train.resolve_ckpt_path``), so
    the jobs stay where they are. Another sweep list would have job n resume the earlier job n of other settings."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(str(config.hydra.sweep.dir))
        if not sweep.is_dir() or (config.get("ckpt_path") == "last" and repeats_earlier_sweep(sweep, config)):
            return
        jobs = sorted((d for d in sweep.iterdir() if d.is_dir() and d.name.isdigit()), key=lambda d: int(d.name))
        if not jobs:
            return
        from zoo.train import run_dir_holder

        # A job still running there (a zoo-train holding its run-directory lock) would lose its directory from
        # under it: it goes on writing to the old path, recreated empty, where this sweep's job of that number
        # then writes too. Refused, as a second zoo-train into a running run's directory is.
        busy = [(d.name, holder) for d in jobs if (holder := run_dir_holder(d))]
        if busy:
            print(
                f"error: {sweep} holds job {busy[0][0]} of a sweep that is still running ({busy[0][1]}): its jobs "
                f"cannot be moved aside (fix: another hydra.sweep.dir, or wait for that sweep to end)",
                file=sys.stderr,
            )
            sys.exit(2)  # Hydra turns a callback's exception into a warning and would go on
        moved = jobs + [f for f in (sweep / "multirun.yaml",) if f.is_file()]
        when = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(max(p.stat().st_mtime for p in moved)))
        dest = sweep / "earlier" / when
        n = 1
        while dest.exists():  # two earlier sweeps within the same second
            dest, n = sweep / "earlier" / f"{when}_{n}", n + 1
        dest.mkdir(parents=True)
        for p in moved:
            p.rename(dest / p.name)
        log.warning(
            "%s held the jobs %s of an earlier sweep: moved to %s, so that this sweep's jobs are the only ones there",
            sweep,
            ",".join(d.name for d in jobs),
            dest,
        )


def repeats_earlier_sweep(sweep: Path, config: DictConfig) -> bool:
    """This sweep's overrides (and Optuna search space) are those of the sweep ``sweep/multirun.yaml`` recorded, but
    for what a resume may change (``zoo.train.RESUME_FREE_KEYS``): job n is the earlier job n, with its settings."""
    import yaml
    from omegaconf import OmegaConf

    from zoo.train import _settings

    try:
        earlier = yaml.safe_load((sweep / "multirun.yaml").read_text())["hydra"]
        params = config.hydra.sweeper.get("params")
        return _settings(earlier["overrides"]["task"]) == _settings(list(config.hydra.overrides.task)) and (
            earlier["sweeper"].get("params") == (OmegaConf.to_container(params) if params is not None else None)
        )
    except Exception:  # no readable record of the earlier sweep: not known to be the same
        return False


class LinkJobsIntoSweepDir(Callback):
    """A sweep over ``experiment=`` (``zoo-eval -m experiment=dalle1/rerank_n1,dalle1/rerank_n2``) put each job
    under its own row's ``task_name`` (``logs/dalle1_rerank_n1/multiruns/<time>/0``, ``logs/dalle1_rerank_n2/...
    /1``), while the sweep's own folder (``logs/eval/multiruns/<time>``) held only ``multirun.yaml``: nothing said
    where the jobs went, and ``eval.leaderboard <sweep dir>`` found no job. A job whose folder is elsewhere gets a
    symlink ``<sweep dir>/<job number>`` to it, so the sweep's folder lists every job again."""

    sweep_dir: Any = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # the launcher resolves the same config object (Hydra caches ${now:...} per object): the same folder
        self.sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:  # at the start: a failing job is listed too
        if self.sweep_dir is None:
            return
        out = Path(str(config.hydra.runtime.output_dir)).resolve()
        if out.parent == self.sweep_dir:
            return
        link = self.sweep_dir / str(config.hydra.job.num)
        if link.exists() or link.is_symlink():
            return
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        link.symlink_to(out, target_is_directory=True)
        log.info("job %s ran in %s (its own task_name's folder): linked as %s", config.hydra.job.num, out, link)


class RecordBestTrialJobDir(Callback):
    """After an Optuna sweep (``hparams_search=optuna``), say which job directory the best trial ran in.

    The sweeper's ``optimization_results.yaml`` gives ``best_params`` and ``best_value`` only, so a user had to open
    every ``<sweep dir>/<n>/.hydra/overrides.yaml`` to find the run (its checkpoints, samples, metrics) that won. The
    sweeper keeps no map from trial to job, so the job is found the way a user would: the numbered job whose
    overrides set every best parameter to its best value and, when its ``metrics.json`` holds ``optimized_metric``,
    whose value is ``best_value``. ``best_job_dir`` is added to ``optimization_results.yaml`` (a list when several
    jobs fit, null when none does: the best trial ran in an earlier sweep of a stored study) and logged."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if "optuna" not in str(config.hydra.sweeper.get("_target_", "")).lower():
            return
        sweep = Path(str(config.hydra.sweep.dir))
        results_file = sweep / "optimization_results.yaml"
        if not results_file.is_file():  # the sweep failed before the sweeper wrote it
            return
        import yaml

        results = yaml.safe_load(results_file.read_text()) or {}
        if "best_params" in results:
            found = best_trial_job_dirs(sweep, results["best_params"], results.get("best_value"))
            results["best_job_dir"] = found[0] if len(found) == 1 else (found or None)
            what = f"best trial (value {results.get('best_value')})"
            shown = results["best_job_dir"]
        elif "solutions" in results:  # several objectives: a Pareto front, one job per solution
            for s in results["solutions"]:
                found = best_trial_job_dirs(sweep, s.get("params") or {}, None)
                s["job_dir"] = found[0] if len(found) == 1 else (found or None)
            found = shown = [s["job_dir"] for s in results["solutions"]]
            what = "Pareto-optimal trials"
        else:
            return
        results_file.write_text(yaml.safe_dump(results, sort_keys=False))
        if found:
            log.info("the %s ran in %s (written to %s)", what, shown, results_file)
        else:
            log.warning(
                "no job in %s has the best trial's parameters %s: it ran in an earlier sweep of this study "
                "(hydra.sweeper.storage)",
                sweep,
                results.get("best_params"),
            )


def best_trial_job_dirs(sweep: Path, params: dict, value: Any) -> list[str]:
    """The numbered job directories of ``sweep`` whose overrides set every one of ``params`` to its value (and
    whose ``metrics.json`` holds ``value`` as the job's ``optimized_metric``, when both are known)."""
    import json

    import yaml
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    found = []
    jobs = sorted((d for d in sweep.iterdir() if d.is_dir() and d.name.isdigit()), key=lambda d: int(d.name))
    for job in jobs:
        try:
            overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
            given = {o.key_or_group: o.value() for o in parser.parse_overrides(overrides)}
        except Exception:  # a job that did not start, or overrides Hydra cannot read back: not the best trial
            continue
        if any(k not in given or given[k] != v for k, v in params.items()):
            continue
        if value is not None:
            try:
                metric = yaml.safe_load((job / ".hydra" / "config.yaml").read_text()).get("optimized_metric")
                job_value = json.loads((job / "metrics.json").read_text())[metric]
            except Exception:  # no metrics.json / no optimized_metric: the parameters alone decide
                job_value = None
            if job_value is not None and float(job_value) != float(value):
                continue
        found.append(str(job))
    return found


# Run directories LockRunDir locked in this process (resolved path -> the open lock file), for ``zoo.train.train`` to
# take over. Kept here, not in zoo.train: ``python -m zoo.train`` runs that file as ``__main__``, a second module
# object beside the ``zoo.train`` this callback imports, each with its own globals.
_HELD_RUN_LOCKS: dict[str, Any] = {}


def take_held_run_dir_lock(out_dir: Path) -> Any:
    """The open lock file LockRunDir holds on ``out_dir``, handed over to the caller (who closes it), or None."""
    return _HELD_RUN_LOCKS.pop(str(Path(out_dir).resolve()), None)


class LockRunDir(Callback):
    """zoo-train's run-directory lock (``zoo.train.lock_run_dir``), taken before Hydra writes into the directory.

    Hydra saves the job's ``.hydra/config.yaml``, ``overrides.yaml`` and ``hydra.yaml`` and opens its job log
    before the task (``train``, which locks the directory) runs: a second ``zoo-train`` into the directory of a
    running one was refused, but had already replaced the running run's record with its own config and appended its
    lines to that run's log. ``on_run_start`` comes before all of that (``hydra._internal.hydra.Hydra.run``, then
    ``hydra.core.utils.run_job``); ``train`` takes the lock over and releases it when it ends. A refused run exits
    here with status 2 (Hydra turns a callback's exception into a warning and would go on). A multirun's jobs lock
    their own directories in ``train``."""

    out_dir: Any = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from zoo.config import report_user_errors

        # run_job's own reading of the directory: the same config object (its ${now:...} is cached), made absolute
        self.out_dir = Path(os.path.abspath(str(config.hydra.run.dir)))
        report_user_errors(self._lock)(self.out_dir)
        # a new run in the directory of an earlier one is refused here too (zoo.train.check_no_earlier_run), before
        # Hydra replaces that run's .hydra record with the refused command's; config's own checkpoint dirpaths name
        # ${hydra:runtime.output_dir}, unset this early, so this looks in <run dir>/checkpoints (train looks in all)
        report_user_errors(self._check_no_earlier_run)(config, self.out_dir)

    @staticmethod
    def _check_no_earlier_run(config: DictConfig, out_dir: Path) -> None:
        from omegaconf import OmegaConf

        from zoo.train import check_no_earlier_run

        check_no_earlier_run(
            OmegaConf.create({"train": config.get("train", True), "ckpt_path": config.get("ckpt_path")}), out_dir
        )

    @staticmethod
    def _lock(out_dir: Path) -> None:
        from zoo.train import lock_run_dir

        key = str(out_dir.resolve())
        if key not in _HELD_RUN_LOCKS:
            out_dir.mkdir(parents=True, exist_ok=True)
            lock = lock_run_dir(out_dir)  # None on a DDP / SLURM rank > 0
            if lock is not None:
                _HELD_RUN_LOCKS[key] = lock

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        lock = take_held_run_dir_lock(self.out_dir) if self.out_dir is not None else None
        if lock is not None:  # the job failed before train took the lock over
            lock.close()
