"""The README's WebDataset commands work as written: the shell keeps the quotes Hydra needs around the brace pattern.

The commands are read from README.md (so the documentation and this test cannot drift), passed through a real
``bash`` to get the arguments a user's shell would hand to ``zoo-train``, then parsed and composed by Hydra.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import load_test_helpers

README = Path(__file__).resolve().parents[1] / "README.md"
commands = load_test_helpers("helpers_commands")  # the Markdown and shell reading test_experiment_docs.py shares


def _webdataset_commands() -> list[str]:
    """Every README command (inline `code` or a line of a ```bash block, with its \\ continuations) that sets
    ``data.train_urls``."""
    found = commands.markdown_commands(README.read_text(encoding="utf-8"))
    return [commands.strip_comment(c) for c in found if "train_urls" in c]


def _shell_words(command: str) -> list[str]:
    """The argv bash gives the program for ``command`` (quote removal, brace and glob expansion included)."""
    argv = commands.shell_words(command)
    return argv[1:] if argv[0].startswith("zoo-") else argv


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
