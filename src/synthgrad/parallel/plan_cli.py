"""`synthgrad plan`: the cost model's predictions ([Note: cost model] in costmodel.py) as a table, JSON and a plot.

    synthgrad plan --from RUN_DIR [--stages 2,4,7] [--schedules 1f1b,stale,decoupled] [--link-delay-ms 20]
    synthgrad plan --stage-ms 60 --message-kb 4 --batch-size 256 --stages 2,4,8,16,32,64 --link-bandwidth 1gbit

The parser's arguments import nothing heavy (torch is imported when the command runs); bad values raise
ConfigError, which the CLI prints as one line (exit 2).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from synthgrad.errors import ConfigError

DEFAULT_STAGES = (2, 4, 8, 16, 32, 64)


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--from", dest="run", metavar="RUN_DIR", help="a finished `synthgrad parallel` run folder")
    source.add_argument(
        "--stage-ms",
        help="forward + backward + update of one batch per stage, ms: one number (every stage, every K: a model "
        "that grows with K) or one per stage (that K only)",
    )
    p.add_argument("--message-kb", type=float, help="bytes per example crossing each cut, kB (1000 bytes)")
    p.add_argument("--batch-size", type=int, help="examples per step (--stage-ms; default 256)")
    p.add_argument("--stages", help="K values, e.g. 2,4,8 (default: the run's K; --stage-ms: 2,4,8,16,32,64)")
    p.add_argument("--microbatches", type=int, help="per batch, flushed schedules (default: the run's or max(4, vK))")
    p.add_argument("--schedules", default="all", help="comma-separated, or all (default)")
    p.add_argument("--link-delay-ms", type=float, help="one-way delay per message (default: the run's, or 0)")
    p.add_argument("--link-bandwidth", help="1gbit, 100mbit, 25gbps (bytes/s), unlimited (default: the run's)")
    p.add_argument("--max-staleness", help="stale/decoupled bound S, or auto (default: the run's, or 2)")
    p.add_argument("--synth-ms", type=float, help="synthesizer per batch on each stage that has one (default 0)")
    p.add_argument("--overhead-ms", type=float, help="host work per step outside the stages (default: the run's, 0)")
    p.add_argument("--forward-fraction", type=float, default=1 / 3, help="forward share of a layer's work (1/3)")
    p.add_argument("--weight-fraction", type=float, default=0.5, help="weight-gradient share of the backward (0.5)")
    p.add_argument("--json", help="write the inputs and every row here")
    p.add_argument("--plot", help="PNG: predicted samples/s against K per schedule")


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"{flag} takes whole numbers separated by commas, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise ConfigError(f"{flag} takes numbers >= 1, got {text!r}")
    return values


def _ms_list(text: str) -> list[float]:
    try:
        values = [float(t) / 1e3 for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"--stage-ms takes milliseconds separated by commas, got {text!r}") from None
    if not values or any(not (math.isfinite(v) and v >= 0) for v in values):
        raise ConfigError(f"--stage-ms takes finite times >= 0, got {text!r}")
    return values


def _nonnegative(value: float | None, flag: str) -> None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{flag} must be a finite number >= 0, got {value}")


def _check_options(args: argparse.Namespace) -> tuple[list[str], int | str | None, float | None]:
    """The schedules, the staleness (None: the run's or the default) and the link bandwidth asked for; a
    ConfigError naming a bad value."""
    from synthgrad.parallel import costmodel
    from synthgrad.parallel.link import parse_bandwidth

    for flag in ("message_kb", "link_delay_ms", "synth_ms", "overhead_ms"):
        _nonnegative(getattr(args, flag), "--" + flag.replace("_", "-"))
    if args.microbatches is not None and args.microbatches < 1:
        raise ConfigError(f"--microbatches must be >= 1, got {args.microbatches}")
    schedules = list(costmodel.SCHEDULES) if args.schedules.strip() == "all" else [
        s.strip() for s in args.schedules.split(",") if s.strip()]  # fmt: skip
    unknown = [s for s in schedules if s not in costmodel.SCHEDULES]
    if unknown or not schedules:
        known = ", ".join(costmodel.SCHEDULES)
        raise ConfigError(f"unknown schedule(s) {', '.join(unknown) or '(none)'}; known: {known}")
    staleness: int | str | None = None
    if args.max_staleness is not None:
        staleness = args.max_staleness.strip()
        if staleness != "auto":
            try:
                staleness = int(staleness)
            except ValueError:
                got = args.max_staleness
                raise ConfigError(f"--max-staleness takes a whole number >= 0 or auto, got {got!r}") from None
            if staleness < 0:
                raise ConfigError(f"--max-staleness must be >= 0, got {staleness}")
    try:
        bandwidth = parse_bandwidth(args.link_bandwidth)
    except ValueError as e:
        raise ConfigError(f"--link-bandwidth: {e}") from None
    return schedules, staleness, bandwidth


def run_plan(args: argparse.Namespace) -> int:
    import dataclasses

    from synthgrad.parallel import costmodel, profiles
    from synthgrad.parallel.link import LinkSpec, link_label

    schedules, staleness, bandwidth = _check_options(args)
    knobs = {"forward_fraction": args.forward_fraction, "weight_fraction": args.weight_fraction}
    if args.synth_ms is not None:
        knobs["synth_s"] = args.synth_ms / 1e3
    if args.overhead_ms is not None:
        knobs["overhead_s"] = args.overhead_ms / 1e3
    notes: list[str] = []
    if args.run:
        base, info = profiles.profile_from_run(args.run)
        if args.message_kb is not None:
            base = dataclasses.replace(base, cut_bytes=(args.message_kb * 1e3,) * (base.layers - 1))
        base = dataclasses.replace(base, **knobs)
        stages = _ints(args.stages, "--stages") if args.stages else [info["stages"]]
        link = info["link"]
        microbatches = args.microbatches or info["microbatches"]
        staleness = staleness if staleness is not None else info["staleness"]
        notes += info["notes"]
        measured = info["measured_samples_per_s"]
        source = f"{info['run']} ({info['schedule']}, K={info['stages']}, measured {measured:.4g} samples/s)" if (
            measured) else info["run"]  # fmt: skip

        def profile_for(_: int):
            return base
    else:
        times = _ms_list(args.stage_ms)
        batch = args.batch_size or 256
        message = (args.message_kb or 0.0) * 1e3
        if len(times) > 1:
            stages = _ints(args.stages, "--stages") if args.stages else [len(times)]
            if stages != [len(times)]:
                raise ConfigError(f"--stage-ms gives {len(times)} stages: --stages must be {len(times)} (or omitted)")
        else:
            stages = _ints(args.stages, "--stages") if args.stages else list(DEFAULT_STAGES)
        link = LinkSpec()
        microbatches = args.microbatches
        staleness = staleness if staleness is not None else 2
        base = costmodel.Profile.uniform(times, message, batch, **knobs)  # checks the values
        source = f"--stage-ms {args.stage_ms} per stage, {message / 1e3:g} kB per example at a cut, batch {batch}"
        if args.message_kb is None:
            notes.append("no --message-kb: messages cost only the link's delay")

        def profile_for(K: int):
            return base if len(times) > 1 else costmodel.Profile.uniform(times * K, message, batch, **knobs)

    if args.link_delay_ms is not None or args.link_bandwidth is not None:
        delay = args.link_delay_ms / 1e3 if args.link_delay_ms is not None else link.delay_s
        link = LinkSpec(delay, bandwidth if args.link_bandwidth is not None else link.bandwidth_bps)
    rows = costmodel.plan(profile_for, stages, schedules, microbatches=microbatches, link=link, staleness=staleness)
    _print(rows, source, link_label(link), notes)
    if args.json:
        _write(args.json, lambda p: p.write_text(json.dumps({
            "source": source, "link": link_label(link), "notes": notes,
            "profile": profile_for(stages[0]).as_dict(), "rows": rows}, indent=2) + "\n"))  # fmt: skip
    if args.plot:
        _write(args.plot, lambda p: plot_rows(rows, p, f"cost model: {source}\nlink {link_label(link)}"))
    return 0


def _write(path: str, write) -> None:
    p = Path(path)
    try:
        if p.parent != Path(""):
            p.parent.mkdir(parents=True, exist_ok=True)
        write(p)
    except OSError as e:
        raise ConfigError(f"cannot write {path} ({e.strerror or e})") from None
    print(f"wrote {p}")


def _print(rows: list[dict[str, Any]], source: str, link: str, notes: list[str]) -> None:
    print(f"cost model from {source}; link {link}")
    for n in notes:
        print(f"  note: {n}")
    print(f"{'schedule':<17}{'K':>4}{'M':>5}{'step ms':>10}{'samples/s':>12}{'bubble':>9}  note")
    for r in rows:
        if "skipped" in r:
            print(f"{r['schedule']:<17}{r['stages']:>4}{'':>5}{'':>10}{'-':>12}{'':>9}  {r['skipped']}")
            continue
        print(f"{r['schedule']:<17}{r['stages']:>4}{r['microbatches']:>5}{r['step_s'] * 1e3:>10.3f}"
              f"{r['samples_per_s']:>12.1f}{r['bubble'] * 100:>8.1f}%  {r['note']}")  # fmt: skip


def plot_rows(rows: list[dict[str, Any]], path: str | Path, title: str) -> None:
    """Predicted samples/s against K, one line per schedule (single: a horizontal line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    ks = sorted({r["stages"] for r in rows if "skipped" not in r and r["schedule"] != "single"}) or [1]
    for i, schedule in enumerate(dict.fromkeys(r["schedule"] for r in rows)):
        got = [r for r in rows if r["schedule"] == schedule and "skipped" not in r]
        if not got:
            continue
        style = {"color": f"C{i % 10}", "label": schedule}
        if schedule == "single":
            ax.plot([ks[0], ks[-1]], [got[0]["samples_per_s"]] * 2, linestyle=":", **style)
        else:
            ax.plot([r["stages"] for r in got], [r["samples_per_s"] for r in got], marker="o", **style)
    ax.set(xlabel="K (ranks)", ylabel="predicted samples/s", xscale="log", yscale="log", title=title)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
