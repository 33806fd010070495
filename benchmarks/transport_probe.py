"""The stage transport over a slow link, without training: does a step cost compute *or* a message, or both?

    python benchmarks/transport_probe.py --json OUT [--bandwidth 100mbit] [--staleness 2,3] [--ahead 1,auto]
        [--compute-ms 65] [--message-mib 1] [--steps 40] [--loopback] [--quick]

Two stages on two hosts (network namespaces joined by a veth pair, a real `tc tbf` cap; synthgrad.parallel.netns)
play the decoupled pipeline's message pattern through synthgrad's own transport (`RuntimeTransport`): stage 0
computes for --compute-ms, sends an activation of --message-mib and then consumes the target of step t − S; stage 1
receives the activation, computes, sends the target back. "Compute" is a loop of 600 × 600 matrix products on one
core (one torch thread, each stage pinned to its own core), as a real stage's is. For each S and each receive
window (`--ahead`: receives posted ahead per channel, `auto` = S + 1, the runtime's default) it reports ms per step
beside what the cost model allows: max(T, x, (2T + 2x) / (S + 1)) with x the message's time on the link, measured
before the runs with both directions busy, as in the pipeline (both stages stream messages of that size at each
other) ([Note: cost model] in parallel/costmodel.py,
[Note: receives ahead] in parallel/transport.py). Without root (or with --loopback) both stages run on 127.0.0.1
and the cap is emulated by synthgrad's link (`--link-bandwidth`'s emulation) instead of tbf.

Output: JSON with one row per (S, ahead): ms per step on each stage, waiting per step, the model's bound.
`--quick` checks that it runs (a few short steps): no figure of it means anything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from synthgrad.parallel import netns  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------- one stage
def worker(a: argparse.Namespace) -> None:
    import torch

    from synthgrad.parallel.link import EmulatedLinks, LinkSpec, parse_bandwidth
    from synthgrad.parallel.runtime import Runtime
    from synthgrad.parallel.transport import RuntimeTransport
    from synthgrad.pipeline import Channel

    torch.set_num_threads(1)
    rt = Runtime.from_env("cpu", timeout_s=120)
    os.sched_setaffinity(0, {rt.rank % (os.cpu_count() or 1)})
    if a.emulate_bandwidth:
        rt.link = EmulatedLinks(LinkSpec(0.0, parse_bandwidth(a.emulate_bandwidth)))
    n = int(a.message_mib * 2**20) // 4
    message = torch.randn(n)
    peer = 1 - rt.rank
    # the link's sustained time for one message while both directions carry one (as in the pipeline): both
    # stages stream 6 messages at each other, receives posted first; x = the time per message (median of 3)
    per_message = []
    for _ in range(3):
        bufs = [torch.empty(n) for _ in range(6)]
        works = [rt.irecv(b, peer, 3) for b in bufs]
        rt.barrier()
        t0 = time.perf_counter()
        sends = [rt.isend(message, peer, 3) for _ in bufs]
        for w in works + sends:
            rt.wait(w, peer)
        per_message.append((time.perf_counter() - t0) / len(bufs))
    x = statistics.median(per_message)
    a_mat = torch.randn(600, 600)

    def compute(ms: float) -> None:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < ms / 1e3:
            a_mat @ a_mat

    rows = []
    for S in a.staleness:
        for ahead in a.ahead:
            window = S + 1 if ahead == "auto" else int(ahead)
            t = RuntimeTransport(rt, rt.rank, lambda s: True, max_outstanding=4 * (S + 2), ahead=window)
            t.limit(a.steps)
            rt.barrier()
            rt.timing.wait_s = 0.0
            t0 = time.perf_counter()
            for step in range(a.steps):
                if rt.rank == 0:
                    compute(a.compute_ms)
                    t.send(Channel.ACTIVATION, 1, step, message)
                    if step >= S:
                        t.recv(Channel.TARGET, 1, step - S, (n,))
                else:
                    t.recv(Channel.ACTIVATION, 0, step, (n,))
                    compute(a.compute_ms)
                    t.send(Channel.TARGET, 0, step, message)
            if rt.rank == 0:
                for step in range(max(0, a.steps - S), a.steps):
                    t.recv(Channel.TARGET, 1, step, (n,))
            t.settle([], [], {})
            per_step = (time.perf_counter() - t0) / a.steps
            rows.append({"staleness": S, "ahead": ahead, "window": window, "ms_per_step": per_step * 1e3,
                         "wait_ms_per_step": rt.timing.wait_s / a.steps * 1e3})  # fmt: skip
    gathered = rt.all_gather_object({"rank": rt.rank, "x_ms": x * 1e3, "rows": rows})
    if rt.rank == 0:
        Path(a.worker_out).write_text(json.dumps(gathered))
    rt.close()


# ------------------------------------------------------------------------------------------------- launcher
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--bandwidth", default="100mbit")
    p.add_argument("--staleness", default="2,3")
    p.add_argument("--ahead", default="1,auto", help="receive windows to compare: numbers or auto (S + 1)")
    p.add_argument("--compute-ms", type=float, default=65.0)
    p.add_argument("--message-mib", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--loopback", action="store_true")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    p.add_argument("--emulate-bandwidth", help=argparse.SUPPRESS)
    a = p.parse_args()
    a.staleness = [int(s) for s in str(a.staleness).split(",")]
    a.ahead = [s if s == "auto" else int(s) for s in str(a.ahead).split(",")]
    if a.worker:
        return worker(a)
    if not a.json:
        p.error("--json is required")
    if a.quick:
        a.steps, a.compute_ms, a.message_mib = 6, 5.0, 0.25
    why = None if a.loopback else netns.unavailable()
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".worker.json")
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", "--worker-out", str(tmp),
            "--staleness", ",".join(map(str, a.staleness)), "--ahead", ",".join(map(str, a.ahead)),
            "--compute-ms", str(a.compute_ms), "--message-mib", str(a.message_mib),
            "--steps", str(a.steps)]  # fmt: skip
    port = _free_port()
    env = netns.repo_env()
    t0 = time.perf_counter()
    if a.loopback or why:
        if why and not a.loopback:
            print(f"no namespaces ({why}): both stages on loopback, bandwidth emulated", flush=True)
        procs = [subprocess.Popen([*argv, "--emulate-bandwidth", a.bandwidth],
                                  env={**env, "RANK": str(r), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                       "MASTER_PORT": str(port)}) for r in (0, 1)]  # fmt: skip
        codes = [q.wait(timeout=600) for q in procs]
    else:
        with netns.Hosts(2, bandwidth=None if a.bandwidth in ("unlimited", "none") else a.bandwidth) as hosts:
            procs = [hosts.popen(r, argv, env={**env, "RANK": str(r), "WORLD_SIZE": "2",
                                               "MASTER_ADDR": hosts.addr(0), "MASTER_PORT": str(port)})
                     for r in (0, 1)]  # fmt: skip
            codes = [q.wait(timeout=600) for q in procs]
    if any(codes) or not tmp.exists():
        sys.exit(f"transport_probe: a stage failed (exit codes {codes})")
    ranks = json.loads(tmp.read_text())
    tmp.unlink()
    x = max(r["x_ms"] for r in ranks)
    T = a.compute_ms
    rows = []
    for i, row in enumerate(ranks[0]["rows"]):
        S = row["staleness"]
        bound = max(T, x, (2 * T + 2 * x) / (S + 1))
        step = max(r["rows"][i]["ms_per_step"] for r in ranks)
        rows.append({**row, "ms_per_step": step, "wait_ms_per_step": [r["rows"][i]["wait_ms_per_step"] for r in ranks],
                     "model_ms": bound, "measured_over_model": step / bound})  # fmt: skip
        print(
            f"S={S} ahead={row['ahead']!s:>4} (window {row['window']}): {step:6.1f} ms/step   "
            f"model {bound:6.1f} ms   ratio {step / bound:.2f}",
            flush=True,
        )
    result = {"machine": {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()},
              "hosts": "loopback (bandwidth emulated)" if a.loopback or why else "two network namespaces, tc tbf",
              "bandwidth": a.bandwidth, "compute_ms": T, "message_mib": a.message_mib, "steps": a.steps,
              "message_ms_measured": x, "elapsed_s": time.perf_counter() - t0, "quick": a.quick, "rows": rows,
              "date": time.strftime("%Y-%m-%d %H:%M")}  # fmt: skip
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
