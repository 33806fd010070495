"""The `synthgrad` command's options: value types that refuse bad input in one line, and each subcommand's
arguments. Parsing only: the commands themselves are in cli.py. Importing this module does not import torch
(`synthgrad --help` stays fast)."""

from __future__ import annotations

import argparse
import math

# `SynthesizerKind`'s values, spelled out so that `synthgrad --help` does not import torch (a test keeps them equal).
SYNTHESIZER_KINDS = ["linear", "lowrank", "mlp", "conv", "zero", "token-linear", "token-lowrank", "token-mlp",
                     "token-attention"]  # fmt: skip
EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (no usage block) and exits 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"synthgrad: error: {message} (see {self.prog} --help)\n")


def _whole(text: str, lo: int, hi: int | None = None) -> int:
    """A whole number in lo..hi (hi None: no upper bound), else argparse's one-line error."""
    try:
        v = int(text)
    except ValueError:
        bound = f" >= {lo}" if hi is None else ""
        raise argparse.ArgumentTypeError(f"must be a whole number{bound}, got {text!r}") from None
    if v < lo or (hi is not None and v > hi):
        raise argparse.ArgumentTypeError(
            f"must be >= {lo}, got {v}" if hi is None else f"must be in {lo}..{hi}, got {v}"
        )
    return v


def _positive_int(text: str) -> int:
    return _whole(text, 1)


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
    return _whole(text, 0, 2**32 - 1)


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
    g.add_argument("--target-every", type=int,
                   help="synthesizers train on every K-th batch's target only; the module above skips its input "
                        "gradient on the others (default 1)")  # fmt: skip
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
    g.add_argument(
        "--beta1",
        type=_real,
        help="the modules' Adam β1 (default 0.9; the synthesizers keep 0.9)",
    )
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
RECURRENT_TASKS = ["copy", "repeat-copy", "ptb-char", "multinet"]
RECURRENT_OPTIONS = [
    ("--task", RECURRENT_TASKS, "recurrent task (PAPER.md §4-5)"),
    ("--T", int, "chunk length of truncated BPTT (multinet: B's tick period); default per task"),
    ("--hidden-size", int, "LSTM units; default per task"),
    ("--forget-bias", _real, "copy tasks, ptb-char: added to the LSTM's forget-gate bias at init (default 0)"),
    (
        "--cell",
        ["lstm", "peephole"],
        "copy tasks, ptb-char: the core; lstm: nn.LSTMCell (default); peephole: Graves 2013's LSTM, whose gates "
        "also read the cell",
    ),
    (
        "--init",
        ["torch", "uniform", "orthogonal"],
        "copy tasks, ptb-char: the LSTM's init; torch: PyTorch's (default); uniform: every LSTM weight and bias "
        "U(-0.1, 0.1); orthogonal: each gate's recurrent block orthogonal, the rest as torch",
    ),
    (
        "--optimizer",
        ["adam", "rmsprop"],
        "copy tasks, ptb-char: the core's and readout's optimizer at --lr; adam (default); rmsprop: alpha 0.95, "
        "momentum 0.9, eps 1e-4. The synthesizer keeps Adam",
    ),
    ("--clip", _real, "copy tasks, ptb-char: the model's gradient clipped to this global norm (default 0: off)"),
    ("--item-bits", int, "copy tasks: the width of the vectors to copy (default 8)"),
    (
        "--episodes",
        int,
        "copy tasks: episodes per training sequence, back to back at the curriculum's level, the state carried "
        "across them (the paper's continuous stream); the curriculum's error stays per episode (default 1)",
    ),
    ("--max-samples", int, "budget: episodes (copy tasks), characters (ptb-char) or digits read (multinet)"),
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
    ("--curriculum-threshold", _real, "copy tasks: bits wrong per episode below which the length grows"),
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
    for flag, kind, text in RECURRENT_OPTIONS:
        extra = {"choices": kind} if isinstance(kind, list) else {"type": kind}
        g.add_argument(flag, help=text, **extra)


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `synthgrad demo`."""
    p.add_argument("--data-dir")
    p.add_argument("--download", action="store_true", help="fetch missing MNIST files (checksums verified)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--epochs", type=_positive_int, default=3)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--no-progress", action="store_true")


def add_reproduce_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `synthgrad reproduce`."""
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


def add_parallel_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `synthgrad parallel`: the training options and the runtime's."""
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


def add_sample_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `synthgrad sample`."""
    p.add_argument("--out", required=True, help="the run's folder (synthgrad train or parallel)")
    p.add_argument("--prompt", help="text to continue (default: a line end, the start of a sentence)")
    p.add_argument("--tokens", type=int, default=200, help="symbols to generate (default 200)")
    p.add_argument("--temperature", type=_real, default=1.0, help="sampling temperature; 0: the most likely symbol")
    p.add_argument("--seed", type=_seed, default=0)
