"""The `synthgrad` command. It only parses arguments into configs and calls the library.

User errors (bad values, bad files, an occupied output directory) end in one line on stderr and exit code 2;
a diverged run exits 3; Ctrl-C exits 130 with the checkpoint intact.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import logging
import os
import re
import sys
from collections.abc import Sequence

from synthgrad.cli_options import (
    EXIT_DIVERGED,
    EXIT_USER_ERROR,
    RECURRENT_OPTIONS,
    SYNTHESIZER_KINDS,
    Parser,
    add_demo_arguments,
    add_parallel_arguments,
    add_recurrent_arguments,
    add_reproduce_arguments,
    add_sample_arguments,
    add_train_arguments,
)
from synthgrad.errors import ConfigError, SynthgradError

__all__ = ["SYNTHESIZER_KINDS", "build_parser", "config_from_args", "main"]


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
    for flag, _, _ in RECURRENT_OPTIONS:
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

    from synthgrad.config import Method
    from synthgrad.parallel.config import ParallelConfig, ScheduleKind
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
    from synthgrad.parallel.plan_cli import add_plan_arguments

    parser = Parser(prog="synthgrad", description="Decoupled Neural Interfaces with synthetic gradients")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    parallel = ("train with one process per stage (this machine, or any under torchrun)",
                "Decoupled stages in separate processes on torch.distributed (gloo on CPU, NCCL on GPUs). Without "
                "torchrun it starts --stages processes here; under torchrun each process runs one stage.")  # fmt: skip
    commands = [  # (name, help, description, adds its options, runs it)
        ("train", "train one model (backprop, DNI or cDNI; recurrent with --task)", None,
         lambda p: (add_train_arguments(p), add_recurrent_arguments(p)), _cmd_train),
        ("demo", "MNIST FCN with backprop, DNI and cDNI on a short budget, side by side", None, add_demo_arguments,
         _cmd_demo),
        ("reproduce", "run a paper experiment suite and write a report beside the paper's", None,
         add_reproduce_arguments, _cmd_reproduce),
        ("parallel", *parallel, add_parallel_arguments, _cmd_parallel),
        ("sample", "print text generated by a language model run (--model gpt)", None, add_sample_arguments,
         _cmd_sample),
        ("plan", "cost model: predicted samples/s and bubble of every schedule for K stages", None,
         add_plan_arguments, _cmd_plan),
        ("configs", "list the shipped experiment configs", None, lambda p: None, _cmd_configs),
    ]  # fmt: skip
    for name, text, description, add_options, run in commands:
        p = sub.add_parser(name, help=text, description=description)
        add_options(p)
        p.set_defaults(func=run)
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
