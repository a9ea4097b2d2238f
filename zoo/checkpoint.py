"""Safe checkpoint I/O: atomic writes and ``weights_only`` loads.

Writes go to a temporary file in the same directory and are moved into place with ``os.replace`` (atomic on POSIX),
so a process killed mid-save leaves the previous file intact. A Ctrl-C or SIGTERM that arrives during the write is
acted on once the file is in place (see ``_signals_deferred``). Every load of a user-given file goes through
``safe_load`` which uses ``weights_only=True``: a pickle that carries code is refused instead of executed.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch

from zoo.registry import UnsafeCheckpointError  # noqa: F401  (re-exported: callers catch it from here)


def default_file_mode(path: str | os.PathLike) -> None:
    """Give ``path`` the mode a plainly created file gets (0o666 less the umask, e.g. 0o644): ``mkstemp`` (and
    safetensors' writer) create files readable by their owner only (0o600), so a feature file, a cached judge or
    an export on shared storage (``ZOO_CACHE_DIR``) would be unreadable to the rest of a team."""
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    """The process's umask, read without changing it where Linux reports it (``os.umask`` can only set it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` that never leaves a half-written file at ``path``."""
    return _atomic_write(path, "wb", lambda f: torch.save(obj, f))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """``Path.write_text`` (UTF-8) that never leaves a half-written file at ``path``: for index files that a later
    run reads back or merges into (a truncated one lost the index of everything written before)."""
    return _atomic_write(path, "w", lambda f: f.write(text))


def _atomic_write(path: str | os.PathLike, mode: str, write: Any) -> Path:
    """``write(f)`` into a temporary file next to ``path``, fsynced, then renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _signals_deferred():
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            default_file_mode(tmp)
            os.replace(tmp, path)
        except BaseException:
            # Leave no temp litter behind; the old file (if any) is untouched.
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return path


_DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _signals_deferred():
    """SIGINT / SIGTERM that arrive inside the block are handed to their handlers of before at its end.

    A Ctrl-C raises KeyboardInterrupt wherever the main thread is; inside ``torch.save``'s storage write (a Python
    ``write`` called from C++) torch turned it into ``RuntimeError: [enforce fail at inline_container.cc] unexpected
    pos``: zoo-train ended with that traceback, exit 1, instead of saving interrupted.ckpt and saying how to resume
    (found by a ``kill -INT`` during a save of last.ckpt). Deferred, the save finishes, the file is in place, and the
    interrupt is then raised as usual. (A save cannot be cut short by Ctrl-C, as Lightning's own save of
    interrupted.ckpt, which runs with SIGINT ignored; kill -9 can, and leaves the file at its path as it was.)

    Only the main thread can change handlers (and is the one Python delivers signals to); a handler installed
    outside Python (``getsignal`` gives None) could not be put back, and an ignored signal needs nothing: those are
    left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {}
    for sig in _DEFERRED_SIGNALS:
        handler = signal.getsignal(sig)
        if handler is not None and handler != signal.SIG_IGN:
            previous[sig] = handler
            signal.signal(sig, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _redeliver(list(dict.fromkeys(received)))


def _redeliver(signals: list[int]) -> None:
    """Raise each signal once, in order of arrival, each even if the handler of one before it raised
    (KeyboardInterrupt): a SIGTERM that came with a Ctrl-C still reaches Lightning's handler."""
    if signals:
        try:
            signal.raise_signal(signals[0])
        finally:
            _redeliver(signals[1:])


class CorruptCheckpointError(ValueError):
    """The file is empty, truncated or not a torch checkpoint at all (as opposed to one that carries code)."""


# torch's own refusal under weights_only=True starts with this; anything else failing to unpickle is corruption.
_WEIGHTS_ONLY_REFUSAL = "Weights only load failed"


CHECKPOINT_FIX = "use another checkpoint (e.g. the run's last.ckpt or a step*.ckpt)"


def safe_load(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", fix: str = CHECKPOINT_FIX, mmap: bool = False
) -> Any:
    """Load a checkpoint with ``weights_only=True``; explain refusals, corruption and missing files.

    ``mmap``: tensors backed by the file's pages (copy-on-write; torch's zip format, a legacy file is read whole):
    page cache the OS can drop and DataLoader workers / DDP ranks share, instead of a private copy per process. For
    feature files, which can be larger than memory (COCO train's per-caption text encodings: ~65 GB).

    Three different problems get three different messages: a missing file (check the path), a file that is
    empty/truncated/not a checkpoint (re-copy it or resume from another one), and a file that holds pickled
    objects beyond plain tensors and containers (refused: it could run code). ``fix``: what to do about a corrupt
    file (a feature file is rewritten by the command that made it, not replaced by another checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (check the path you passed)")
    if path.stat().st_size == 0:
        raise CorruptCheckpointError(f"{path} is empty (0 bytes): a copy or a save did not finish; {fix}")
    if str(map_location).startswith("cuda") and not torch.cuda.is_available():
        # torch's RuntimeError here used to be reported as a truncated or corrupt file
        from zoo.errors import ConfigError

        raise ConfigError(
            f"cannot load {path} onto {map_location}: no CUDA device is visible on this machine "
            f"(fix: set the command's device option to cpu, e.g. device=cpu)"
        )
    try:
        mapped = mmap and str(map_location) == "cpu" and zipfile.is_zipfile(path)
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mapped)
    except pickle.UnpicklingError as e:
        msg = str(e)
        # A pickle naming a global (a function or class: possibly code) is refused as unsafe; random bytes read as
        # a pickle fail too, mostly on an unknown opcode ("Unsupported operand"): those are corruption. Torch's own
        # format is a zip whose pickle torch has read up to the global it names; a raw (legacy) file must parse as a
        # whole pickle first: random bytes now and then begin with GLOBAL ("c" + two lines) and then fall apart
        # (a CI run's os.urandom garbage file in tests/test_reliability.py did)
        names_global = "global" in msg.lower() and zipfile.is_zipfile(path)
        if _WEIGHTS_ONLY_REFUSAL in msg and (names_global or _names_code(path)):
            raise UnsafeCheckpointError(
                f"refused to load {path}: it contains objects that are not plain tensors/containers and could run "
                f"code (weights_only=True). If you made this file and trust it, re-save its state_dict only."
            ) from None
        raise CorruptCheckpointError(
            f"{path} is corrupt or not a torch checkpoint ({_file_kind(path)}{_unpickle_reason(msg)}); {fix}"
        ) from None
    except (EOFError, RuntimeError, OSError, ValueError, KeyError, IndexError) as e:
        raise CorruptCheckpointError(
            f"{path} is truncated or corrupt ({type(e).__name__}: {str(e)[:200]}); {fix}"
        ) from None


def peek_checkpoint(path: str | os.PathLike, fix: str = CHECKPOINT_FIX) -> Any:
    """A checkpoint's contents (``weights_only``) with its tensors memory-mapped, not read: for the few plain values a
    caller needs before (or instead of) building the model (a component name, ``hyper_parameters``, ``zoo_config``,
    ``global_step``), where a whole load read a paper model's GBs. A legacy non-zip file (which cannot be mapped) is
    read whole, and anything unreadable goes to ``safe_load``, whose message names the problem (``fix`` as there)."""
    return safe_load(path, fix=fix, mmap=True)


def _unpickle_reason(msg: str) -> str:
    """The core of torch's weights_only failure ("Unsupported operand 80"), without its advice to re-run with
    weights_only=False and file an issue: for a file that is no checkpoint at all, that advice is wrong and unsafe."""
    if "WeightsUnpickler error:" in msg:
        core = msg.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
        return "unpickling failed: " + " ".join(core.split())[:200]
    return " ".join(msg.split())[:200]


_MAGIC = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image", b"RIFF": "a WebP image"}


def _file_kind(path: Path) -> str:
    """ "it is a PNG image; " when the first bytes say what the file is instead of a checkpoint, else ""."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return ""
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return f"it is {kind}; "
    return ""


_CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD"}


def _names_code(path: Path) -> bool:
    """True if the file parses as a pickle that imports or calls something (a raw pickle, not torch's zip format,
    is refused by torch on its first unusual opcode, before the global it names, so look for ourselves).

    The whole pickle must parse, up to its STOP: a few random bytes often begin with a code opcode (``R``, ``b``,
    ``o`` take no argument), and garbage must be reported as corruption, not as a file that carries code."""
    import pickletools

    try:
        names = {op.name for op, _, _ in pickletools.genops(path.read_bytes())}  # all of it: raises unless complete
    except Exception:  # not a complete pickle: corruption
        return False
    return not names.isdisjoint(_CODE_OPCODES)


def load_module(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    expect: Optional[tuple[str, ...]] = None,
    ema: Optional[bool] = None,
    option: Optional[str] = None,
):
    """Rebuild a zoo LightningModule from a checkpoint written by ``zoo-train`` (weights_only load).

    The class comes from the fixed registry of the project's components (``zoo.registry``), looked up by the short
    name stamped in the file -- never imported from a path the file names -- and its hyper-parameters must be plain
    values accepted by that component's constructor. ``expect`` restricts the components accepted at this input
    (e.g. only image tokenizers for ``zoo-tokenize``); ``option``, the option that gave ``path`` (e.g.
    ``tokenizer_ckpt``), is the fix a checkpoint of another kind is refused with.

    Weights: ``ema=None`` loads ``state_dict`` as stored. With the EMA callback that is the average, and the trained
    weights are ``current_model_state``: ``ema=True`` takes the average once it has started (a file saved before the
    EMA's first update holds the INITIAL weights as its average: the trained ones, with a warning), ``ema=False`` the
    trained weights; ``model.loaded_weights`` says which: "ema" | "raw" | "raw (no EMA in checkpoint)". Decided here,
    from the one read of the file (the samplers and zoo-export read each checkpoint a second time for it)."""
    from zoo.registry import checked_hparams, component_class, component_in

    ckpt = safe_load(path, map_location=map_location)
    name = component_in(ckpt, str(path))
    if expect is not None and name not in expect:
        from zoo.config import with_article  # "an ar_prior", "an upsampler"
        from zoo.errors import ConfigError

        # "pass a checkpoint of the right kind" named no option: which of a pipeline's five *_ckpt was it?
        kinds = " / ".join(expect)
        fix = f"{option}=<{with_article(kinds)} checkpoint>" if option else "pass a checkpoint of the right kind"
        raise ConfigError(
            f"{path} holds {with_article(name)} checkpoint; this input takes {' or '.join(expect)} (fix: {fix})"
        )
    if "state_dict" not in ckpt or not isinstance(ckpt["state_dict"], dict):
        raise CorruptCheckpointError(f"{path} has no state_dict; it is not a complete zoo-train checkpoint")
    hp = checked_hparams(name, ckpt.get("hyper_parameters", {}), str(path))
    model = component_class(name)(**hp)
    state, label = ckpt["state_dict"], None
    if ema is not None:
        raw, started = ema_trained_state(ckpt)
        if raw is None:
            label = "raw (no EMA in checkpoint)"
        elif ema and started:
            label = "ema"
        else:
            if ema:
                import logging

                logging.getLogger("zoo.checkpoint").warning(
                    "%s: the EMA had not started when this checkpoint was saved (n_averaged = 0, see "
                    "callbacks.ema.update_starting_at_step): its average is the initial weights, so the trained "
                    "weights are used",
                    path,
                )
            state, label = raw, "raw"
    model.load_state_dict(state)
    model.loaded_weights = label
    model.zoo_component, model.zoo_hparams = name, hp  # as the file names them (zoo-export writes these)
    model.eval()
    # The run config is kept as a record (it is full of the user's own _target_ nodes); whatever reads it later must
    # go through zoo.registry (e.g. zoo-sample's datamodule_from_file_config), never through Hydra.
    model.zoo_config = ckpt.get("zoo_config", {}) or {}
    return model


def ema_trained_state(ckpt: Any) -> tuple[Optional[dict], bool]:
    """``(the trained weights, whether the EMA had started)`` of a checkpoint dict written with the EMA callback:
    ``state_dict`` then holds the average and ``current_model_state`` the trained weights (None: no EMA in the file).
    A file saved before the average's first update (``averaging_state["n_averaged"] == 0``, written so by
    Lightning's own callback) has the INITIAL weights as its "average": its samplers and exports take the trained
    ones. ``load_module(..., ema=...)`` reads it."""
    raw = ckpt.get("current_model_state") if isinstance(ckpt, dict) else None
    if not isinstance(raw, dict):
        return None, False
    state = ckpt.get("averaging_state")
    n_avg = state.get("n_averaged") if isinstance(state, dict) else None
    return raw, n_avg is None or int(n_avg) > 0


def trained_resolution(zoo_config: Any) -> Optional[int]:
    """The ``data.resolution`` a checkpoint's run trained at, from the run config ``zoo-train`` stores in it
    (``zoo_config``); None when the file has none (written before that record, or by ``zoo-convert``). An image
    tokenizer's grid follows the resolution it is given, so this, not its network config (which a run adapts to the
    data without rewriting), is the size its codes were learned at."""
    data = (zoo_config or {}).get("data") if isinstance(zoo_config, dict) else None
    res = data.get("resolution") if isinstance(data, dict) else None
    return int(res) if isinstance(res, int) and not isinstance(res, bool) and res > 0 else None
