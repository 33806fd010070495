"""Every code block of README.md runs as written: the python blocks are executed, and every `synthgrad ...` line of
the bash blocks parses (and, for feed-forward training, its values validate), without running anything.

Python blocks run with SYNTHGRAD_DATA_DIR at the real data if the lookup of every entry point finds MNIST there,
else at a small fake MNIST. A bash line is read as a usage line: `[--opt X]` is taken, `{a,b}` takes its last
choice (the method that takes every option), `[A | B]` its first, `...` is dropped, and placeholders (DIR, OUTDIR,
E, B, LR, S, ...) get sample values.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from helpers import write_fake_mnist
from synthgrad.data import resolve_data_dir
from synthgrad.data.mnist import find_mnist_files
from synthgrad.errors import SynthgradError

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

# A placeholder's sample value, by the option before it.
SAMPLES = {"--epochs": "1", "--batch-size": "32", "--lr": "0.001", "--seed": "0", "--update-prob": "0.5",
           "--stages": "2", "--layers": "4", "--max-minutes": "1", "--max-samples": "100", "--max-staleness": "2",
           "--minutes-per-run": "1", "--samples-per-run": "100", "--T": "3"}  # fmt: skip


def code_blocks(path: Path, language: str) -> list[tuple[int, str]]:
    """(line number, text) of every fenced block of `language` in the markdown file `path`."""
    blocks, lines = [], path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == f"```{language}":
            start, i = i + 1, i + 1
            while not lines[i].startswith("```"):
                i += 1
            blocks.append((start + 1, "\n".join(lines[start:i])))
        i += 1
    return blocks


def command_lines(block: str) -> list[str]:
    """The commands of a bash block: continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    commands = []
    for line in joined.splitlines():
        line = re.split(r"(^|\s)#", line, maxsplit=1)[0].strip()
        if line:
            commands.append(line)
    return commands


def as_example(usage: str, data: Path, out: Path) -> list[str]:
    """A usage line as one concrete command line."""
    text = usage.replace("...", " ")
    for _ in range(5):  # innermost first: [--opt {a,b}], [A | B]
        text = re.sub(r"\{([^{}]*)\}", lambda m: m.group(1).split(",")[-1], text)
        text = re.sub(r"\[([^\[\]]*)\]", lambda m: m.group(1).split("|")[0], text)
    words = shlex.split(text)
    for i, w in enumerate(words):
        if w == "DIR":
            words[i] = str(data)
        elif w == "OUTDIR":
            words[i] = str(out)
        elif re.fullmatch(r"[A-Z]+", w) and i > 0 and words[i - 1] in SAMPLES:
            words[i] = SAMPLES[words[i - 1]]
    return words


def synthgrad_argv(words: list[str]) -> list[str] | None:
    """The arguments of `synthgrad` in a command (also under `torchrun ... -m synthgrad.cli`), or None."""
    if words[0] == "synthgrad":
        return words[1:]
    if "-m" in words and words[words.index("-m") + 1] == "synthgrad.cli":
        return words[words.index("-m") + 2 :]
    return None


def check_command(words: list[str]) -> None:
    """Parse a `synthgrad` command line as the CLI would, and validate a feed-forward config; run nothing."""
    from synthgrad.cli import build_parser, config_from_args

    argv = synthgrad_argv(words)
    if argv is None:
        if words[0] == "bash":  # a script of the repository: it exists and is valid bash
            assert (REPO / words[1]).is_file(), words[1]
            subprocess.run(["bash", "-n", str(REPO / words[1])], check=True)
        return
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"`{' '.join(words)}` does not parse (exit {e.code})")
    if args.command in ("train", "parallel") and getattr(args, "task", None) is None:
        try:
            config_from_args(args)  # the values validate (no data is read)
        except SynthgradError as e:
            pytest.fail(f"`{' '.join(words)}`: {e}")


def bash_commands() -> list[tuple[str, str]]:
    return [(f"README.md:{line}", cmd) for line, block in code_blocks(README, "bash") for cmd in command_lines(block)]


@pytest.mark.parametrize(("where", "command"), bash_commands(), ids=[w for w, _ in bash_commands()])
def test_every_command_of_the_readme_parses(where, command, tmp_path) -> None:
    check_command(as_example(command, tmp_path / "data", tmp_path / "out"))


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real MNIST if the lookup finds it, else a small fake one."""
    real = resolve_data_dir(None)
    _, files = find_mnist_files(real)
    if all(files.values()):
        return real
    return write_fake_mnist(tmp_path_factory.mktemp("readme") / "mnist", n_train=2048, n_test=256)


@pytest.mark.parametrize(
    ("line", "code"),
    code_blocks(README, "python"),
    ids=[f"README.md:{line}" for line, _ in code_blocks(README, "python")],
)
def test_every_python_block_of_the_readme_runs(line, code, mnist_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SYNTHGRAD_DATA_DIR", str(mnist_dir))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})


def test_the_usage_reader_finds_a_bad_command(tmp_path) -> None:
    """The check above can fail: an option the CLI does not have, or a bad value, is caught."""
    for bad in ("synthgrad train --dataset mnist --epochs E --no-such-option", "synthgrad train --lr -1"):
        with pytest.raises(pytest.fail.Exception):
            check_command(as_example(bad, tmp_path, tmp_path))
