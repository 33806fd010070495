"""Start K processes of `synthgrad parallel` on this machine, watch them, and stop them all if one dies.

Each child gets the environment torchrun would give it (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)
and runs the same command line, so a local run and a torchrun run execute the same code.

[Note: one line from K processes]
A failed job ends in one line, as a failed `synthgrad train` does, although K processes fail with it: the stage
that hit the cause (a bad file, divergence) and the stages that then lost it. Each child therefore writes its
line into a file of its own (`SYNTHGRAD_ERROR_FILE`) instead of stderr, and the launcher prints one: that of the
cause, and the cause's exit code. The cause is a stage killed by a signal (the launcher names it), else one that
failed on its own (exit 2: bad input, 3: divergence), else the first to fail; a stage that only lost another
(exit 1 with "lost stage") is never the cause when another is. Under torchrun every rank prints its own line.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from synthgrad.errors import ConfigError

GRACE_S = 20.0  # after one stage dies, the others get this long to notice and exit before they are killed
ERROR_FILE_ENV = "SYNTHGRAD_ERROR_FILE"  # where a stage started here writes its one line ([Note: one line ...])


def free_port(addr: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


def check_port(addr: str, port: int) -> None:
    """Fail before starting anything if the rendezvous port cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((addr, port))
        except OSError as e:
            raise ConfigError(
                f"cannot use {addr}:{port} for the rendezvous ({e.strerror}); pick another --master-port"
            ) from None


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def launch_local(argv: Sequence[str], stages: int, addr: str = "127.0.0.1", port: int | None = None) -> int:
    """Run `python -m synthgrad.cli *argv` as `stages` ranks; return the job's exit code."""
    if port is None:
        port = free_port(addr)
    else:
        check_port(addr, port)
    with tempfile.TemporaryDirectory(prefix="synthgrad-launch-") as tmp:
        procs, lines = [], [Path(tmp) / f"rank{rank}.err" for rank in range(stages)]
        for rank in range(stages):
            env = {
                **os.environ,
                "RANK": str(rank),
                "WORLD_SIZE": str(stages),
                "LOCAL_RANK": str(rank),
                "MASTER_ADDR": addr,
                "MASTER_PORT": str(port),
                ERROR_FILE_ENV: str(lines[rank]),
            }
            procs.append(subprocess.Popen([sys.executable, "-m", "synthgrad.cli", *argv], env=env))
        try:
            return _watch(procs, lines)
        except KeyboardInterrupt:
            for p in procs:
                p.send_signal(signal.SIGINT)
            for p in procs:
                p.wait()
            raise


def _cause(ended: list[tuple[int, int]], lines: dict[int, str] | None = None) -> tuple[int, int]:
    """Of the stages that failed, in the order they were seen to end, (rank, code) of the cause ([Note: one line
    from K processes]): one killed by a signal, else one that failed on its own (2, 3), else the first seen that
    did not merely lose another stage, else the first seen."""
    lines = lines or {}

    def rank_of(i: int) -> tuple[int, int, int]:
        rank, code = ended[i]
        lost = "lost stage" in lines.get(rank, "") or "was lost" in lines.get(rank, "")
        return (0 if code < 0 else 1 if code in (2, 3) else 2 if not lost else 3, i, rank)

    return ended[min(range(len(ended)), key=rank_of)]


def _last_line(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""
    return text.splitlines()[-1] if text else ""


def _watch(procs: list[subprocess.Popen], lines: list[Path] | None = None) -> int:
    ended: list[tuple[int, int]] = []  # (rank, code) of the stages that failed, in the order seen
    deadline = None
    while True:
        codes = [p.poll() for p in procs]
        new = [(rank, code) for rank, code in enumerate(codes) if code not in (None, 0) and rank not in dict(ended)]
        ended += sorted(new, key=lambda rc: (rc[1] >= 0, rc[0]))  # seen at once: a killed stage first
        if ended and deadline is None:
            deadline = time.monotonic() + GRACE_S
        if all(c is not None for c in codes):
            break
        if deadline is not None and time.monotonic() > deadline:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.1)
    if not ended:
        return 0
    said = {rank: _last_line(lines[rank]) for rank, _ in ended} if lines else {}
    rank, code = _cause(ended, said)
    if code > 0 and said.get(rank):  # the stage's own line: the cause, in its words
        print(said[rank], file=sys.stderr)
        return code
    print(
        f"synthgrad: error: stage {rank} {_describe(code)}; all stages stopped (--resume continues from the last "
        "checkpoint)",
        file=sys.stderr,
    )
    return 1
