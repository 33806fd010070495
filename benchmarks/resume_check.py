"""Kill runs with SIGKILL at random points, resume them, and check they end exactly where an uninterrupted run does.

    python benchmarks/resume_check.py --data-dir ../shared/data [--kills 10] [--cases train-dni,parallel-cdni]
                                      [--seed 0] [--json OUT] [--out runs/resume_check]
    python benchmarks/resume_check.py --guard-cost [--threads 1]

For each case (on MNIST's first 4,096 training and 1,000 test examples, and PTB): one uninterrupted run, the
reference; then, `--kills` times, the same command in a fresh folder, killed with SIGKILL (its whole process group:
the launcher and every stage of `synthgrad parallel` at once, as a crash or a power cut would) at a random moment
between its first checkpoint and the time the reference wrote its last, then resumed with `--resume` until it
finishes. A resumed run is identical when its summary and metric rows (less wall-clock fields) and every tensor of
its last checkpoint (weights, optimizer states, synthesizers, generators, folded batches in flight) equal the
reference's bit for bit. Prints one line per case, "case: identical k/N", with the checkpoint each kill fell after.

`--guard-cost` measures what the per-step divergence check costs ([Note: divergence] in training/loop.py): the
time per training step of the default MNIST FCN (4 layers of 256, batch 256) with the check and without, in
interleaved rounds, median over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
QUIET = ["--threads", "1", "--no-progress"]
FF = ["--layers", "4", "--width", "64", "--batch-size", "64", "--epochs", "4", "--seed", "0"]  # 4,096 examples
CASES: dict[str, list[str]] = {
    "train-backprop": ["train", "--method", "backprop", *FF],
    "train-dni": ["train", "--method", "dni", *FF],  # the default recipe: folds every 3rd batch's true gradient in
    "train-cdni": ["train", "--method", "cdni", *FF],
    "train-dni-p0.5": ["train", "--method", "dni", "--update-prob", "0.5", *FF],  # update decoupling
    "train-cdni-unlock": ["train", "--method", "cdni", "--unlock", "full", *FF],  # complete unlock
    "parallel-dni": ["parallel", "--stages", "2", "--method", "dni", *FF],
    "parallel-cdni": ["parallel", "--stages", "2", "--method", "cdni", *FF],
    "copy-dni": [
        "train",
        "--task",
        "copy",
        "--method",
        "dni",
        "--T",
        "3",
        "--hidden-size",
        "32",
        "--batch-size",
        "16",
        "--max-samples",
        "4800",
        "--log-every",
        "800",
        "--seed",
        "0",
    ],  # fmt: skip
    "ptb-dni": [
        "train",
        "--task",
        "ptb-char",
        "--method",
        "dni",
        "--T",
        "8",
        "--hidden-size",
        "32",
        "--batch-size",
        "16",
        "--max-samples",
        "48000",
        "--log-every",
        "8000",
        "--eval-chars",
        "2000",
        "--seed",
        "0",
    ],  # fmt: skip
}
TIMING = ("time", "samples_per_s", "peak_rss", "per_stage", "threads", "compute_fraction", "wait_s", "comm_s")


def command(case: str, data_dir: str, out: Path) -> list[str]:
    args = CASES[case]
    data = [] if "--task" in args and "copy" in args else ["--data-dir", data_dir]
    return [sys.executable, "-m", "synthgrad.cli", *args, *data, *QUIET, "--out", str(out)]


def small_data(source: Path, target: Path, train: int = 4096, test: int = 1000) -> Path:
    """The first `train` / `test` MNIST examples, and the PTB character files, under `target`: every run of the check
    starts a process, and reading all of MNIST would be most of its time."""
    import numpy as np

    from synthgrad.data import load_mnist, write_idx

    if not (target / "mnist" / "t10k-labels-idx1-ubyte").exists():
        ds = load_mnist(source)
        (target / "mnist").mkdir(parents=True, exist_ok=True)
        for prefix, x, y, n in (("train", ds.train_images, ds.train_labels, train),
                                ("t10k", ds.test_images, ds.test_labels, test)):  # fmt: skip
            pixels = (x[:n, 0] * 255).round().to(torch.uint8).numpy()  # exactly the file's bytes back
            write_idx(target / "mnist" / f"{prefix}-images-idx3-ubyte", pixels)
            write_idx(target / "mnist" / f"{prefix}-labels-idx1-ubyte", y[:n].numpy().astype(np.uint8))
    ptb = source / "ptb" if (source / "ptb").is_dir() else source
    (target / "ptb").mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        if (ptb / f"ptb.char.{split}.txt").exists() and not (target / "ptb" / f"ptb.char.{split}.txt").exists():
            shutil.copy(ptb / f"ptb.char.{split}.txt", target / "ptb" / f"ptb.char.{split}.txt")
    return target


def run(cmd: list[str], timeout: float = 900) -> float:
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[3:])} exited {r.returncode}:\n{r.stderr[-2000:]}")
    return time.monotonic() - t0


def killed_run(cmd: list[str], out: Path, after: int, delay: float) -> int | None:
    """Start `cmd`, wait for its checkpoint number `after`, SIGKILL its process group `delay` seconds later; the
    number of the checkpoint it had completed then, or None if it finished first."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while _count(out) < after:
            if proc.poll() is not None:
                if proc.returncode == 0:
                    return None
                raise RuntimeError(f"exited {proc.returncode}:\n{proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no checkpoint {after} in 600 s")
            time.sleep(0.002)
        time.sleep(delay)
        if proc.poll() is not None:
            return None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stderr.close()
    return _count(out)


def _count(out: Path) -> int:
    """The number of the last complete checkpoint in the run folder `out` (0: none yet)."""
    try:
        return json.loads((out / "checkpoint.json").read_text())["count"]
    except (OSError, ValueError, KeyError):
        return 0


def without_timing(obj):
    if isinstance(obj, dict):
        return {k: without_timing(v) for k, v in obj.items() if not any(t in k for t in TIMING)}
    if isinstance(obj, list):
        return [without_timing(v) for v in obj]
    return obj


def final_state(out: Path) -> list:
    from synthgrad.checkpoint import load_checkpoint

    manifest = json.loads((out / "checkpoint.json").read_text())
    return [load_checkpoint(out / name)["state"] for name in manifest["files"]]


def equal(a, b) -> bool:
    """Bitwise equality of nested containers of tensors and plain values (NaN equal to NaN)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return a == b


def outcome(out: Path) -> tuple[dict, list, list]:
    summary = without_timing(json.loads((out / "summary.json").read_text()))
    rows = [without_timing(json.loads(line)) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return summary, rows, final_state(out)


def check_case(case: str, data_dir: str, root: Path, kills: int, rng: random.Random) -> dict:
    ref = root / case / "reference"
    shutil.rmtree(root / case, ignore_errors=True)
    t0, seen = time.monotonic(), {}  # checkpoint count -> seconds after the start when it appeared
    proc = subprocess.Popen(command(case, data_dir, ref), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    while proc.poll() is None:
        seen.setdefault(_count(ref), time.monotonic() - t0)
        time.sleep(0.002)
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{case} reference exited {proc.returncode}:\n{err.decode()[-2000:]}")
    total_s = time.monotonic() - t0
    # A kill point: after a checkpoint drawn from all but the last, a delay drawn up to the time between two
    # checkpoints of the reference (so most kills land while it trains, at any step of the next interval).
    seen.pop(0, None)
    last = max(seen)
    interval = statistics.median([seen[c + 1] - seen[c] for c in range(1, last) if c in seen and c + 1 in seen] or [1])
    want = outcome(ref)
    results = []
    for k in range(kills):
        out = root / case / f"kill{k}"
        cmd = command(case, data_dir, out)
        after = None
        while after is None:  # a kill that came after the run finished is drawn again
            shutil.rmtree(out, ignore_errors=True)
            after = killed_run(cmd, out, rng.randint(1, max(1, last - 1)), rng.uniform(0, interval))
        run([*cmd, "--resume"])
        got = outcome(out)
        same = got[0] == want[0] and got[1] == want[1] and equal(got[2], want[2])
        results.append({"killed_after_checkpoint": after, "identical": same})
        shutil.rmtree(out)
    identical = sum(r["identical"] for r in results)
    return {"case": case, "identical": identical, "kills": kills, "runs": results, "reference_s": total_s}


def guard_cost(threads: int, rounds: int = 7, steps: int = 40) -> dict:
    """Time per step of the default MNIST FCN with and without the per-step state check, interleaved rounds."""
    from synthgrad.config import Method, TrainConfig
    from synthgrad.data import ImageDataset
    from synthgrad.training import ChainJob, build_network, classification
    from synthgrad.training.loop import DivergenceGuard

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    n = 256 * steps
    ds = ImageDataset(torch.rand(n, 1, 28, 28, generator=gen), torch.randint(0, 10, (n,), generator=gen),
                      torch.rand(10, 1, 28, 28), torch.zeros(10, dtype=torch.long))  # fmt: skip
    out = {}
    for method in (Method.BACKPROP, Method.DNI, Method.CDNI):
        cfg = TrainConfig(method=method).validate().resolve()
        job = ChainJob(build_network(cfg, ds.input_shape, 10), classification(ds, n, method is Method.CDNI))
        guard = DivergenceGuard(job)
        batches = torch.arange(n).view(steps, 256)
        for b in batches[:5]:  # warm up, and let Adam create its states
            guard.problem(job.step(b), 2.3)
        times: dict[str, list[float]] = {"without": [], "with": []}
        for _ in range(rounds):
            for mode in ("without", "with"):
                t0 = time.perf_counter()
                for b in batches:
                    loss = job.step(b)
                    if mode == "with":
                        guard.problem(loss, 2.3)
                times[mode].append((time.perf_counter() - t0) / steps)
        without, with_ = statistics.median(times["without"]), statistics.median(times["with"])
        out[method.value] = {"step_ms": 1e3 * without, "with_check_ms": 1e3 * with_, "overhead": with_ / without - 1}
        print(f"{method.value:9s} {1e3 * without:6.2f} ms/step, with the check {1e3 * with_:6.2f} ms "
              f"({100 * (with_ / without - 1):+.1f} %)")  # fmt: skip
    return out


ENV = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data-dir",
        help="MNIST and PTB (default: the lookup of synthgrad.data.resolve_data_dir); the "
        "check reads its first 4,096 / 1,000 MNIST examples, copied under --out",
    )
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--cases", help=f"comma-separated, of: {', '.join(CASES)} (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seeds the kill points")
    p.add_argument("--out", default="runs/resume_check")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--guard-cost", action="store_true", help="measure the per-step divergence check instead")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if args.guard_cost:
        result = {"guard_cost": guard_cost(args.threads), "threads": args.threads}
    else:
        from synthgrad.data import resolve_data_dir

        data_dir = str(small_data(resolve_data_dir(args.data_dir), Path(args.out) / "data"))
        cases = args.cases.split(",") if args.cases else list(CASES)
        unknown = [c for c in cases if c not in CASES]
        if unknown:
            p.error(f"unknown case(s) {', '.join(unknown)}")
        rng, rows = random.Random(args.seed), []
        for case in cases:
            row = check_case(case, data_dir, Path(args.out), args.kills, rng)
            after = ", ".join(str(r["killed_after_checkpoint"]) for r in row["runs"])
            print(f"{case}: identical {row['identical']}/{row['kills']} (killed after checkpoint {after}; "
                  f"reference {row['reference_s']:.0f} s)", flush=True)  # fmt: skip
            rows.append(row)
        result = {"cases": rows, "kills": args.kills, "seed": args.seed}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
