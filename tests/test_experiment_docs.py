"""The commands of experiments/README.md and experiments/*/README.md are valid today, as a reader copies them.

Each command is read from the README (``helpers_commands``: fenced lines and inline `code`), passed through a real
``bash`` for the argv a user's shell builds, then checked without running anything:

- ``zoo-*`` and the Hydra ``python -m`` commands are composed with Hydra's compose API exactly as the entry point
  composes them (every ``-m`` job of a config-group sweep, and each job of the config's own ``hydra.sweeper.params``),
  and the composed config resolved: an experiment, config group option or key that no longer exists fails here;
- the argparse commands (``python -m eval.leaderboard``, ``python scripts/...py``, ``python experiments/...py``) are
  parsed by the parser the script's ``add_argument`` calls build (read from its source, not imported): a renamed
  flag, a bad choice or a missing required argument fails here; ``python -m eval.captions`` / ``eval.zeroshot``
  name only keys of the module's ``DEFAULTS``;
- ``bash <script>`` and ``make <target>``: the script / target exists and reads the variables the command sets;
- every file a README links or names under ``experiments/``, ``scripts/`` or ``conf/`` exists, and every
  ``logs/<run>/checkpoints/last.ckpt`` a command (or its config) reads is written by a README command, make demo
  or make leaderboard: the chains of commands hold together.

``<placeholder>`` words stand for a value the reader fills in; ``...`` elides arguments (then only the arguments
given are checked). Compose-only and cached: the whole file runs in seconds.
"""

from __future__ import annotations

import argparse
import ast
import copy
import functools
import itertools
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import load_test_helpers

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
READMES = sorted(EXPERIMENTS.glob("**/README.md"))
commands = load_test_helpers("helpers_commands")

# program (or ``python -m`` module) -> the config it composes: (config module, config name)
HYDRA = {
    "zoo-train": ("conf", "train"),
    "zoo.train": ("conf", "train"),
    "zoo-eval": ("conf.eval", "eval"),
    "eval.cli": ("conf.eval", "eval"),
    "zoo-sample": ("conf", "sample"),
    "zoo.sample": ("conf", "sample"),
    "zoo-embed": ("conf", "embed"),
    "zoo.embed": ("conf", "embed"),
    "zoo-recaption": ("conf", "recaption"),
    "zoo.recaption": ("conf", "recaption"),
    "zoo-tokenize": ("conf", "tokenize"),
    "zoo.tokenize": ("conf", "tokenize"),
    "eval.prior": ("conf.eval", "prior"),
}
DOTLIST = ("eval.zeroshot", "eval.captions")  # key=value commands checked against the module's DEFAULTS
PLACEHOLDER = "PLACEHOLDER"
ELLIPSIS = "..."


class Command:
    """One command of a README: where it is, and what bash hands the program."""

    def __init__(self, readme: Path, text: str, inline: bool):
        self.readme, self.text, self.inline = readme, text, inline
        self.id = f"{readme.parent.relative_to(REPO)}: {text[:110]}"

    def __repr__(self) -> str:
        return self.id


def _split(command: str) -> list[str]:
    """``command`` as the simple commands it runs: ``a && b`` is two, ``for v in x y; do c $v; done`` is c x, c y."""
    command = commands.strip_comment(command)
    loop = re.fullmatch(r"for (\w+) in ([^;]+); do (.+?);? done", command)
    if loop:
        var, values, body = loop.groups()
        return [re.sub(rf"\${var}\b|\$\{{{var}\}}", value, body) for value in values.split()]
    return [part.strip() for part in command.split("&&") if part.strip()]


def _program(argv: list[str]) -> tuple[str, list[str], dict[str, str]]:
    """(program, its arguments, the environment the command sets): ``VAR=1 nice -n 19 python -m m a`` ->
    (``m``, [a], {VAR: 1}); a script run by ``python`` / ``bash`` is its path."""
    env = {}
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):
        key, value = argv.pop(0).split("=", 1)
        env[key] = value
    if argv[:2] == ["nice", "-n"]:
        argv = argv[3:]
    if not argv:
        return "", [], env
    program = argv[0]
    if program.endswith(("/python", "python", "python3")):
        if argv[1:2] == ["-m"]:
            return argv[2], argv[3:], env
        return argv[1], argv[2:], env
    if program in ("bash", "sh"):
        return argv[1], argv[2:], env
    return program, argv[1:], env


PROGRAM = re.compile(r"(?:[A-Z_][A-Z0-9_]*=\S* )*(?:nice -n \d+ )?(?:zoo-|make |bash |\S*python3? )")


def _readme_commands() -> list[Command]:
    """The commands of the READMEs (an inline span that starts with no program is prose, not a command)."""
    found = []
    for readme in READMES:
        text = readme.read_text(encoding="utf-8")
        inline = set(commands.markdown_commands(re.sub(r"```.*?```", "", text, flags=re.S)))
        for line in commands.markdown_commands(text):
            for part in _split(line):
                if PROGRAM.match(part):
                    found.append(Command(readme, part, inline=line in inline))
    return found


def _argv(command: Command) -> list[str]:
    return list(_words(command.text))


@functools.lru_cache(maxsize=None)
def _words(text: str) -> tuple[str, ...]:
    """The shell's argv for the command, each ``<placeholder>`` a plain word (a Markdown table's ``\\|`` is ``|``)."""
    text = re.sub(r"<[^<>]*>", PLACEHOLDER, text.replace("\\|", "|"))
    # never handed to bash: a redirection, pipe or substitution there would run, not be printed
    assert not re.search(r"[<>|;&`]|\$\(", text), f"{text}: not a simple command"
    return tuple(commands.shell_words(text))


COMMANDS = _readme_commands()


def _of_kind(*programs: str) -> list[Command]:
    return [c for c in COMMANDS if _program(_argv(c))[0] in programs]


# ---- Hydra commands: composed (and resolved) as the entry point does ----------------------------------------------


def _parse(overrides: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(overrides)


def _jobs(overrides: list[str]) -> list[list[str]]:
    """The jobs of ``-m`` over ``overrides`` (each value of each sweep, all combinations)."""
    axes = []
    for override in _parse(overrides):
        text = override.input_line
        key = text.split("=", 1)[0]
        axes.append(
            [f"{key}={v}" for v in override.sweep_string_iterator()] if override.is_sweep_override() else [text]
        )
    return [list(job) for job in itertools.product(*axes)]


@functools.lru_cache(maxsize=None)
def _compose(module: str, name: str, group_overrides: tuple[str, ...]):
    """The config (with its ``hydra`` node) that the config-group overrides compose, and its config groups."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=module, version_base="1.3"):
        cfg = compose(name, overrides=list(group_overrides), return_hydra_config=True)
    return cfg, set(cfg.hydra.runtime.choices)


def _resolve(module: str, name: str, overrides: list[str]):
    """Compose ``overrides`` as the entry point would and resolve every interpolation (a renamed key, a row name
    that is gone fail here); returns it (read-only, shared) and its own ``hydra.sweeper.params`` (a table's rows)."""
    cfg, params, _ = _resolved(module, name, tuple(overrides))
    return cfg, params


def _run_dir(module: str, name: str, overrides: list[str]) -> str:
    """The resolved ``hydra.run.dir`` of the composition."""
    return _resolved(module, name, tuple(overrides))[2]


@functools.lru_cache(maxsize=None)
def _resolved(module: str, name: str, overrides: tuple[str, ...]):
    """(config, its sweeper params, its run dir) for :func:`_resolve`.

    Only the config-group overrides (``experiment=``, ``generator=``, ``data/tokenizer=``) are composed, once for
    all the commands that share them; the others are applied to a copy by Hydra's own override step (the one
    ``compose`` runs after composing), so a table's dozens of commands cost one composition."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    import zoo.config  # noqa: F401  (registers the resolvers the configs use)

    groups = _compose(module, name, ())[1]  # experiment, generator, ...
    is_group = [re.sub(r"^[+~]+", "", o.split("=")[0]) in groups or "/" in o.split("=")[0] for o in overrides]
    cfg, _ = _compose(module, name, tuple(o for o, g in zip(overrides, is_group) if g))
    cfg = copy.deepcopy(cfg)
    ConfigLoaderImpl._apply_overrides_to_config(_parse([o for o, g in zip(overrides, is_group) if not g]), cfg)
    params = dict(cfg.hydra.sweeper.get("params") or {})
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    OmegaConf.resolve(cfg)
    OmegaConf.set_readonly(cfg, True)  # shared by every test that resolves the same command
    return cfg, params, str(HydraConfig.get().run.dir)


def _hydra_overrides(program: str, args: list[str]) -> tuple[bool, list[str]]:
    """(multirun, the overrides Hydra composes) for ``program args``, ``...``-elided values dropped."""
    from zoo.config import open_overrides

    multirun = "-m" in args or "--multirun" in args
    args = [a for a in args if a not in ("-m", "--multirun") and ELLIPSIS not in a]
    if program in ("zoo-train", "zoo.train"):
        args = open_overrides(args, ("model.net.",))  # what zoo-train's main does to the command line
    return multirun, args


def _every_placeholder_experiment(module: str, overrides: list[str]) -> list[list[str]]:
    """``experiment=<group>/<row>`` as each row of the group (the generic ``<group>/<row>`` is dropped)."""
    first = _placeholder_experiments(module, overrides)
    if first == overrides or len(first) < len(overrides):
        return [first]
    (i,) = [i for i, (a, b) in enumerate(zip(overrides, first)) if a != b]
    root = REPO / module.replace(".", "/") / "experiment"
    key, value = overrides[i].split("=", 1)
    rows = sorted(root.glob(value.replace(PLACEHOLDER, "*") + ".yaml"))
    return [overrides[:i] + [f"{key}={r.relative_to(root).with_suffix('')}"] + overrides[i + 1 :] for r in rows]


def _placeholder_experiments(module: str, overrides: list[str]) -> list[str]:
    """``experiment=<group>/<row>``: the first row of that group (tests/test_config.py composes every training
    experiment); the generic ``<group>/<row>`` is a pattern, dropped."""
    for i, override in enumerate(overrides):
        key, _, value = override.partition("=")
        if key.lstrip("+") == "experiment" and PLACEHOLDER in value:
            if value.startswith(PLACEHOLDER):
                return overrides[:i] + overrides[i + 1 :]
            root = REPO / module.replace(".", "/") / "experiment"
            rows = sorted(root.glob(value.replace(PLACEHOLDER, "*") + ".yaml"))
            assert rows, f"no experiment matches {value} under {root}"
            return overrides[:i] + [f"{key}={rows[0].relative_to(root).with_suffix('')}"] + overrides[i + 1 :]
    return overrides


HYDRA_COMMANDS = _of_kind(*HYDRA)


def _targets(node: object) -> set[str]:
    if isinstance(node, dict):
        found = {node["_target_"]} if isinstance(node.get("_target_"), str) else set()
        return found.union(*(_targets(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_targets(v) for v in node))
    return set()


@functools.lru_cache(maxsize=None)
def _target_defined(target: str) -> bool:
    """``pkg.module.Name[.attr]`` is defined in this checkout's source (read, not imported: no torch)."""
    parts = target.split(".")
    for i in range(len(parts) - 1, 0, -1):
        path = REPO.joinpath(*parts[:i]).with_suffix(".py")
        path = path if path.is_file() else REPO.joinpath(*parts[:i], "__init__.py")  # a package re-exporting it
        if path.is_file():
            body = ast.parse(path.read_text(encoding="utf-8")).body
            for name in parts[i:]:
                nodes = [n for n in body if getattr(n, "name", None) == name or name in _assigned(n)]
                if not nodes:
                    return False
                body = getattr(nodes[0], "body", [])
            return True
    return not (REPO / parts[0]).is_dir()  # another library's class (torch.optim.AdamW, ...): not ours to check


def _assigned(node: ast.stmt) -> set[str]:
    if isinstance(node, ast.Assign):
        return {t.id for t in node.targets if isinstance(t, ast.Name)}
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in node.names}
    return set()


def _check(program: str, cfg) -> None:
    """What the entry point checks of a config before it builds anything, where that is cheap (no torch)."""
    from omegaconf import OmegaConf

    missing = sorted(t for t in _targets(OmegaConf.to_container(cfg)) if not _target_defined(t))
    assert not missing, f"_target_ {missing} not defined in this checkout"
    if program in ("zoo-train", "zoo.train"):
        from zoo.train import check_run_options, check_trainer_counts

        check_run_options(cfg)
        check_trainer_counts(cfg.trainer)


@pytest.mark.parametrize("command", HYDRA_COMMANDS, ids=[c.id for c in HYDRA_COMMANDS])
def test_hydra_commands_compose(command):
    program, args, _ = _program(_argv(command))
    module, name = HYDRA[program]
    multirun, overrides = _hydra_overrides(program, args)
    overrides = _placeholder_experiments(module, overrides)
    for job in _jobs(overrides) if multirun else [overrides]:
        try:
            cfg, params = _resolve(module, name, job)
            _check(program, cfg)
            # a table's rows: the config's own sweep, for the keys the command line does not sweep itself
            given = {o.split("=", 1)[0] for o in job}
            rows = [f"{k}={v}" for k, v in params.items() if k not in given] if multirun else []
            for row in _jobs(rows) if rows else []:
                _check(program, _resolve(module, name, job + row)[0])
        except Exception as e:  # the message says which key / option / file Hydra could not find
            pytest.fail(f"{command.readme.relative_to(REPO)}: `{command.text}` does not compose ({job}): {e}")


def _run_dirs_made_elsewhere() -> set[str]:
    """``<stage>`` of make demo (logs/demo, logs/demo_full) and make leaderboard (logs/leaderboard), from their code."""
    demo = re.findall(r'Stage\(\s*"(\w+)"', (REPO / "zoo" / "demo.py").read_text(encoding="utf-8"))
    board = (REPO / "experiments" / "leaderboard" / "run.sh").read_text(encoding="utf-8")
    trained = [w for line in re.findall(r"^(?:pair|train) ([\w ]+)", board, re.M) for w in line.split()]
    return {f"{d}/{s}" for d in ("demo", "demo_full") for s in demo} | {f"leaderboard/{t}" for t in trained}


def _checkpoint_runs(value: object, log_dir: str) -> set[str]:
    """The run directories (relative to the log dir) of every ``.../checkpoints/last.ckpt`` in a config or argv."""
    if isinstance(value, dict):
        return set().union(*(_checkpoint_runs(v, log_dir) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_checkpoint_runs(v, log_dir) for v in value))
    runs = set()
    for path in re.findall(r"[^\s=,'\"\[\]]+/checkpoints/last\.ckpt", str(value)):
        run = _in_log_dir(path[: -len("/checkpoints/last.ckpt")], log_dir)
        if run and PLACEHOLDER not in run:
            runs.add(run)
    return runs


def _in_log_dir(path: str, log_dir: str):
    """``path`` relative to the log dir (the configs' ``${paths.log_dir}``, the READMEs' ``logs/``), else None."""
    for prefix in (log_dir + "/", "logs/"):
        if path.startswith(prefix):
            return path[len(prefix) :]
    return None


def test_every_checkpoint_a_command_reads_is_written_by_a_command():
    """A chain of commands holds together: every ``logs/<run>/checkpoints/last.ckpt`` a command (or the config it
    composes) reads is the run directory of a README zoo-train command, of make demo or of make leaderboard. A
    renamed ``hydra.run.dir`` in an experiment broke the next command of its chain without a word until run."""
    from omegaconf import OmegaConf

    written, read = _run_dirs_made_elsewhere(), {}
    for command in HYDRA_COMMANDS:
        program, args, _ = _program(_argv(command))
        module, name = HYDRA[program]
        multirun, overrides = _hydra_overrides(program, args)
        for job in _every_placeholder_experiment(module, overrides):
            for job in _jobs(job) if multirun else [job]:
                cfg, _ = _resolve(module, name, job)
                log_dir = str(cfg.paths.log_dir)
                if program in ("zoo-train", "zoo.train") and not multirun:
                    written.add(_in_log_dir(_run_dir(module, name, job), log_dir))
                for run in _checkpoint_runs(OmegaConf.to_container(cfg), log_dir) | _checkpoint_runs(args, log_dir):
                    read.setdefault(run, command.id)
    unwritten = {run: where for run, where in read.items() if run not in written}
    assert not unwritten, "checkpoints no README command writes: " + "; ".join(
        f"{r} ({w})" for r, w in unwritten.items()
    )


# ---- key=value commands checked against their module's DEFAULTS ----------------------------------------------------

DOTLIST_COMMANDS = _of_kind(*DOTLIST)


def _source(program: str) -> ast.Module:
    path = REPO / program if program.endswith(".py") else REPO / (program.replace(".", "/") + ".py")
    return ast.parse(path.read_text(encoding="utf-8"))


def _default_keys(module: str) -> set[str]:
    """The keys of ``module``'s ``DEFAULTS`` dict (read from its source: no import, no torch)."""
    for node in _source(module).body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "DEFAULTS":
            return {ast.literal_eval(k) for k in node.value.keys}
    raise AssertionError(f"{module} has no DEFAULTS dict")


@pytest.mark.parametrize("command", DOTLIST_COMMANDS, ids=[c.id for c in DOTLIST_COMMANDS])
def test_key_value_commands_name_known_options(command):
    program, args, _ = _program(_argv(command))
    given = {a.split("=", 1)[0].split(".")[0] for a in args}  # as OmegaConf.from_dotlist reads them
    unknown = sorted(given - _default_keys(program))
    assert not unknown, f"{command.readme.relative_to(REPO)}: `{command.text}`: {program} has no option {unknown}"


# ---- argparse commands: parsed by the script's own parser ----------------------------------------------------------


def _literal(node: ast.expr, constants: dict[str, object]) -> object:
    """A literal, a module constant (``choices=INPUTS``), a builtin type or an ``argparse.X``; else ``_UNKNOWN``."""
    if isinstance(node, ast.Name):
        if node.id in constants:
            return constants[node.id]
        return {"int": int, "float": float, "str": str}.get(node.id, _UNKNOWN)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "argparse":
        return getattr(argparse, node.attr)
    try:
        return ast.literal_eval(node)
    except ValueError:
        return _UNKNOWN


_UNKNOWN = object()


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # the message, not an exit
        raise argparse.ArgumentError(None, message)


@functools.lru_cache(maxsize=None)
def _script_parser(program: str) -> _Parser:
    """The parser a script builds (its ``add_argument`` calls read from its source: the script is not imported,
    so checking a command costs no torch import): its flags, their ``nargs``, literal ``choices`` and
    ``required``; a ``type`` other than int / float / str and a computed default are left out."""
    tree = _source(program)
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if (value := _literal(node.value, {})) is not _UNKNOWN:
                constants[node.targets[0].id] = value
    parser = _Parser(prog=program)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "add_argument"]
    assert calls, f"{program} has no add_argument call"
    for call in calls:
        names = [_literal(a, constants) for a in call.args]
        kwargs = {k.arg: _literal(k.value, constants) for k in call.keywords if k.arg not in ("help", "metavar")}
        if kwargs.get("type") is _UNKNOWN:
            del kwargs["type"]
        kwargs = {k: (None if v is _UNKNOWN and k == "default" else v) for k, v in kwargs.items()}
        assert _UNKNOWN not in names and _UNKNOWN not in kwargs.values(), (program, ast.unparse(call))
        parser.add_argument(*names, **kwargs)
    return parser


def _parse_with_the_scripts_parser(program: str, args: list[str]) -> str:
    """'' when ``program``'s parser takes ``args``, else argparse's message."""
    try:
        _script_parser(program).parse_args(args)
    except argparse.ArgumentError as e:
        return str(e)
    return ""


ARGPARSE_COMMANDS = [
    c
    for c in COMMANDS
    if (p := _program(_argv(c))[0]).endswith(".py") or p in ("eval.leaderboard", "eval.upsampler", "eval.caption_use")
]


@pytest.mark.parametrize("command", ARGPARSE_COMMANDS, ids=[c.id for c in ARGPARSE_COMMANDS])
def test_argparse_commands_parse(command):
    program, args, _ = _program(_argv(command))
    if program.endswith(".py"):
        assert (REPO / program).is_file(), f"{command.readme.relative_to(REPO)}: `{command.text}`: no {program}"
        if program == "experiments/dalle3/check_caption_mix.py":  # key=value arguments, read by hand
            assert all(a.split("=")[0] in ("synthetic_descriptive", "synthetic_short", "N") for a in args), args
            return
    if command.inline and len(args) <= 2:  # prose naming an option (`python -m eval.upsampler --tile`)
        known = {o for action in _script_parser(program)._actions for o in action.option_strings}
        unknown = [a for a in args if a.startswith("-") and a not in known]
        assert not unknown, f"{command.readme.relative_to(REPO)}: `{command.text}`: {program} has no {unknown}"
        return
    elided = ELLIPSIS in args
    args = [a for a in args if a != ELLIPSIS] if args[:1] == [ELLIPSIS] else args
    error = _parse_with_the_scripts_parser(program, args)
    # an elided command (`python -m eval.upsampler ... --judge-cell 32`) names options, not every argument
    if error.startswith("the following arguments are required") and elided:
        return
    assert not error, f"{command.readme.relative_to(REPO)}: `{command.text}`: {error}"


# ---- bash scripts and make targets ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _code_text() -> str:
    """Everything that may read an environment variable: the package code and configs."""
    files = itertools.chain(*(REPO.glob(f"{d}/**/*.{e}") for d in ("zoo", "eval", "conf") for e in ("py", "yaml")))
    return "\n".join(p.read_text(encoding="utf-8") for p in files)


def _reads(name: str, text: str) -> bool:
    return name == "OMP_NUM_THREADS" or re.search(rf"\b{name}\b", text) is not None or name in _code_text()


SHELL_COMMANDS = [c for c in COMMANDS if _program(_argv(c))[0].endswith(".sh") or _program(_argv(c))[0] == "make"]


@pytest.mark.parametrize("command", SHELL_COMMANDS, ids=[c.id for c in SHELL_COMMANDS])
def test_scripts_and_make_targets_exist_and_read_their_variables(command):
    program, args, env = _program(_argv(command))
    where = f"{command.readme.relative_to(REPO)}: `{command.text}`"
    if program == "make":
        makefile = (REPO / "Makefile").read_text(encoding="utf-8")
        targets = [a for a in args if "=" not in a]
        env.update(a.split("=", 1) for a in args if "=" in a)
        for target in targets:
            assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"{where}: the Makefile has no target {target}"
        scripts = re.findall(r"\S+\.sh\b", makefile)
        text = makefile + "".join((REPO / s).read_text(encoding="utf-8") for s in scripts if (REPO / s).is_file())
    else:
        assert (REPO / program).is_file(), f"{where}: no {program}"
        text = (REPO / program).read_text(encoding="utf-8")
    unread = [name for name in env if not _reads(name, text)]
    assert not unread, f"{where}: nothing reads {unread}"


# ---- files the READMEs link or name --------------------------------------------------------------------------------

REPO_PATH = re.compile(
    r"(?<![\w/.-])((?:experiments|scripts|conf|eval|zoo|docs|bench)/[\w./{},-]*\.(?:png|json|md|py|sh|yaml))"
)


def _named_files(readme: Path) -> list[tuple[str, Path]]:
    text = readme.read_text(encoding="utf-8")
    named = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):  # [text](path) and ![alt](path)
        if not re.match(r"[a-z]+://|#|mailto:", target):
            named.append((target, readme.parent / target.split("#")[0]))
    for path in REPO_PATH.findall(text):
        for one in commands.shell_words(path) if "{" in path else [path]:  # a{b,c}.png is a.png and c.png
            named.append((one, REPO / one))
    return named


@pytest.mark.parametrize("readme", READMES, ids=[str(r.relative_to(REPO)) for r in READMES])
def test_files_the_readmes_name_exist(readme):
    missing = sorted({name for name, path in _named_files(readme) if not path.exists()})
    assert not missing, f"{readme.relative_to(REPO)} names files that do not exist: {missing}"


def test_the_index_links_every_papers_readme():
    """experiments/README.md is where a reader starts: it links each experiments/<paper>/README.md (it said the
    DALL·E 3 rows would "come with the captioner (a later issue)" long after experiments/dalle3 was measured)."""
    index = EXPERIMENTS / "README.md"
    linked = {path.resolve() for _, path in _named_files(index)}
    unlinked = [str(r.relative_to(REPO)) for r in READMES if r != index and r.resolve() not in linked]
    assert not unlinked, f"experiments/README.md does not link {unlinked}"


# tables a README documents as not (or not fully) measured: their command writes the folder anew
NOT_MEASURED = {"experiments/glide/steps": "glide README (c): the rows were lost with a machine, figures copied"}


def test_outputs_written_into_experiments_exist():
    """A command that writes a shown table or figure (``--out experiments/<dir>``) names the directory it is in."""
    missing = []
    for command in COMMANDS:
        argv = _argv(command)
        for flag, value in zip(argv, argv[1:]):
            if flag == "--out" and value.startswith("experiments/") and not (REPO / value).is_dir():
                if value in NOT_MEASURED:
                    continue
                missing.append(f"{command.readme.relative_to(REPO)}: `{command.text}`")
    assert not missing, "\n".join(missing)


# ---- the papers' ablation rows (PAPER_FACTS.md) each have their config ---------------------------------------------

# DALL·E 3's caption blends: row -> the training captions' mix (PAPER_FACTS: ground truth, 95% short, 95% descriptive,
# descriptive at 65 / 80 / 90 / 95%; oracle95 is ours, the world's true descriptive captions)
BLEND_ROWS = {
    "alt": None,
    "short95": {"synthetic_short": 0.95, "alt": 0.05},
    "desc65": {"synthetic_descriptive": 0.65, "alt": 0.35},
    "desc80": {"synthetic_descriptive": 0.80, "alt": 0.20},
    "desc90": {"synthetic_descriptive": 0.90, "alt": 0.10},
    "desc95": {"synthetic_descriptive": 0.95, "alt": 0.05},
    "oracle95": {"descriptive": 0.95, "alt": 0.05},
}


def _rows(experiment: str) -> dict:
    """Each job of ``zoo-eval -m experiment=<experiment>`` (its own sweeper params): job overrides -> config."""
    _, params = _resolve("conf.eval", "eval", [f"experiment={experiment}"])
    rows = _jobs([f"{k}={v}" for k, v in params.items()])
    return {tuple(r): _resolve("conf.eval", "eval", [f"experiment={experiment}", *r])[0] for r in rows}


@pytest.mark.parametrize("column", ["t2i", "glide"])
def test_every_caption_blend_row_trains_on_its_mix_and_is_scored_from_its_own_run(column):
    from omegaconf import OmegaConf

    for row, mix in BLEND_ROWS.items():
        cfg, _ = _resolve("conf", "train", [f"experiment=dalle3/{column}/{row}"])
        got = OmegaConf.to_container(cfg.data.caption_mix) if cfg.data.caption_mix is not None else None
        assert got == mix, (column, row, got)
    prefix = "" if column == "t2i" else "glide_"
    for table in ("blend_descriptive", "blend_short", "blend_short_upsampled"):
        rows = _rows(f"dalle3/{prefix}{table}")
        assert [r[0] for r in rows] == [f"row={row}" for row in BLEND_ROWS], (table, list(rows))
        for (job,), cfg in rows.items():
            ckpt = cfg.generator.dalle_ckpt if column == "t2i" else cfg.generator.glide_ckpt
            assert ckpt.endswith(f"/dalle3/{column}/{job[4:]}/checkpoints/last.ckpt"), (table, job, ckpt)


def test_the_other_papers_ablation_rows_have_their_configs():
    """DALL·E 1 Fig. 9 (blur radius 0, 1, 2, 4, 8; reranked candidates), the dVAE's logit-Laplace vs MSE, DALL·E 3's
    captioners (alt, then short and descriptive fine-tunes of it), GLIDE's
    guidance sweeps (its FID scale 1.5), unCLIP's prior ablation (caption only / + CLIP text embedding / + prior),
    AR vs diffusion prior, decoder guidance (its FID scale 1.25) and the blur vs BSR upsamplers."""
    from omegaconf import OmegaConf

    fig9, _ = _resolve("conf.eval", "eval", ["experiment=dalle1/fig9"])
    assert list(fig9.blur.radii) == [0, 1, 2, 4, 8] and list(fig9.rerank.candidates) == [1, 2, 4, 8, 16, 32]
    for radius in (0, 1, 2, 4, 8):
        assert list(_resolve("conf.eval", "eval", [f"experiment=dalle1/blur_r{radius}"])[0].blur.radii) == [radius]
    for n in (1, 2, 4, 8, 16, 32):
        assert list(_resolve("conf.eval", "eval", [f"experiment=dalle1/rerank_n{n}"])[0].rerank.candidates) == [n]
    losses = {
        e: _resolve("conf", "train", [f"experiment=tokenizers/{e}"])[0].model.get("recon_loss")
        for e in ("dvae_shapes", "dvae_shapes_mse")
    }
    assert losses["dvae_shapes_mse"] == "mse" and losses["dvae_shapes"] in (None, "logit_laplace"), losses

    def swept(experiment: str, key: str) -> list:
        return [OmegaConf.select(cfg, key) for cfg in _rows(experiment).values()]

    assert 1.5 in swept("glide/guidance_sweep", "generator.guidance_scale")
    assert 0 in swept("glide/cfg_vs_clip", "generator.clip_guidance_scale")
    assert swept("unclip/prior_ablation", "generator.prior") == ["none", "text_emb", "diffusion"]
    priors = swept("unclip/ar_vs_diffusion", "generator.prior_ckpt")
    assert [p.split("/")[-3] for p in priors] == ["prior", "ar_prior"], priors
    assert 1.25 in swept("unclip/decoder_guidance", "generator.decoder_guidance_scale")
    for style in ("alt", "short", "descriptive"):  # DALL·E 3's captioner, then its two fine-tunes from it
        captioner, _ = _resolve("conf", "train", [f"experiment=dalle3/captioner_{style}"])
        assert captioner.data.caption_style == style, style
        init = captioner.model.get("init_from")
        assert (init is None) if style == "alt" else init.endswith("/dalle3/captioner_alt/checkpoints/last.ckpt"), init
    corruption = {
        e: _resolve("conf", "train", [f"experiment=unclip/{e}"])[0].model.corruption
        for e in ("upsampler_shapes_32_128", "upsampler_shapes_32_128_bsr")
    }
    assert corruption == {"upsampler_shapes_32_128": "blur", "upsampler_shapes_32_128_bsr": "bsr"}, corruption


# ---- guards: the reading finds the commands, and a stale one fails ------------------------------------------------


def test_every_kind_of_command_is_found():
    assert len(HYDRA_COMMANDS) > 80 and len(ARGPARSE_COMMANDS) > 30 and len(DOTLIST_COMMANDS) >= 5
    assert len(SHELL_COMMANDS) >= 5
    assert {_program(_argv(c))[0] for c in HYDRA_COMMANDS} >= {"zoo-train", "zoo-eval", "zoo-sample", "zoo-embed"}


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_a_stale_command_fails_the_check():
    readme = EXPERIMENTS / "README.md"
    stale = [  # the refusal names what is stale (any other error, e.g. a harness failure, is not this test's pass)
        ("zoo-eval experiment=dalle1/fig10", "zoo-eval", "fig10"),  # no such experiment
        ("zoo-train experiment=glide/clip_text model.no_such_key=1", "zoo-train", "no_such_key"),  # no such key
        ("zoo-eval -m experiment=glide/steps steps_row=ddim11", "zoo-eval", "ddim11"),  # no such row
    ]
    for text, program, named in stale:
        _, args, _ = _program(_argv(Command(readme, text, inline=False)))
        module, name = HYDRA[program]
        multirun, overrides = _hydra_overrides(program, args)
        with pytest.raises(Exception, match=named):
            _resolve(module, name, overrides)
    error = _parse_with_the_scripts_parser("eval.leaderboard", ["logs/x", "--out", "x", "--no-such-flag"])
    assert "unrecognized arguments" in error
