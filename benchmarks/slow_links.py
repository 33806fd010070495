"""Training over slow links: the decoupled pipeline, the best exact-gradient schedule and the stale pipeline at
one-way delays of 0-50 ms and bandwidths from unlimited to 100 Mbit/s, K = 2 stages on two separate hosts.

    python benchmarks/slow_links.py --data-dir DIR --json OUT [--plot OUT.png] [--delays 0,1,5,20,50]
        [--bandwidths unlimited,1gbit,100mbit] [--full-delays 0,20,50] [--full-bandwidths unlimited]
        [--epochs 3] [--target 97.5] [--exact model-parallel,gpipe,1f1b] [--loopback] [--quick]

Hosts: each stage runs in its own network namespace with its own address, the two joined by a veth pair
(synthgrad.parallel.netns), started by torchrun as two nodes exactly as the README's multi-machine recipe says;
bandwidth caps are real (tc tbf on both ends). The kernel has no netem, so the one-way delay is synthgrad's link
emulation (`--link-delay-ms`, [Note: link emulation] in parallel/link.py), applied to every point-to-point message
of every method (torch's pipeline schedules included). Without root (or with --loopback) both stages run on
127.0.0.1 and the bandwidth is emulated too (`--link-bandwidth`).

Runs. For each (bandwidth, delay): the decoupled pipeline (cDNI, `--max-staleness auto`), the stale pipeline
(`--schedule stale --max-staleness auto`) and the best exact-gradient schedule, chosen at that delay and bandwidth
from `--exact` by a short throughput probe of each (the one with most samples/s; all are exact, so their
numbers per step are the same up to micro-batching). Configurations in --full-delays × --full-bandwidths train
for --epochs with an evaluation every --eval-every steps (time to target measured); the others train for
--short-steps steps (throughput only). Because every method's numbers do not depend on timing (fixed staleness;
exact gradients), a method's test error after a given number of samples is the same at every delay and
bandwidth: for a short run, the time to target is projected as (training time the full run at delay 0 took to
reach the target) × (its samples/s ÷ this run's samples/s), and marked `projected`.

One run at a time; each process one torch thread (`--threads 1`), pinned to its own core (`--pin-cores`).
Output: JSON with every run (summary, per-stage timing, the derived staleness and its memory, load average
before and after) and the issue's figures; one plot of samples/s against delay per method and bandwidth.
`--quick` checks that everything runs (a tiny model, a few steps): no figure of it means anything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from synthgrad.parallel import netns  # noqa: E402

METHODS = {
    "decoupled": ["--method", "cdni", "--schedule", "decoupled", "--max-staleness", "auto"],
    "stale": ["--method", "backprop", "--schedule", "stale", "--max-staleness", "auto"],
    "exact": ["--method", "backprop"],  # + --schedule, chosen per configuration
}


def _load() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(argv: list[str], out: Path, *, bandwidth: str | None, loopback: bool, timeout_s: float) -> dict:
    """One 2-stage job: torchrun on two namespaced hosts (bandwidth by tbf), or the local launcher on loopback
    (bandwidth emulated). Returns its summary, or {"error": ...}."""
    env = netns.repo_env()
    t0, load0 = time.perf_counter(), _load()
    if loopback:
        extra = ["--link-bandwidth", bandwidth] if bandwidth else []
        cmd = [sys.executable, "-m", "synthgrad.cli", "parallel", "--stages", "2", *argv, *extra, "--out", str(out)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        codes, errs = [proc.returncode], [proc.stderr]
        command = "synthgrad " + " ".join(cmd[3:])
    else:
        with netns.Hosts(2, bandwidth=bandwidth) as hosts:
            port = _free_port()
            args = ["parallel", "--stages", "2", *argv, "--out", str(out)]
            nodes = [netns.torchrun(hosts, n, port, args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True) for n in (0, 1)]  # fmt: skip
            codes, errs = [], []
            deadline = time.monotonic() + timeout_s
            for node in nodes:
                try:
                    _, err = node.communicate(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    err = "timed out"
                codes.append(node.returncode)
                errs.append(err)
        command = f"torchrun ×2 (namespaces, tbf {bandwidth or 'none'}) -m synthgrad.cli " + " ".join(args)
    elapsed = time.perf_counter() - t0
    if any(c != 0 for c in codes) or not (out / "summary.json").exists():
        lines = [ln for e in errs for ln in e.splitlines() if ln.startswith("synthgrad") or "Error" in ln]
        return {"error": (lines or [f"exit codes {codes}"])[0][:300], "command": command}
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"command": command, "summary": summary, "curve": [(r["samples"], r["train_time_s"], r["test_error"])
            for r in rows], "wall_s": elapsed, "load": [load0, _load()]}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--plot", help="default: next to --json")
    p.add_argument("--delays", default="0,1,5,20,50", help="one-way delays, ms")
    p.add_argument("--bandwidths", default="unlimited,1gbit,100mbit")
    p.add_argument("--full-delays", default="0,20,50", help="delays trained to the end (time to target)")
    p.add_argument("--full-bandwidths", default="unlimited")
    p.add_argument("--methods", default="decoupled,stale,exact")
    p.add_argument("--exact", default="model-parallel,gpipe,1f1b", help="exact schedules to choose the best from")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--short-steps", type=int, default=80)
    p.add_argument("--probe-steps", type=int, default=40)
    p.add_argument("--target", type=float, default=97.5, help="test accuracy %%")
    p.add_argument("--eval-every", type=int, default=40)
    p.add_argument("--layers", type=int, default=7)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--loopback", action="store_true", help="both stages on 127.0.0.1 (no namespaces)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    p.add_argument("--keep", help="keep the run folders here")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    if a.quick:
        a.layers, a.width, a.batch_size, a.epochs, a.eval_every = 4, 64, 64, 1, 4
        a.short_steps, a.probe_steps, a.delays, a.full_delays, a.bandwidths = 8, 4, "0,20", "0,20", "unlimited,100mbit"
    delays = [float(d) for d in a.delays.split(",")]
    full_delays = {float(d) for d in a.full_delays.split(",") if d}
    bandwidths = [None if b in ("unlimited", "none") else b for b in a.bandwidths.split(",")]
    full_bw = {None if b in ("unlimited", "none") else b for b in a.full_bandwidths.split(",") if b}
    why = None if a.loopback else netns.unavailable()
    loopback = a.loopback or why is not None
    if why and not a.loopback:
        print(f"no namespaces ({why}): both stages on loopback, bandwidth emulated", flush=True)
    common = ["--data-dir", a.data_dir, "--layers", str(a.layers), "--width", str(a.width), "--batch-size",
              str(a.batch_size), "--threads", "1", "--pin-cores", "--no-progress", "--timeout", "120"]  # fmt: skip
    per_epoch = 60_000 // a.batch_size
    full_args = ["--epochs", str(a.epochs), "--eval-every", str(a.eval_every), "--target-accuracy", str(a.target)]

    def short_args(steps: int) -> list[str]:
        return ["--epochs", "1", "--train-limit", str(steps * a.batch_size)]

    tmp = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="synthgrad-slow-links-"))
    tmp.mkdir(parents=True, exist_ok=True)
    runs: list[dict] = []
    t_start = time.perf_counter()
    methods = a.methods.split(",")
    exact = a.exact.split(",")
    for bw in bandwidths:
        for d in delays:
            full = d in full_delays and bw in full_bw
            budget = full_args if full else short_args(a.short_steps)
            link = ["--link-delay-ms", str(d)]
            for method in methods:
                name = f"{method}-{bw or 'unlimited'}-{d:g}ms"
                args = [*METHODS[method], *common, *link]
                probes = {}
                if method == "exact":
                    for sched in exact if len(exact) > 1 else []:
                        probe = [*args, "--schedule", sched, *short_args(a.probe_steps)]
                        r = run_job(probe, tmp / f"{name}-probe-{sched}", bandwidth=bw, loopback=loopback,
                                    timeout_s=a.timeout)  # fmt: skip
                        probes[sched] = r["summary"]["samples_per_s"] if "summary" in r else None
                        print(f"  probe {sched:16s} {bw or 'unlimited':>9s} {d:4g} ms: {probes[sched] or 'failed'}",
                              flush=True)  # fmt: skip
                    ok = {s: v for s, v in probes.items() if v}
                    sched = max(ok, key=ok.get) if ok else exact[0]
                    args = [*args, "--schedule", sched]
                r = run_job([*args, *budget], tmp / name, bandwidth=bw, loopback=loopback, timeout_s=a.timeout)
                row = {"method": method, "delay_ms": d, "bandwidth": bw or "unlimited", "full": full, **r}
                if probes:
                    row["probes"] = probes
                if "summary" in r:
                    s = r["summary"]
                    row.update(schedule=s["schedule"], samples_per_s=s["samples_per_s"], final_error=s["test_error"],
                               time_to_target_s=s["time_to_target_s"] if full else None,
                               staleness=s.get("max_staleness"))  # fmt: skip
                    print(f"{name:32s} {s['schedule']:15s} {s['samples_per_s']:8.0f} samples/s  "
                          f"S={s.get('max_staleness')}  ttt {row['time_to_target_s']}  err {s['test_error']:.2f}%  "
                          f"load {r['load']}", flush=True)  # fmt: skip
                else:
                    print(f"{name:32s} FAILED: {r['error']}", flush=True)
                runs.append(row)
                _write(a, runs, loopback, why, t_start, per_epoch)
    _write(a, runs, loopback, why, t_start, per_epoch)
    if not a.keep:
        shutil.rmtree(tmp, ignore_errors=True)


def _project(runs: list[dict]) -> None:
    """Time to target of short runs, projected from the method's full run at the same bandwidth and delay 0 (or
    any full run of the method): the numbers are the same, only the speed differs (module doc)."""
    for r in runs:
        if r.get("full") or "samples_per_s" not in r:
            continue
        ref = [f for f in runs if f["method"] == r["method"] and f.get("full") and f.get("time_to_target_s")]
        ref.sort(key=lambda f: (f["bandwidth"] != r["bandwidth"], f["delay_ms"]))
        if ref:
            f = ref[0]
            r["time_to_target_s"] = f["time_to_target_s"] * f["samples_per_s"] / r["samples_per_s"]
            r["time_to_target_projected_from"] = f"{f['bandwidth']} {f['delay_ms']:g} ms"


def figures(runs: list[dict]) -> dict:
    def get(method: str, d: float, bw: str = "unlimited") -> dict | None:
        return next((r for r in runs if r["method"] == method and r["delay_ms"] == d and r["bandwidth"] == bw
                     and "samples_per_s" in r), None)  # fmt: skip

    out: dict = {}
    d0, d20, e20 = get("decoupled", 0), get("decoupled", 20), get("exact", 20)
    if d0 and d20:
        out["decoupled_20ms_over_0ms_samples_per_s"] = d20["samples_per_s"] / d0["samples_per_s"]
        if d0.get("time_to_target_s") and d20.get("time_to_target_s"):
            out["decoupled_20ms_over_0ms_time_to_target"] = d20["time_to_target_s"] / d0["time_to_target_s"]
        out["decoupled_20ms_minus_0ms_final_error_points"] = d20["final_error"] - d0["final_error"]
    if d20 and e20 and d20.get("time_to_target_s") and e20.get("time_to_target_s"):
        out["decoupled_over_best_exact_time_to_target_at_20ms"] = d20["time_to_target_s"] / e20["time_to_target_s"]
        out["best_exact_at_20ms"] = e20.get("schedule")
    return out


def _write(a, runs: list[dict], loopback: bool, why: str | None, t_start: float, per_epoch: int) -> None:
    _project(runs)
    result = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "hosts": "loopback (emulated bandwidth)" if loopback else "2 network namespaces, veth pair, tc tbf",
        "no_namespaces_because": why,
        "config": {k: v for k, v in vars(a).items() if k not in ("json", "plot", "keep")},
        "steps_per_epoch": per_epoch,
        "elapsed_s": time.perf_counter() - t_start,
        "figures": figures(runs),
        "runs": runs,
    }
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(result, indent=1, default=str))
    plot(runs, Path(a.plot) if a.plot else Path(a.json).with_suffix(".png"))


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    colours = {"decoupled": "C0", "exact": "C3", "stale": "C2"}
    styles = {"unlimited": "-", "1gbit": "--", "100mbit": ":"}
    for method in colours:
        for bw in dict.fromkeys(r["bandwidth"] for r in runs):
            pts = sorted((r["delay_ms"], r["samples_per_s"]) for r in runs
                         if r["method"] == method and r["bandwidth"] == bw and "samples_per_s" in r)  # fmt: skip
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", color=colours[method], ls=styles.get(bw, "-."),
                        label=f"{method} ({bw})")  # fmt: skip
    ax.set(xlabel="one-way link delay (ms)", ylabel="samples/s", title="K = 2 stages on two hosts: throughput vs delay")
    ax.set_xscale("symlog", linthresh=1)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
