"""Start K processes of `synthgrad parallel` on this machine, watch them, and stop them all if one dies.

Each child gets the environment torchrun would give it (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)
and runs the same command line, so a local run and a torchrun run execute the same code.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

from synthgrad.errors import ConfigError

GRACE_S = 20.0  # after one stage dies, the others get this long to notice and exit before they are killed


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
    procs = []
    for rank in range(stages):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": str(stages),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": addr,
            "MASTER_PORT": str(port),
        }
        procs.append(subprocess.Popen([sys.executable, "-m", "synthgrad.cli", *argv], env=env))
    try:
        return _watch(procs)
    except KeyboardInterrupt:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
        raise


def _cause(ended: list[tuple[int, int]]) -> tuple[int, int]:
    """Of stages seen ending at once, (rank, code) of the cause: one killed by a signal before one that exited
    (having lost it), then the lowest rank."""
    return min(ended, key=lambda rc: (rc[1] >= 0, rc[0]))


def _watch(procs: list[subprocess.Popen]) -> int:
    failed: tuple[int, int] | None = None
    deadline = None
    while True:
        codes = [p.poll() for p in procs]
        ended = [(rank, code) for rank, code in enumerate(codes) if code not in (None, 0)]
        if ended and failed is None:
            failed = _cause(ended)
            deadline = time.monotonic() + GRACE_S
        if all(c is not None for c in codes):
            break
        if deadline is not None and time.monotonic() > deadline:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.1)
    if failed is None:
        return 0
    rank, code = failed
    if code == 2:  # a user error, already reported in one line by the stage
        return 2
    print(
        f"synthgrad: error: stage {rank} {_describe(code)}; all stages stopped (--resume continues from the last "
        "checkpoint)",
        file=sys.stderr,
    )
    return 1
