"""Reading shell commands out of Markdown, as a reader would copy them (no tests here; test_readme_commands.py and
test_experiment_docs.py load it with ``conftest.load_test_helpers("helpers_commands")``)."""

from __future__ import annotations

import re
import subprocess


def markdown_commands(text: str) -> list[str]:
    """Every command of a Markdown text: each line of a fenced block (its ``\\`` continuations joined, blank and
    ``#`` lines skipped), then each inline `code` span of the prose, whitespace collapsed. Comments stay on."""
    commands = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = " ".join(line.split())
            if line and not line.startswith("#"):
                commands.append(line)
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    commands += [" ".join(c.split()) for c in re.findall(r"`([^`]+)`", prose)]
    return commands


def strip_comment(command: str) -> str:
    """``command`` without its trailing `` # comment``."""
    return command.split(" #")[0].strip()


def shell_words(command: str) -> list[str]:
    """The argv bash builds for ``command`` (quote removal, brace and glob expansion included), program first."""
    out = subprocess.run(["bash", "-c", f"printf '%s\\0' {command}"], capture_output=True, check=True).stdout
    return out.decode().split("\0")[:-1]
