"""The `synthgrad` command. It only parses arguments into configs and calls the library.

User errors (bad values, bad files, an occupied output directory) end in one line on stderr and exit code 2;
a diverged run exits 3; Ctrl-C exits 130 with the checkpoint intact.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import logging
import math
import os
import re
import sys
from collections.abc import Sequence

from synthgrad.errors import ConfigError, SynthgradError

# `SynthesizerKind`'s values, spelled out so that `synthgrad --help` does not import torch (a test keeps them equal).
SYNTHESIZER_KINDS = ["linear", "lowrank", "mlp", "conv", "zero", "token-linear", "token-lowrank", "token-mlp"]
EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (no usage block) and exits 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"synthgrad: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _real(text: str) -> float:
    """A number that is not NaN or infinite (ranges are checked by the config's `validate`)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return v


def _positive_float(text: str) -> float:
    v = _real(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def _seed(text: str) -> int:
    """A seed torch and the batch order can use (seed × 100,003 + epoch must stay a 64-bit integer)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if not 0 <= v < 2**32:
        raise argparse.ArgumentTypeError(f"must be in 0..{2**32 - 1}, got {v}")
    return v


def _staleness(text: str) -> int | str:
    """--max-staleness: a whole number, or 'auto'."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0 or auto, got {text!r}") from None


def _int_tuple(text: str) -> tuple[int, ...]:
    """'1024,1024' -> (1024, 1024); '' or 'none' -> ()."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be whole numbers separated by commas, got {text!r}") from None


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Every `TrainConfig` field as an option. Defaults are None so that only given options override."""
    g = p.add_argument_group("data")
    g.add_argument("--config", help="a TOML experiment file, or the name of a shipped one (synthgrad configs)")
    g.add_argument("--dataset", choices=["mnist", "cifar10", "ptb-char", "ptb-word"], help="ptb-*: with --model gpt")
    g.add_argument("--data-dir", help="directory with the data files (default: $SYNTHGRAD_DATA_DIR)")
    g.add_argument("--download", action="store_true", default=None, help="download missing files (verified)")
    g.add_argument("--train-limit", type=_positive_int, help="use only the first N training examples")
    g = p.add_argument_group("model and method")
    g.add_argument("--model", choices=["fcn", "cnn", "gpt"], help="gpt: a decoder-only transformer on ptb-char/word")
    g.add_argument("--layers", type=int, help="N layers = N-1 hidden layers + the output layer")
    g.add_argument("--width", type=_positive_int, help="FCN units / CNN filters per layer")
    g.add_argument(
        "--method",
        choices=["backprop", "dni", "cdni", "bptt", "dni-aux"],
        help="feed-forward: backprop, dni or cdni; recurrent (with --task): bptt, dni or dni-aux",
    )
    g.add_argument("--synthesizer", choices=SYNTHESIZER_KINDS, help="default: per method (zero: an ablation)")
    g.add_argument("--synthesizer-hidden", type=_int_tuple, help="hidden widths, e.g. 1024,1024 (lowrank: the rank)")
    g.add_argument("--update-prob", type=_real, help="update decoupling: each module updates with probability P")
    g.add_argument("--unlock", choices=["full"], help="complete unlock: synthetic inputs and gradients")
    g.add_argument("--fold-every", type=int, help="fold in the true gradient of every K-th batch (0: never)")
    g.add_argument("--modules", type=int, help="decoupled modules in process (default: every layer; gpt: 2)")
    g = p.add_argument_group("language model (--model gpt)")
    g.add_argument("--context", type=int, help="T, tokens per window (default 64)")
    g.add_argument("--heads", type=int, help="attention heads (default 4; must divide --width)")
    g.add_argument("--positions", choices=["learned", "rotary"], help="position encoding (default learned)")
    g.add_argument("--max-tokens", type=int, help="budget in training tokens (default: 6M unless --max-minutes)")
    g.add_argument("--eval-tokens", type=int, help="training tokens between evaluations (default: 1/5 of the budget)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=_real)
    g.add_argument("--synthesizer-lr", type=_real)
    g.add_argument("--seed", type=_seed)
    g = p.add_argument_group("running")
    g.add_argument("--device", help="cpu, cuda or cuda:N")
    g.add_argument("--threads", type=_positive_int, help="torch intra-op threads (default: all cores)")
    g.add_argument("--diagnose-every", type=int, help="steps between synthetic-vs-true gradient checks (0: off)")
    g.add_argument("--out", help="output directory (default runs/train)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


# Options of recurrent training (`--task`): (flag, type or list of choices, help). The CLI only parses them into
# RecurrentConfig.
_RECURRENT_TASKS = ["copy", "repeat-copy", "ptb-char", "multinet"]
_RECURRENT_OPTIONS = [
    ("--task", _RECURRENT_TASKS, "recurrent task (PAPER.md §4-5)"),
    ("--T", int, "chunk length of truncated BPTT (multinet: B's tick period); default per task"),
    ("--hidden-size", int, "LSTM units; default per task"),
    ("--forget-bias", _real, "copy tasks, ptb-char: added to the LSTM's forget-gate bias at init (default 0)"),
    ("--max-samples", int, "budget: sequences (copy), characters (ptb-char) or digits read (multinet)"),
    (
        "--max-minutes",
        _real,
        "budget in minutes: recurrent tasks wall-clock (--resume continues the remaining time); other runs "
        "training time, evaluation excluded",
    ),
    ("--aux-weight", _real, "weight of the DNI + Aux auxiliary loss; default per task (copy tasks 0.1, else 1)"),
    ("--discount", _real, "dni, dni-aux: λ on the synthetic gradient, in (0, 1] ([Note: discount]); default per task"),
    (
        "--synthesizer-target",
        ["bootstrap", "true"],
        "dni, dni-aux on copy tasks: what M regresses onto; true: the exact future gradient, discounted by "
        "--discount (1: full BPTT's), a diagnostic",
    ),
    (
        "--trace-decay",
        _real,
        "dni, dni-aux on copy tasks: μ in [0, 1]; above 0, M regresses once per sequence onto the λ-return "
        "through the core's trace Jacobian ([Note: synthesizer traces]); 0: the paper's bootstrap; default 1",
    ),
    ("--log-every", int, "samples between metric rows and checkpoints (ptb-char: validations)"),
    ("--curriculum-threshold", _real, "copy tasks: bits wrong per sequence below which the length grows"),
    ("--curriculum-window", int, "copy tasks: batches averaged by the curriculum"),
    ("--max-repeats", int, "repeat-copy: the most repeats N (10)"),
    (
        "--repeat-curriculum",
        ["both", "length"],
        "repeat-copy: both: L and N grow in turn, score N·L (default); length: L grows, N uniform on "
        "1..max-repeats, score L",
    ),
    ("--patience", int, "ptb-char: validations without improvement before early stopping"),
    ("--eval-chars", int, "ptb-char: score only the first N validation/test characters"),
    ("--target-accuracy", _real, "multinet: B's moving accuracy for steps_to_target (0..1)"),
    ("--accuracy-window", int, "multinet: episodes in that moving accuracy"),
]


def add_recurrent_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("recurrent training (with --task)")
    for flag, kind, text in _RECURRENT_OPTIONS:
        extra = {"choices": kind} if isinstance(kind, list) else {"type": kind}
        g.add_argument(flag, help=text, **extra)


def config_from_args(args: argparse.Namespace):
    """TrainConfig from defaults <- config file <- command-line options."""
    import dataclasses

    from synthgrad.config import TrainConfig, from_dict, load_config_file

    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = _experiment_file(load_config_file, args.config) if args.config else {}
    overrides = {k: v for k, v in vars(args).items() if v is not None and k in train_fields}
    return from_dict({**values, **overrides}).validate()


def _experiment_file(load, name: str) -> dict:
    """`load(name)`: a TOML experiment file, where one that is not text or cannot be read is a one-line error."""
    try:
        return load(name)
    except UnicodeDecodeError as e:
        raise ConfigError(f"config {name!r} is not a TOML text file (byte {e.start} is not UTF-8)") from None
    except OSError as e:
        raise ConfigError(f"config {name!r} is unreadable ({e.strerror}): name a TOML file") from None


def _cmd_train(args: argparse.Namespace) -> int:
    from synthgrad.training import train

    if args.task is not None or (args.config and _recurrent_experiment(args.config)):
        return _cmd_train_recurrent(args)
    import dataclasses

    from synthgrad.config import TrainConfig

    shared = {f.name for f in dataclasses.fields(TrainConfig)}  # --max-minutes: a budget of both
    for flag, _, _ in _RECURRENT_OPTIONS:
        name = flag.removeprefix("--").replace("-", "_")
        if name not in shared and getattr(args, name) is not None:
            raise ConfigError(f"{flag} is an option of recurrent training: add --task")
    cfg = config_from_args(args)
    summary = train(cfg, resume=args.resume, progress=False if args.no_progress else None)
    if cfg.model == "gpt":
        print(f"{_lm_result(summary)} ({summary['wall_time_s']:.1f}s); results in {cfg.out}")
        return 0
    print(
        f"{summary['method']}: test error {summary['test_error']:.2f}% after {summary['epochs']} epochs "
        f"({summary['wall_time_s']:.1f}s); results in {cfg.out}"
    )
    return 0


def _lm_result(s: dict) -> str:
    """A language model run's result in a few words."""
    if "valid_bpc" in s:
        score = f"valid {s['valid_bpc']:.3f}, test {s['test_bpc']:.3f} bits/char"
    else:
        score = f"valid {s['valid_ppl']:.1f}, test {s['test_ppl']:.1f} perplexity per word"
    return f"{s['method']}: {score} after {s['tokens']:,} tokens"


def _cmd_sample(args: argparse.Namespace) -> int:
    from synthgrad.training.lm import sample_run

    print(sample_run(args.out, args.prompt, tokens=args.tokens, temperature=args.temperature, seed=args.seed))
    return 0


def _recurrent_experiment(name: str) -> bool:
    """Whether `--config NAME` names a recurrent experiment file (a shipped one, or a file with a `task` key)."""
    from synthgrad.config import load_config_file
    from synthgrad.recurrent.task_config import experiment_names

    if name.removeprefix("recurrent/").removesuffix(".toml") in experiment_names():
        return True
    return os.path.isfile(name) and "task" in _experiment_file(load_config_file, name)


def _cmd_train_recurrent(args: argparse.Namespace) -> int:
    from synthgrad.recurrent.runner import train_recurrent
    from synthgrad.recurrent.task_config import RecurrentConfig, load_experiment

    not_config = {"command", "func", "argv", "resume", "no_progress", "config"}
    values = _experiment_file(load_experiment, args.config) if args.config else {}  # the file, then the options
    values |= {k: v for k, v in vars(args).items() if v is not None and k not in not_config}
    cfg = RecurrentConfig.from_dict(values)
    s = train_recurrent(cfg, resume=args.resume, progress=False if args.no_progress else None)
    if "final_repeats" in s:  # Repeat Copy's two-axis curriculum
        result = f"max N·L {s['max_length']} (now at L={s['final_length']}, N={s['final_repeats']})"
    elif "max_length" in s:
        result = f"max length {s['max_length']}"
    elif "test_bpc" in s:
        result = f"test {s['test_bpc']:.3f} bits/char (best valid {s['valid_bpc']:.3f})"
    else:
        reached = s["steps_to_target"]
        result = f"{s['target_accuracy']:.0%} accuracy " + (f"after {reached} A-steps" if reached else "not reached")
    print(f"{s['task']} {s['method']} T={s['T']}: {result}, {s['samples']} samples ({s['wall_time_s']:.1f}s); "
          f"results in {cfg.out}")  # fmt: skip
    return 0


def _cmd_parallel(args: argparse.Namespace) -> int:
    import dataclasses

    from synthgrad.config import Method, ParallelConfig, ScheduleKind
    from synthgrad.parallel.runtime import env_rank_world

    cfg = config_from_args(args)
    if args.target_accuracy is not None and args.target_bpc is not None:
        raise ConfigError("--target-accuracy (images) and --target-bpc (gpt on ptb-char): give one")
    schedule = args.schedule or ("model-parallel" if cfg.method is Method.BACKPROP else "decoupled")
    pcfg = ParallelConfig(
        train=cfg,
        stages=args.stages,
        schedule=ScheduleKind(schedule),
        max_staleness=2 if args.max_staleness == "auto" else args.max_staleness,
        staleness_auto=args.max_staleness == "auto",
        link_delay_ms=args.link_delay_ms,
        link_bandwidth=args.link_bandwidth,
        microbatches=args.microbatches,
        eval_every=args.eval_every,
        target_error=args.target_bpc if args.target_accuracy is None else 100.0 - args.target_accuracy,
        stop_at_target=args.stop_at_target,
        master_addr=args.master_addr,
        master_port=args.master_port,
        timeout_s=args.timeout,
        pin_cores=args.pin_cores,
    )
    if pcfg.schedule is ScheduleKind.SINGLE:
        pcfg = dataclasses.replace(pcfg, stages=1)
    pcfg = pcfg.validate().resolve()
    if env_rank_world() is None:  # the launcher: start one process per stage on this machine
        from synthgrad.parallel.launch import launch_local

        return launch_local(args.argv, pcfg.stages, pcfg.master_addr, pcfg.master_port)
    from synthgrad.parallel.worker import run_worker

    faulthandler.enable()  # a stage killed by a signal (a crash in C++) prints its Python stack first
    result = run_worker(pcfg, resume=args.resume, progress=False if args.no_progress else None)
    if os.environ["RANK"] == "0" and cfg.model == "gpt":
        print(f"{pcfg.schedule.value} ({_lm_result(result)}, {pcfg.stages} stages); results in {cfg.out}")
    elif os.environ["RANK"] == "0":
        sps = result.get("samples_per_s")
        print(
            f"{pcfg.schedule.value} ({cfg.method.value}, {pcfg.stages} stages): test error "
            f"{result['test_error']:.2f}%, {sps or 0:.0f} samples/s; results in {cfg.out}"
        )
    return 0


def _cmd_configs(args: argparse.Namespace) -> int:
    from synthgrad.config import load_config_file, named_configs

    for name in named_configs():
        about = load_config_file(name)
        print(f"{name:28s} {about.get('method', ''):9s} {about.get('model', '')} {about.get('layers', '')} layers")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from synthgrad.config import TrainConfig
    from synthgrad.experiments.demo import demo
    from synthgrad.experiments.feedforward_report import METHODS

    for method in METHODS:  # every run's values, before the first run trains
        TrainConfig(method=method, layers=args.layers, epochs=args.epochs).validate()
    demo(
        data_dir=args.data_dir,
        out=args.out,
        epochs=args.epochs,
        layers=args.layers,
        download=args.download,
        progress=False if args.no_progress else None,
    )
    return 0


def _groups(text: str | None, known: Sequence[str]) -> list[str] | None:
    """`--groups a,b` as a list (None: every group); an unknown name is a user error."""
    if not text:
        return None
    groups = [g.strip() for g in text.split(",") if g.strip()]
    unknown = sorted(set(groups) - set(known))
    if unknown:
        raise ConfigError(f"unknown group(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return groups


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from synthgrad.experiments.feedforward_suite import FEEDFORWARD_GROUPS, reproduce_feedforward

    if args.suite == "recurrent":
        from synthgrad.experiments.recurrent_suite import RECURRENT_GROUPS, reproduce_recurrent

        reproduce_recurrent(
            data_dir=args.data_dir,
            out=args.out or "runs/reproduce-recurrent",
            minutes=args.minutes_per_run,
            samples=args.samples_per_run,
            quick=args.quick,
            threads=args.threads,
            progress=not args.no_progress,
            groups=_groups(args.groups, RECURRENT_GROUPS),
        )
        return 0
    reproduce_feedforward(
        data_dir=args.data_dir,
        out=args.out or "runs/reproduce",
        epochs=args.epochs,
        seeds=args.seeds,
        quick=args.quick,
        progress=not args.no_progress,
        groups=_groups(args.groups, FEEDFORWARD_GROUPS),
        threads=args.threads,
        report_only=args.report_only,
    )
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from synthgrad.parallel.plan_cli import run_plan

    return run_plan(args)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="synthgrad", description="Decoupled Neural Interfaces with synthetic gradients")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train one model (backprop, DNI or cDNI; recurrent with --task)")
    add_train_arguments(p)
    add_recurrent_arguments(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("demo", help="MNIST FCN with backprop, DNI and cDNI on a short budget, side by side")
    p.add_argument("--data-dir")
    p.add_argument("--download", action="store_true", help="fetch missing MNIST files (checksums verified)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--epochs", type=_positive_int, default=3)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("reproduce", help="run a paper experiment suite and write a report beside the paper's")
    p.add_argument("suite", choices=["feedforward", "recurrent"])
    p.add_argument("--data-dir")
    p.add_argument("--out", help="default runs/reproduce (feedforward), runs/reproduce-recurrent (recurrent)")
    p.add_argument("--epochs", type=_positive_int, default=10)
    p.add_argument("--seeds", type=_positive_int, default=1, help="seeds per row (mean is reported)")
    p.add_argument("--quick", action="store_true", help="a smoke-sized run of every row (tiny budget)")
    p.add_argument(
        "--minutes-per-run",
        type=_positive_float,
        help="recurrent: wall-time budget of every row (default: each task's budget in the committed report, "
        "reports/recurrent; README)",
    )
    p.add_argument("--samples-per-run", type=_positive_int, help="recurrent: a budget in samples for every row instead")
    p.add_argument("--threads", type=_positive_int, help="torch threads per run (default: all cores)")
    p.add_argument("--report-only", action="store_true", help="feedforward: write the report from finished runs only")
    p.add_argument(
        "--groups",
        help="only these groups of rows; feedforward: fcn, paper, update_prob, unlock, cnn; recurrent: copy, "
        "repeat-copy, ptb-char, multinet (the other rows are kept from OUT/report.json)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_reproduce)

    p = sub.add_parser(
        "parallel",
        help="train with one process per stage (this machine, or any under torchrun)",
        description="Decoupled stages in separate processes on torch.distributed (gloo on CPU, NCCL on GPUs). "
        "Without torchrun it starts --stages processes here; under torchrun each process runs one stage.",
    )
    add_train_arguments(p)
    g = p.add_argument_group("parallel")
    g.add_argument("--stages", type=_positive_int, default=2, help="K processes, one block of layers each")
    g.add_argument(
        "--schedule",
        choices=[
            "decoupled",
            "model-parallel",
            "stale",
            "gpipe",
            "1f1b",
            "interleaved-1f1b",
            "looped-bfs",
            "zero-bubble",
            "zbv",
            "dualpipev",
            "ddp",
            "single",
        ],  # fmt: skip
        help="decoupled (DNI/cDNI); with --method backprop: model-parallel, ddp, single, or a torch pipeline "
        "schedule (gpipe, 1f1b: one stage per rank; interleaved-1f1b, looped-bfs, zero-bubble: 2 virtual stages "
        "per rank in a loop; zbv, dualpipev: 2 per rank in a V)",
    )
    g.add_argument(
        "--max-staleness",
        type=_staleness,
        default=2,
        help="synthesizer targets at most S steps late (0: lockstep); auto: derived from the measured step time "
        "and the link (recorded in config.json)",
    )
    g.add_argument(
        "--link-delay-ms",
        type=_real,
        default=0.0,
        help="emulation: hold every message between stages this many ms (one way) before delivery",
    )
    g.add_argument(
        "--link-bandwidth", help="emulation: pace messages between stages at this rate (1gbit, 100mbit; tc's units)"
    )
    g.add_argument(
        "--microbatches",
        type=int,
        help="torch pipeline schedules: micro-batches per batch (default max(4, virtual stages))",
    )
    g.add_argument("--eval-every", type=int, default=0, help="steps between test evaluations (time to target)")
    g.add_argument("--target-accuracy", type=_real, help="test accuracy %% for time-to-target, e.g. 97.5")
    g.add_argument("--target-bpc", type=_positive_float, help="gpt on ptb-char: validation BPC for time-to-target")
    g.add_argument("--stop-at-target", action="store_true", help="end the run once the target is reached")
    g.add_argument("--master-addr", default="127.0.0.1", help="rendezvous address (default: loopback)")
    g.add_argument("--master-port", type=int, help="rendezvous port (default: a free one)")
    g.add_argument("--timeout", type=_real, default=60.0, help="seconds before a silent stage is declared lost")
    g.add_argument("--pin-cores", action="store_true", help="pin each rank to its own cores (for benchmarks)")
    p.set_defaults(func=_cmd_parallel)

    p = sub.add_parser("sample", help="print text generated by a language model run (--model gpt)")
    p.add_argument("--out", required=True, help="the run's folder (synthgrad train or parallel)")
    p.add_argument("--prompt", help="text to continue (default: a line end, the start of a sentence)")
    p.add_argument("--tokens", type=int, default=200, help="symbols to generate (default 200)")
    p.add_argument("--temperature", type=_real, default=1.0, help="sampling temperature; 0: the most likely symbol")
    p.add_argument("--seed", type=_seed, default=0)
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("plan", help="cost model: predicted samples/s and bubble of every schedule for K stages")
    from synthgrad.parallel.plan_cli import add_plan_arguments

    add_plan_arguments(p)
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("configs", help="list the shipped experiment configs")
    p.set_defaults(func=_cmd_configs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    code = _run(args)
    if args.func is _cmd_parallel:
        from synthgrad.parallel.runtime import env_rank_world

        if env_rank_world() is not None:  # a stage process, not the launcher
            _leave_stage_process(code)  # [Note: stage exit]
    return code


def _run(args: argparse.Namespace) -> int:
    from synthgrad.errors import TrainingDiverged
    from synthgrad.parallel.runtime import StageLost

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except StageLost as e:
        _say(f"error: {e}")
        return 1
    except TrainingDiverged as e:
        _say(f"error: {e}")
        return EXIT_DIVERGED
    except SynthgradError as e:
        _say(f"error: {e}")
        return EXIT_USER_ERROR
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        _say("interrupted; the last checkpoint is intact (--resume continues)")
        return 130
    except (MemoryError, RuntimeError) as e:  # a model or batch too large for this machine (CPU or GPU)
        text = " ".join(str(e).split())
        if not isinstance(e, MemoryError) and type(e).__name__ != "OutOfMemoryError" and "allocate" not in text:
            raise
        asked = re.search(r"allocate ([0-9.]+ ?[KMGT]?i?B|\d+ bytes)", text)
        _say(
            f"error: out of memory{f' (asked for {asked.group(1)})' if asked else ''}: choose a smaller model or "
            "batch (--width, --layers, --hidden-size, --batch-size)"
        )
        return EXIT_USER_ERROR


def _say(message: str) -> None:
    """The one line a failed command leaves: on stderr, or, in a stage process that the local launcher started,
    in the file it names (`SYNTHGRAD_ERROR_FILE`): the launcher prints the cause's line once for the whole job."""
    from synthgrad.parallel.launch import ERROR_FILE_ENV

    line = f"synthgrad: {message}"
    path = os.environ.get(ERROR_FILE_ENV)
    if path:
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
            return
        except OSError:
            pass
    print(line, file=sys.stderr)


def _leave_stage_process(code: int) -> None:
    """[Note: stage exit]
    A stage process of `synthgrad parallel` ends with os._exit, after flushing its output, instead of a normal
    interpreter exit. By then every stage has passed the closing barrier and every result is written, so
    nothing is lost; what is skipped is the interpreter's finalisation, where gloo's C++ threads can still be
    torn down. Before this, 3 of 12 runs of the parallel tests (each about 20 jobs) had one stage die after
    its last epoch with "terminate called without an active exception" (SIGABRT), which the launcher reports
    as a failed job; it never showed in 130 jobs run alone. The PyTorch thread on an atexit destroy
    (pytorch/pytorch#179291) describes the same abort at finalisation. A stage also enables faulthandler, so a
    crash in C++ prints the Python stack it happened under. Only `main()` does this: a script that calls
    `main()` as a torchrun rank ends there too, while `run_worker` and `Runtime.close` return as before."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
