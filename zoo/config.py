"""Building objects from the user's Hydra config, and the one policy for errors a user reads.

- ``instantiate(node, what=...)``: ``hydra.utils.instantiate`` after a type check of the node's plain values against
  the target's constructor annotations (``data.batch_size=abc`` -> "data.batch_size must be an int, got 'abc'"),
  and with our own errors surfaced as they are instead of wrapped in Hydra's ``InstantiationException``, so the
  message that names the fix is the last thing the user reads; a ``_target_`` that cannot be imported becomes a
  ``ConfigError`` naming the config node. Only the user's own config comes here: nothing read from a file is ever
  instantiated (files go through ``zoo.registry``). Every entry point (zoo-train, zoo-sample, zoo-embed, zoo-eval)
  builds through it: one policy.
- ``USER_ERRORS`` / ``report_user_errors``: errors that carry their own fix (bad config, missing or unsafe files)
  are printed as one message without the traceback above it; ``ZOO_DEBUG=1`` (or ``HYDRA_FULL_ERROR=1``) shows
  the full trace.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
import typing
from typing import Any, Callable, Optional

from zoo.errors import ConfigError, MissingWeightsError

log = logging.getLogger("zoo")


def _user_error_types() -> tuple[type[BaseException], ...]:
    from zoo.checkpoint import CorruptCheckpointError
    from zoo.registry import UnsafeCheckpointError

    return (ConfigError, MissingWeightsError, UnsafeCheckpointError, CorruptCheckpointError, FileNotFoundError)


def check_types(node: Any, what: str, skip: Any = ()) -> None:
    """Check each plain value of ``node`` against the annotation of the constructor argument it feeds.

    Hydra passes strings through as they are, so a typo such as ``data.batch_size=abc`` would otherwise surface as
    a ``TypeError`` deep inside the constructor. Nested nodes and unannotated arguments are left to the target."""
    from hydra._internal.utils import _locate  # get_class would log an error for a classmethod target
    from omegaconf import DictConfig, ListConfig, OmegaConf

    from zoo.errors import shown
    from zoo.kinds import kind_of

    if not isinstance(node, DictConfig) or "_target_" not in node:
        return
    try:
        target = _locate(str(node._target_))
    except Exception:  # an unimportable target: instantiate names the node
        return
    # A subclass passes **kwargs on to its base (ShapesDataModule -> ImageTextDataModule): walk the MRO. A plain
    # function target (model.scheduler's cosine_with_warmup) is checked against its own signature.
    hints: dict[str, Any] = {}
    params: set[str] = set()
    inits = (
        [vars(k).get("__init__") for k in reversed(target.__mro__) if k is not object]
        if isinstance(target, type)
        else []
    )
    for init in inits + ([target] if inspect.isfunction(target) else []):
        if init is None:
            continue
        try:
            hints.update(typing.get_type_hints(init))
            params |= set(inspect.signature(init).parameters)
        except Exception:
            continue
    check_keys(node, what, target, skip)
    for key in node:
        if key.startswith("_") or key in skip:
            continue
        if OmegaConf.is_missing(node, key):
            continue
        value = node[key]
        if isinstance(value, DictConfig):
            # a nested _target_ node (model.optimizer, model.scheduler: _partial_ factories the module calls only
            # once fit has started): checked now too, so model.optimizer.lr=abc is named before anything is built,
            # not a TypeError from inside torch.optim at the first step
            check_types(value, f"{what}.{key}")
            continue
        if isinstance(value, ListConfig) or key not in params or key not in hints:
            continue
        kind = kind_of(hints[key])  # None: a kind left to the code's own checks (a class, Any in a union)
        if kind is not None and not kind[0](value):
            # in zoo.kinds' words, as the checkpoint and model.net checks: "a whole number or null" for Optional[int]
            raise ConfigError(f"{what}.{key}={shown(value)} must be {kind[1]} (fix: {what}.{key}=<{kind[1]}>)")


def accepted_keys(target: Any) -> Optional[set[str]]:
    """The keyword arguments ``target`` (a class or a function) takes, or None when it takes any (``**kwargs`` that
    no constructor in its MRO closes) or its signature cannot be read.

    The first ``__init__`` of the MRO, from the class itself up, without ``**kwargs`` ends the walk: ShapesDataModule
    passes ``**kwargs`` to ImageTextDataModule, whose named arguments are the whole set; a LightningModule's own
    ``__init__(*args, **kwargs)`` further up is never reached by a model's explicit one. A classmethod factory's
    ``**kwargs`` go to its class (the pipelines' ``from_checkpoints(..., **kw)`` build ``cls(..., **kw)``): the walk
    goes on through the class's constructors, so a misspelt ``+generator.<key>`` is named before any checkpoint loads
    (it was a TypeError from the constructor after they had)."""
    if isinstance(target, type):
        calls = [vars(k)["__init__"] for k in target.__mro__ if k is not object and "__init__" in vars(k)]
    elif callable(target):
        calls = [target]
        owner = getattr(target, "__self__", None)
        if isinstance(owner, type):  # a classmethod: its **kwargs are the class's constructor arguments
            calls += [vars(k)["__init__"] for k in owner.__mro__ if k is not object and "__init__" in vars(k)]
    else:
        return None
    keys: set[str] = set()
    for call in calls:
        try:
            parameters = inspect.signature(call).parameters.values()
        except (TypeError, ValueError):
            return None
        keys |= {p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self"}
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            return keys
    return None


def check_keys(node: Any, what: str, target: Any, skip: Any = ()) -> None:
    """A key of ``node`` its target does not take is a ``ConfigError`` naming it, the close match and the valid keys.

    Hydra's own hint for a misspelt ``model.predicton=v`` is the ``+`` form, which adds the key; the constructor
    then failed with "GlideLit.__init__() got an unexpected keyword argument 'predicton'" under "Error executing
    job", after the data was built (found: zoo-train model=glide +model.predicton=v). Keys the caller passes itself
    (``skip``) and Hydra's ``_target_`` / ``_partial_`` are not the node's options."""
    import difflib

    accepted = accepted_keys(target)
    if accepted is None:
        return
    unknown = [k for k in node if not str(k).startswith("_") and k not in accepted and k not in skip]
    if not unknown:
        return
    import yaml
    from omegaconf import DictConfig, ListConfig

    from zoo.errors import shown

    problems = []
    for key in unknown:
        value = node[key]
        # as the command line wrote it: v, not shown()'s 'v' (a string that reads back as itself needs no quotes)
        try:
            plain = isinstance(value, str) and value != "" and yaml.safe_load(value) == value
        except yaml.YAMLError:
            plain = False
        value = "..." if isinstance(value, (DictConfig, ListConfig)) else value if plain else shown(value)
        close = difflib.get_close_matches(str(key), sorted(accepted), n=1)
        fix = f"{what}.{close[0]}={value} in place of +{what}.{key}={value}" if close else f"drop +{what}.{key}"
        hint = f"did you mean {what}.{close[0]}?" if close else "no option is close to it"
        problems.append(f"{what}.{key} is not an option of {node._target_} ({hint} fix: {fix})")
    raise ConfigError(f"{'; '.join(problems)}; the options of {what}: {', '.join(sorted(accepted))}")


def instantiate(node: Any, what: str = "config", **kwargs) -> Any:
    """``hydra.utils.instantiate`` (``_convert_="all"``) with typed checks and our own errors unwrapped."""
    import hydra
    from hydra.errors import InstantiationException

    # errors name the node by its key in the run's config when it has one (trainer.max_steps, logger.csv.version;
    # the callers' short names said config.max_steps, csv.version: keys that do not exist on the command line)
    check_types(node, _config_key(node) or what, skip=set(kwargs))  # what the caller passes replaces the node's value
    try:
        return hydra.utils.instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, _user_error_types() + (ValueError,)):
            raise cause from None
        if isinstance(cause, ImportError) or "Error locating target" in str(e):
            target = node.get("_target_", "?") if hasattr(node, "get") else "?"
            key = _config_key(node) or what
            group = _config_group(key)
            other = f"another {group}= option" if group else f"another {what} option of its config group"
            raise ConfigError(
                f"cannot build {key} {str(target)!r}: {cause or e} (fix: {other}, or install / write the module it "
                f"names)"
            ) from e
        raise


def _config_key(node: Any) -> str:
    """The dotted key of ``node`` in its config (``trainer``, ``logger.wandb``), or "" for a root / plain node."""
    try:
        return str(node._get_full_key(None) or "")
    except Exception:  # not an OmegaConf node
        return ""


def _config_group(key: str) -> str:
    """The Hydra config group whose option set ``key`` (``logger.tensorboard`` -> ``logger``, ``data.tokenizer`` ->
    ``data/tokenizer``), or "" outside a Hydra run. A logger or callback is named by its entry, not its group: "another
    tensorboard option" named no group a command line can choose."""
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = HydraConfig.get().runtime.choices
    except Exception:  # no Hydra run (a test building a node directly)
        return ""
    path = key.replace(".", "/")
    groups = [g for g in choices if not g.startswith("hydra") and (path == g or path.startswith(g + "/"))]
    return max(groups, key=len, default="")


# initials read as letters whose names start with a vowel sound: an MS-COCO, an FID, an RGB (but a U-Net, a VQGAN)
_VOWEL_SOUND_LETTERS = set("AEFHILMNORSX")


def with_article(word: Any) -> str:
    """``word`` after "a" or "an", for a message that names a component, a class or a kind: "an upsampler", "an
    ar_prior", "an ARPriorLit", "a glide", "an MS-COCO". Templates wrote "a {name}" and said "holds a upsampler
    checkpoint". Decided by the first letter: a vowel, or (for initials, two capitals) a letter whose name
    starts with one."""
    text = str(word)
    initials = len(text) > 1 and text[:2].isupper()
    vowel = text[:1].upper() in (_VOWEL_SOUND_LETTERS if initials else set("AEIOU"))
    return f"{'an' if vowel else 'a'} {text}"


def report_user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate an entry point's body: a user error prints ``error: <message>`` and exits with status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _user_error_types() as e:
            log_to_run_files(f"error: {e}", exc_info=debug_enabled())
            if debug_enabled():
                raise
            log.debug("user error", exc_info=True)
            print(f"{_multirun_job()}error: {e}\n(set ZOO_DEBUG=1 for the full traceback)", file=sys.stderr)
            sys.exit(2)
        except Exception as e:
            log_to_run_files(f"failed: {type(e).__name__}: {e}", exc_info=True)
            raise

    return wrapper


def log_to_run_files(message: str, exc_info: bool = False) -> None:
    """Write ``message`` (and the traceback when ``exc_info``) to the file handlers of the root logger only.

    A run that fails leaves its Hydra run directory (``.hydra/`` and the job log) behind; without this the log ended
    at the last INFO line and the reason was only on the terminal, which a sweep's or a batch job's user may never
    see. The console already shows the error (printed above, or Hydra's traceback), so it is not logged twice."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, sys.exc_info() if exc_info else None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            try:
                handler.handle(record)
            except Exception:  # a full disk must not hide the error being reported
                pass


def _multirun_job() -> str:
    """In a ``-m`` sweep, the line that says which job failed and that the sweep stopped there (the error exits
    the process, so Hydra's own "Error executing job with overrides" line is never printed); "" otherwise."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode != RunMode.MULTIRUN:
            return ""
        overrides = " ".join(hc.overrides.task)
        # the local launcher runs the jobs one after the other in this process: its sweep ends with this exit
        local = str(hc.launcher.get("_target_", "")).endswith("BasicLauncher")
        stops = "; the sweep stops here, the jobs after it did not run" if local else ""
        return f"multirun job {hc.job.num} ({hc.runtime.output_dir}; {overrides}) failed{stops}\n"
    except Exception:  # no Hydra run (a test calling the body directly)
        return ""


def open_overrides(args: list[str], prefixes: tuple[str, ...]) -> list[str]:
    """Command-line overrides with each plain ``<prefix><field>=value`` made ``++<prefix><field>=value``.

    A node such as ``model.net`` holds only the fields a config changes (``net: {}``), the rest coming from the
    preset's dataclass; Hydra's struct mode would refuse ``model.net.n_layers=12`` there ("not in struct", use
    ``+``), while an experiment that already sets the field refuses ``+``. ``++`` sets the field either way, so the
    documented ``model.net.<field>=...`` (and every "fix: model.net.<field>=..." hint) works as written; the
    component's preset resolver still refuses a field its dataclass does not have. The whole node, ``model.net={...}``
    (the form conf/model/clip.yaml shows for open_clip's nested configs), is opened too: plain, Hydra merged it into
    the node but refused every key the node lacked ("Key 'embed_dim' is not in struct"); ``++`` merges it the same
    way with new keys allowed."""
    out = []
    for arg in args:
        if any(arg.startswith(p) and "=" in arg[len(p) :] or arg.startswith(p.rstrip(".") + "=") for p in prefixes):
            arg = "++" + arg
        out.append(arg)
    return out


def entry_point(
    body: Callable[[Any], Any],
    config_name: str,
    config_path: str = "pkg://conf",
    returns: bool = False,
    open_keys: tuple[str, ...] = (),
) -> Callable[..., Any]:
    """The ``main`` of a command: ``@hydra.main`` (``<config_path>/<config_name>.yaml``) over
    ``report_user_errors(body)``. Hydra gets ``body(cfg)``'s value only with ``returns`` (a sweep's objective);
    the job is named after ``body``'s module, as if ``main`` were written there. ``open_keys``: prefixes of nodes
    whose fields may be set on the command line without ``+`` (:func:`open_overrides`)."""
    import hydra

    @functools.wraps(body)  # Hydra names the job after body's file / module
    def main(cfg):
        value = body(cfg)
        return value if returns else None

    hydra_main = hydra.main(version_base="1.3", config_path=config_path, config_name=config_name)(
        report_user_errors(main)
    )
    if not open_keys:
        return hydra_main

    @functools.wraps(hydra_main)
    def cli(*args, **kwargs):
        sys.argv[1:] = open_overrides(sys.argv[1:], tuple(open_keys))
        return hydra_main(*args, **kwargs)

    return cli


def debug_enabled(env: Optional[dict[str, str]] = None) -> bool:
    env = os.environ if env is None else env
    return env.get("ZOO_DEBUG", "0") not in ("", "0") or env.get("HYDRA_FULL_ERROR", "0") not in ("", "0")
