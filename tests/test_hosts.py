"""Stages on separate hosts: two Linux network namespaces joined by a veth pair, each stage started by torchrun as
its own node, as the README's multi-machine recipe says (synthgrad.parallel.netns). Skipped where namespaces
cannot be made (not root, no iproute2); CI runs as root and makes them."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from helpers import checkpoint_of, write_fake_mnist
from synthgrad.parallel import netns

REASON = netns.unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"separate hosts: {REASON}")
SMALL = ["--layers", "4", "--width", "16", "--batch-size", "32", "--threads", "1", "--no-progress", "--seed", "3"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_mnist(tmp_path_factory.mktemp("hdata"), n_train=320, n_test=64)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(data: Path, out: Path, *extra: object) -> list[str]:
    return ["parallel", "--stages", "2", "--method", "cdni", "--data-dir", str(data), "--out", str(out), *SMALL,
            *map(str, extra)]  # fmt: skip


def _start(hosts: netns.Hosts, argv: list[str]) -> list:
    port = _port()
    return [netns.torchrun(hosts, n, port, argv, env=netns.repo_env(), stdout=-1, stderr=-1, text=True)
            for n in range(2)]  # fmt: skip


def _finish(nodes: list, timeout: float) -> list[str]:
    errs = []
    for n in nodes:
        try:
            errs.append(n.communicate(timeout=timeout)[1])
        except Exception:  # noqa: BLE001 - a hang: kill and report what every node said
            for m in nodes:
                m.kill()
            pytest.fail("a node did not exit: " + " | ".join(m.communicate()[1][-1500:] for m in nodes))
    return errs


def test_two_hosts_over_a_capped_slow_link_compute_what_one_host_computes(data, tmp_path) -> None:
    """Different addresses, a real 100 Mbit/s cap (tc tbf) and an emulated 2 ms one-way delay: the same numbers as
    the same run on loopback, because staleness is fixed (S = 1), not timing-dependent."""
    from test_parallel import cli, max_diff, stage_state

    local = tmp_path / "loopback"
    assert cli(*_args(data, local, "--epochs", 1, "--max-staleness", 1)).returncode == 0
    with netns.Hosts(2, bandwidth="100mbit") as hosts:
        assert hosts.addr(0) != hosts.addr(1)
        out = tmp_path / "hosts"
        nodes = _start(hosts, _args(data, out, "--epochs", 1, "--max-staleness", 1, "--link-delay-ms", 2))
        errs = _finish(nodes, timeout=180)
    assert [n.returncode for n in nodes] == [0, 0], errs
    for k in range(2):
        assert max_diff(stage_state(out, k), stage_state(local, k)) == 0.0, f"stage {k}"


def test_a_link_going_down_ends_the_job_on_every_host_within_30_s_and_resume_continues(data, tmp_path) -> None:
    """Host 1's link goes down mid-run: every host ends within 30 s with its own line; with the link back up,
    `--resume` on the same hosts continues from the last consistent checkpoint to the numbers of an uninterrupted
    run with the same seed (run on loopback: where the stages ran does not change the result)."""
    from test_parallel import cli, max_diff, stage_state

    out = tmp_path / "run"
    with netns.Hosts(2) as hosts:
        nodes = _start(hosts, _args(data, out, "--epochs", 400, "--timeout", 10))
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").exists():  # training has begun (first epoch written)
            assert time.monotonic() < deadline and all(n.poll() is None for n in nodes), "the job did not start"
            time.sleep(0.2)
        hosts.link_down(1)
        cut = time.monotonic()
        errs = _finish(nodes, timeout=60)
        took = time.monotonic() - cut
        assert all(n.returncode not in (0, None) for n in nodes)
        assert took <= 30, f"the job took {took:.0f} s to end after the link went down"
        for err in errs:  # each host's own line (torchrun's agent then adds its failure report, which is not ours)
            ours = [ln for ln in err.splitlines() if ln.startswith("synthgrad: error: stage")]
            assert len(ours) == 1 and "lost" in ours[0], err[-2000:]
        meta = json.loads((out / "checkpoint.json").read_text())  # the last consistent checkpoint is named
        assert checkpoint_of(out, 0)
        done = meta["progress"]["epoch"]

        hosts.link_up(1)
        nodes = _start(hosts, _args(data, out, "--epochs", done + 1, "--timeout", 10, "--resume"))
        errs = _finish(nodes, timeout=120)
    assert [n.returncode for n in nodes] == [0, 0], errs
    assert json.loads((out / "checkpoint.json").read_text())["progress"]["epoch"] == done + 1
    whole = tmp_path / "whole"
    r = cli(*_args(data, whole, "--epochs", done + 1))
    assert r.returncode == 0, r.stderr
    for k in range(2):
        assert max_diff(stage_state(out, k), stage_state(whole, k)) == 0.0, f"stage {k}"
