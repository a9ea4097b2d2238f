"""The README's WebDataset commands work as written: the shell keeps the quotes Hydra needs around the brace pattern.

The commands are read from README.md (so the documentation and this test cannot drift), passed through a real
``bash`` to get the arguments a user's shell would hand to ``zoo-train``, then parsed and composed by Hydra.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _webdataset_commands() -> list[str]:
    """Every README command (inline `code` or a line of a ```bash block, with its \\ continuations) that sets
    ``data.train_urls``."""
    text = README.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if "train_urls" in line:
                commands.append(line.split(" #")[0].strip())
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    commands += [" ".join(c.split()) for c in re.findall(r"`([^`]*train_urls[^`]*)`", prose)]
    return commands


def _shell_words(command: str) -> list[str]:
    """The argv bash gives the program for ``command`` (quote removal, brace and glob expansion included)."""
    words = command.split(None, 1)
    args = words[1] if words[0].startswith("zoo-") else command
    out = subprocess.run(["bash", "-c", f"printf '%s\\0' {args}"], capture_output=True, check=True).stdout
    return out.decode().split("\0")[:-1]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_readme_webdataset_commands_keep_the_brace_pattern(tmp_path, train_cfg):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    commands = _webdataset_commands()
    assert len(commands) >= 2, commands  # the Data bullet and the GPU-cluster example
    parser = OverridesParser.create()
    for command in commands:
        argv = _shell_words(command)
        data = [a for a in argv if a.startswith(("data.", "data="))]
        (urls,) = [a for a in data if a.startswith("data.train_urls=")]
        pattern = re.search(r"'([^']*\{\d+\.\.\d+\}[^']*)'", command).group(1)  # what the README means
        parser.parse_overrides(argv[1:] if argv[0] == "-m" else argv)  # the whole command line parses
        cfg = train_cfg(*data)
        assert cfg.data.train_urls == pattern, (command, argv)
        assert "{" in pattern and ".." in pattern


def test_the_unquoted_form_is_what_fails():
    """Guard: what the shell leaves of data.train_urls='...{a..b}...' is refused by Hydra (the bug the README had)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    argv = _shell_words("zoo-train data.train_urls='/data/shards/{00000..00999}.tar'")
    assert argv == ["data.train_urls=/data/shards/{00000..00999}.tar"]
    with pytest.raises(OverrideParseException):
        OverridesParser.create().parse_overrides(argv)
