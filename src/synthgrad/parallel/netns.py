"""Separate hosts on one machine, for tests and benchmarks: Linux network namespaces joined by veth pairs.

    with Hosts(2) as hosts:                     # namespaces sg<token>-0, sg<token>-1, addresses 10.<a>.<b>.1, .2
        hosts.set_bandwidth("100mbit")          # tc tbf on every host's link (egress), None to remove
        p = hosts.popen(0, ["python", "-m", "torch.distributed.run", ..., "--master-addr", hosts.addr(0), ...])
        hosts.link_down(1)                      # ip link set … down: host 1 is cut off

Each host is a namespace of its own with its loopback and one interface: two hosts share one veth pair; more
hosts each get a veth pair into a bridge in one more namespace (the switch). Addresses are 10.<a>.<b>.<i+1>/24
inside the namespaces, so they never meet the machine's own routes; names carry a random token, so concurrent
users do not collide. Everything is removed on exit (processes still running in a namespace are killed first),
also when the `with` block fails. Needs root (CAP_NET_ADMIN) and the `ip` and `tc` commands; `unavailable()`
says why they cannot be used here, for a test to skip with that reason.

The kernel's tc has tbf and htb but not netem on the machines this was written for, so a link's propagation
delay is not set here: synthgrad's transport emulates it (`--link-delay-ms`, parallel/link.py). Bandwidth caps
are real (tbf on each interface's egress).

Inside a namespace the machine's host name resolves to loopback; synthgrad's runtime then binds gloo to the
interface that routes to the rendezvous address ([Note: gloo's interface] in parallel/runtime.py), so the
README's recipe runs unchanged. `env(i, ifname=True)` names the interface explicitly (GLOO_SOCKET_IFNAME).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from synthgrad.parallel.link import parse_bandwidth


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def unavailable() -> str | None:
    """Why namespaces cannot be made here (not root, no `ip` or `tc`, not permitted), or None."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"the `{tool}` command (iproute2) is not installed"
    name = f"sgprobe{secrets.token_hex(3)}"
    r = _ip("netns", "add", name, check=False)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip() or r.returncode}"
    _ip("netns", "del", name, check=False)
    return None


class Hosts:
    """`count` hosts in their own network namespaces, joined by veth pairs (see the module doc).

    Args:
        count: hosts (>= 2).
        bandwidth: a tbf cap on every host's egress ('100mbit', tc's units), or None.
    """

    def __init__(self, count: int = 2, bandwidth: str | None = None) -> None:
        if count < 2:
            raise ValueError(f"need at least 2 hosts, got {count}")
        self.count = count
        self.token = secrets.token_hex(3)
        self.names = [f"sg{self.token}-{i}" for i in range(count)]
        self.switch = f"sg{self.token}-sw" if count > 2 else None
        self.ifnames = [f"sg{self.token}h{i}" for i in range(count)]  # <= 15 characters
        self.subnet = f"10.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}"
        self._bandwidth = bandwidth
        self._procs: list[subprocess.Popen] = []
        self._made: list[str] = []

    # ------------------------------------------------------------------ making and removing
    def __enter__(self) -> Hosts:
        try:
            self._make()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _make(self) -> None:
        for name in [*self.names, *([self.switch] if self.switch else [])]:
            _ip("netns", "add", name)
            self._made.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
        if self.switch is None:  # two hosts: one veth pair between them
            a, b = self.ifnames
            _ip("link", "add", a, "type", "veth", "peer", "name", b)
            for i, ifname in enumerate(self.ifnames):
                _ip("link", "set", ifname, "netns", self.names[i])
        else:  # a bridge in the switch namespace, a veth pair from each host to it
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
            for i, ifname in enumerate(self.ifnames):
                port = f"sg{self.token}p{i}"
                _ip("link", "add", ifname, "type", "veth", "peer", "name", port)
                _ip("link", "set", ifname, "netns", self.names[i])
                _ip("link", "set", port, "netns", self.switch)
                _ip("-n", self.switch, "link", "set", port, "master", "br0")
                _ip("-n", self.switch, "link", "set", port, "up")
        for i, ifname in enumerate(self.ifnames):
            _ip("-n", self.names[i], "addr", "add", f"{self.addr(i)}/24", "dev", ifname)
            _ip("-n", self.names[i], "link", "set", ifname, "up")
        if self._bandwidth:
            self.set_bandwidth(self._bandwidth)
        self._wait_up()

    def _wait_up(self, timeout_s: float = 10.0) -> None:
        """Until every interface reports carrier (a veth whose peer is up)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = [_ip("-n", self.names[i], "-o", "link", "show", f).stdout for i, f in enumerate(self.ifnames)]
            if all("LOWER_UP" in s for s in states):
                return
            time.sleep(0.05)
        raise RuntimeError(f"the hosts' links did not come up within {timeout_s:.0f} s")

    def close(self) -> None:
        """Kill what runs in the namespaces and remove them (their interfaces go with them)."""
        for p in self._procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=10)
        for name in self._made:
            for pid in self.pids(name):  # anything else left inside (started by hand, by a test)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _ip("netns", "del", name, check=False)
        self._made = []

    @staticmethod
    def pids(name: str) -> list[int]:
        r = _ip("netns", "pids", name, check=False)
        return [int(p) for p in r.stdout.split()] if r.returncode == 0 else []

    # ------------------------------------------------------------------ using
    def addr(self, i: int) -> str:
        return f"{self.subnet}.{i + 1}"

    def env(self, i: int, base: dict[str, str] | None = None, *, ifname: bool = False) -> dict[str, str]:
        """The environment for a process on host i (with `ifname`, gloo bound to the host's interface by name)."""
        env = dict(os.environ if base is None else base)
        if ifname:
            env["GLOO_SOCKET_IFNAME"] = self.ifnames[i]
        return env

    def command(self, i: int, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.names[i], *argv]

    def popen(self, i: int, argv: Sequence[str], env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
        """Start `argv` on host i, in a process group of its own (so that `close` can kill all of it)."""
        p = subprocess.Popen(self.command(i, argv), env=self.env(i, env), start_new_session=True, **kwargs)
        self._procs.append(p)
        return p

    def run(self, i: int, argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(i, argv), capture_output=True, text=True, **kwargs)

    def set_bandwidth(self, rate: str | None) -> None:
        """Cap every host's egress at `rate` with tc tbf (None: remove the cap)."""
        bits = parse_bandwidth(rate)
        for i, ifname in enumerate(self.ifnames):
            subprocess.run(["tc", "-n", self.names[i], "qdisc", "del", "dev", ifname, "root"], capture_output=True)
            if bits is None:
                continue
            # burst: at least 10 ms of traffic and 64 KiB (tbf needs rate/HZ at least); queue up to 200 ms
            burst = max(65536, int(bits / 8 * 0.01))
            cmd = ["tc", "-n", self.names[i], "qdisc", "add", "dev", ifname, "root", "tbf", "rate", f"{int(bits)}bit",
                   "burst", str(burst), "latency", "200ms"]  # fmt: skip
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"tc tbf on {ifname}: {r.stderr.strip()}")
        self._bandwidth = rate

    def link_down(self, i: int) -> None:
        """Cut host i off: its interface goes down (`ip link set … down`)."""
        _ip("-n", self.names[i], "link", "set", self.ifnames[i], "down")

    def link_up(self, i: int) -> None:
        _ip("-n", self.names[i], "link", "set", self.ifnames[i], "up")


def torchrun(
    hosts: Hosts, node: int, master_port: int, argv: Sequence[str], *, nnodes: int | None = None,
    python: str | None = None, env: dict[str, str] | None = None, **popen_kwargs,
) -> subprocess.Popen:  # fmt: skip
    """The README's multi-machine recipe on host `node`: `torchrun --nnodes N --nproc-per-node 1 --node-rank node
    --master-addr <host 0> --master-port P -m synthgrad.cli *argv`."""
    import sys

    cmd = [python or sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes or hosts.count),
           "--nproc-per-node", "1", "--node-rank", str(node), "--master-addr", hosts.addr(0),
           "--master-port", str(master_port), "-m", "synthgrad.cli", *argv]  # fmt: skip
    return hosts.popen(node, cmd, env=env, **popen_kwargs)


def repo_env() -> dict[str, str]:
    """The environment with this checkout's src/ on PYTHONPATH (for processes started from a checkout)."""
    src = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
