"""What a recurrent run trains: `RecurrentConfig`, its tasks and per-task defaults, resolved once.

The CLI (`synthgrad train --task ...`) and the experiment files (`synthgrad/configs/recurrent/*.toml`) only
parse into this frozen dataclass; `resolve()` fills every per-task default, `validate()` checks it, and
`parts(core)` builds the method's boundary interface and aux task from it (`boundary.method_parts`, where the
method's forbidden combinations are checked). `experiment_names` and `load_experiment` read the shipped files,
one per row of the recurrent reproduction.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from synthgrad.config import physical_memory
from synthgrad.errors import ConfigError
from synthgrad.interface import Interface
from synthgrad.optim import OptimizerFactory, adam, rmsprop
from synthgrad.recurrent.boundary import AuxTask, RecurrentMethod, SynthesizerTarget, boundary_rule, method_parts
from synthgrad.recurrent.cells import CellKind, LSTMCore, LSTMInit, RecurrentCore, make_core

EVAL_ROWS = 32  # PTB valid/test are read as 32 streams: each starts from a zero state, ~0.1% of the characters


class RecurrentTask(enum.Enum):
    COPY = "copy"  # NTM Copy, curriculum on the length (PAPER.md §4)
    REPEAT_COPY = "repeat-copy"  # NTM Repeat Copy, curriculum on L and N ([Note: Repeat Copy curriculum])
    PTB_CHAR = "ptb-char"  # Penn Treebank characters, bits per character (PAPER.md §4)
    MULTINET = "multinet"  # the two-network system (PAPER.md §5, `synthgrad.recurrent.multinet`)


class RecurrentOptimizer(enum.Enum):
    """The optimizer of the core and readout (`--optimizer`); the synthesizer M keeps Adam at --synthesizer-lr."""

    ADAM = "adam"  # PAPER.md §2; every committed row
    RMSPROP = "rmsprop"  # NTM-era recipes (`synthgrad.optim.rmsprop`: α 0.95, momentum 0.9, ε 1e-4)


class RepeatCurriculum(enum.Enum):
    """What Repeat Copy's curriculum grows ([Note: Repeat Copy curriculum] in copy_loop.py)."""

    BOTH = "both"  # L and N in turn from (1, 1); score: the largest N·L solved
    LENGTH = "length"  # L only, N uniform on 1..max_repeats per batch; score: the largest L solved


COPY_TASKS = (RecurrentTask.COPY, RecurrentTask.REPEAT_COPY)
_C, _R, _P, _M = RecurrentTask.COPY, RecurrentTask.REPEAT_COPY, RecurrentTask.PTB_CHAR, RecurrentTask.MULTINET
# Per-task defaults of the fields left None; the measurements behind them are in reports/recurrent/notes.md.
PER_TASK: dict[str, dict[RecurrentTask, float]] = {
    # the paper's: Copy table T = 2..5, so 3 in the middle; PTB 8; two networks (§5) 4
    "T": {_C: 3, _R: 3, _P: 8, _M: 4},
    # one lr for every task, the model's: short probes found nothing better ("Synthesizer lr")
    "synthesizer_lr": {_C: 1e-3, _R: 1e-3, _P: 1e-3, _M: 1e-3},
    # [Note: discount]: PTB's endless stream needs λ < 1; Copy tasks run λ = 1 with traces ("Copy defaults");
    # unused by the two networks, whose synthesizer regresses onto true gradients only
    "discount": {_C: 1.0, _R: 1.0, _P: 0.1, _M: 1.0},
    # [Note: DNI + Aux]: at 1 its target pulled Copy's core off the task ("Copy defaults"); unused by multinet
    "aux_weight": {_C: 0.1, _R: 0.1, _P: 1.0, _M: 1.0},
    # [Note: synthesizer traces]: they need episodes that end ("Copy defaults")
    "trace_decay": {_C: 1.0, _R: 1.0, _P: 0.0, _M: 0.0},
    # the paper's ~256 for Copy; PTB's is larger in the paper, 256 trains an epoch in ~4 min on one CPU thread;
    # the two networks (64 each) count 3s in 4 and 16 digits
    "hidden_size": {_C: 256, _R: 256, _P: 256, _M: 64},
    # a row every few seconds of CPU (Copy: sequences; PTB: characters, each row validates; multinet: digits)
    "log_every": {_C: 2_000, _R: 2_000, _P: 1_000_000, _M: 20_000},
}

# Options that only some tasks read: `from_dict` rejects one given for another task, so that a misplaced option is
# an error, not a silent no-op. The synthesizer options' combinations are checked by `boundary.boundary_rule`.
_TASK_ONLY: dict[str, tuple[RecurrentTask, ...]] = {
    "curriculum_threshold": COPY_TASKS,
    "curriculum_window": COPY_TASKS,
    "forget_bias": (*COPY_TASKS, RecurrentTask.PTB_CHAR),
    "cell": (*COPY_TASKS, RecurrentTask.PTB_CHAR),
    "init": (*COPY_TASKS, RecurrentTask.PTB_CHAR),
    "optimizer": (*COPY_TASKS, RecurrentTask.PTB_CHAR),
    "clip": (*COPY_TASKS, RecurrentTask.PTB_CHAR),
    "item_bits": COPY_TASKS,
    "episodes": COPY_TASKS,
    "max_repeats": (RecurrentTask.REPEAT_COPY,),
    "repeat_curriculum": (RecurrentTask.REPEAT_COPY,),
    "patience": (RecurrentTask.PTB_CHAR,),
    "eval_chars": (RecurrentTask.PTB_CHAR,),
    "target_accuracy": (RecurrentTask.MULTINET,),
    "accuracy_window": (RecurrentTask.MULTINET,),
}

# Config fields holding an enum: from_dict converts the CLI's strings, to_dict writes the values back.
_ENUM_FIELDS: dict[str, type[enum.Enum]] = {
    "task": RecurrentTask,
    "method": RecurrentMethod,
    "synthesizer_target": SynthesizerTarget,
    "repeat_curriculum": RepeatCurriculum,
    "cell": CellKind,
    "init": LSTMInit,
    "optimizer": RecurrentOptimizer,
}


@dataclass(frozen=True)
class RecurrentConfig:
    # -- what to train
    task: RecurrentTask = RecurrentTask.COPY
    method: RecurrentMethod = RecurrentMethod.DNI  # bptt | dni | dni-aux (multinet: bptt = locked, or dni)
    T: int | None = None  # chunk length (multinet: B's tick period); None: the task's, see PER_TASK
    hidden_size: int | None = None  # LSTM units (multinet: each of A and B); None: the task's
    forget_bias: float = 0.0  # added to the LSTM's forget-gate bias at init (`LSTMCore`); not multinet
    # the set-up probes of issue #20 (copy tasks and PTB; the defaults are every committed row's set-up)
    cell: CellKind = CellKind.LSTM  # lstm: nn.LSTMCell; peephole: Graves 2013's (`PeepholeLSTMCore`)
    init: LSTMInit = LSTMInit.TORCH  # the LSTM's weights at init (`LSTMInit`, `init_lstm_`)
    item_bits: int = 8  # copy tasks: the width of the vectors to copy (NTM: 8)
    episodes: int = 1  # copy tasks: episodes per training sequence, state carried ([Note: continuous stream])
    # -- optimisation: Adam (PAPER.md §2); the paper gives no recurrent lr, 1e-3 is Adam's own default and
    # trains these LSTMs without clipping in our short runs.
    lr: float = 1e-3
    optimizer: RecurrentOptimizer = RecurrentOptimizer.ADAM  # of the core and readout (+ DNI + Aux's head) at lr
    clip: float = 0.0  # their gradient's global L2 norm clipped to this before each step; 0: off
    synthesizer_lr: float | None = None  # None: the task's
    batch_size: int = 32  # sequences per batch (PTB: parallel streams); not in the paper, cheap on a CPU
    aux_weight: float | None = None  # DNI + Aux: weight of the auxiliary loss ([Note: DNI + Aux]); None: the task's
    discount: float | None = None  # λ on the synthetic gradient ([Note: discount]); None: the task's
    synthesizer_target: SynthesizerTarget = SynthesizerTarget.BOOTSTRAP  # TRUE: Copy tasks' diagnostic
    trace_decay: float | None = None  # μ of [Note: synthesizer traces]; 0: the paper's bootstrap
    seed: int = 0  # weights, data order and generated sequences
    # -- budget (at least one; the run stops at the first update that reaches either)
    max_samples: int | None = None  # sequences (Copy), characters (PTB), digits read (multinet): deterministic
    max_minutes: float | None = None  # wall time, summed over resumptions
    # -- Copy tasks (PAPER.md §4)
    curriculum_threshold: float = 0.15  # bits wrong per sequence ([Note: curriculum error] in copy_loop.py)
    curriculum_window: int = 10  # training batches averaged for the curriculum (not in the paper)
    max_repeats: int = 10  # Repeat Copy: N at most 10, the NTM paper's range
    repeat_curriculum: RepeatCurriculum = RepeatCurriculum.BOTH  # [Note: Repeat Copy curriculum]
    # -- PTB: early stopping on validation, no lr decay (PAPER.md §4)
    patience: int = 5  # validations without a new best before stopping
    eval_chars: int | None = None  # score only the first N characters of valid/test (smoke runs); None: all
    # -- multinet (PAPER.md §5)
    target_accuracy: float = 0.9  # B's moving training accuracy that counts as "learned" (steps_to_target)
    accuracy_window: int = 50  # episodes averaged for that accuracy (50 × batch 32 = 1600 streams)
    # -- running
    log_every: int | None = None  # samples between metric rows and checkpoints; None: the task's
    data_dir: str | None = None  # PTB files / MNIST; None: $SYNTHGRAD_DATA_DIR, else ~/.cache/synthgrad/data
    threads: int | None = None  # torch intra-op threads; None: PyTorch's default
    out: str = "runs/recurrent"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RecurrentConfig:
        """From the values given (the CLI's, an experiment file's), converting the enums. A feed-forward-only key,
        or an option that values' task (default copy) does not read, is a `ConfigError` naming the option."""
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            names = ", ".join("--" + k.replace("_", "-") for k in unknown)
            raise ConfigError(f"{names}: not an option of recurrent training (--task); see synthgrad train --help")
        values = dict(values)
        for key, kind in _ENUM_FIELDS.items():
            if key in values and not isinstance(values[key], kind):
                try:
                    values[key] = kind(values[key])
                except ValueError:
                    choices = ", ".join(m.value for m in kind)
                    flag, what = key.replace("_", "-"), key.replace("_", " ")
                    raise ConfigError(f"--{flag} {values[key]} is not a recurrent {what}: use {choices}") from None
        task = values.get("task", cls.task)
        for key in sorted(values.keys() & _TASK_ONLY.keys()):
            if task not in _TASK_ONLY[key]:
                flag, tasks = "--" + key.replace("_", "-"), " and ".join(t.value for t in _TASK_ONLY[key])
                raise ConfigError(f"{flag} is an option of --task {tasks}, not of {task.value}")
        return cls(**values)

    def resolve(self) -> RecurrentConfig:
        """The config with every per-task default (None) filled in: no traces without a bootstrapped synthesizer;
        the aux weight only for DNI + Aux (else 1, unused)."""
        cfg = dataclasses.replace(
            self, **{k: table[self.task] for k, table in PER_TASK.items() if getattr(self, k) is None}
        )
        if self.aux_weight is None and cfg.method is not RecurrentMethod.DNI_AUX:
            cfg = dataclasses.replace(cfg, aux_weight=1.0)
        bootstrapped = cfg.method is not RecurrentMethod.BPTT and cfg.synthesizer_target is SynthesizerTarget.BOOTSTRAP
        return cfg if self.trace_decay is not None or bootstrapped else dataclasses.replace(cfg, trace_decay=0.0)

    def validate(self) -> RecurrentConfig:
        """Raise `ConfigError` naming the offending value; return self for chaining."""
        for key, kind in _ENUM_FIELDS.items():
            if not isinstance(getattr(self, key), kind):
                raise ConfigError(f"{key} must be a {kind.__name__}, got {getattr(self, key)!r} (use from_dict)")
        for ok, message in self._value_checks():
            if not ok:
                raise ConfigError(message)
        if self.max_samples is None and self.max_minutes is None:
            raise ConfigError("a budget is needed: --max-samples S or --max-minutes M")
        for given, flag in ((self.synthesizer_target is SynthesizerTarget.TRUE, "--synthesizer-target true"),
                            (bool(self.trace_decay), "--trace-decay")):  # fmt: skip
            if given and self.task not in COPY_TASKS:
                raise ConfigError(f"{flag} needs episodes that end: --task copy or repeat-copy")
        if self.task is RecurrentTask.MULTINET and self.method is RecurrentMethod.DNI_AUX:
            raise ConfigError("--task multinet runs locked (--method bptt) or with a DNI (--method dni), not dni-aux")
        r = self.resolve()
        boundary_rule(r.method, discount=r.discount, synthesizer_target=r.synthesizer_target, trace_decay=r.trace_decay)
        r._check_memory()
        return self

    def _check_memory(self) -> None:
        """Refuse a --hidden-size too large for this machine's memory before anything is built or written (it would
        fail deep inside torch, or get the process killed). Parameters, a lower bound: per network (multinet: 2) the
        LSTM's 4·H², and with a synthesizer its linear map of the state (h, c), (2H)² = 4·H²; 32 bytes each, as
        for the feed-forward models (`TrainConfig.validate`): the weight, its gradient, Adam's two moments and a
        checkpoint's copy. Called on the resolved config."""
        memory, h = physical_memory(), self.hidden_size
        networks = 2 if self.task is RecurrentTask.MULTINET else 1
        params = networks * (4 + (4 if self.method is not RecurrentMethod.BPTT else 0)) * h * h
        if memory and 32 * params > memory:
            raise ConfigError(
                f"--hidden-size {h} needs about {32 * params / 2**30:,.0f} GiB for the weights, gradients, Adam's "
                f"moments and a checkpoint, more than this machine's {memory / 2**30:.0f} GiB of memory: choose a "
                "smaller --hidden-size"
            )

    def _value_checks(self) -> list[tuple[bool, str]]:
        """(holds, message) for every field's own range (the synthesizer's are `boundary_rule`'s)."""
        return [
            (self.T is None or self.T >= 1, f"--T must be >= 1, got {self.T}"),
            (self.hidden_size is None or self.hidden_size >= 1, f"--hidden-size must be >= 1, got {self.hidden_size}"),
            (math.isfinite(self.forget_bias), f"--forget-bias must be a finite number, got {self.forget_bias}"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (
                isinstance(self.clip, int | float) and math.isfinite(self.clip) and self.clip >= 0,
                f"--clip must be a number >= 0 (0: off), got {self.clip!r}",
            ),
            (
                isinstance(self.item_bits, int) and not isinstance(self.item_bits, bool) and self.item_bits >= 1,
                f"--item-bits must be a whole number >= 1, got {self.item_bits!r}",
            ),
            (
                isinstance(self.episodes, int) and not isinstance(self.episodes, bool) and self.episodes >= 1,
                f"--episodes must be a whole number >= 1, got {self.episodes!r}",
            ),
            (self.synthesizer_lr is None or self.synthesizer_lr > 0, "--synthesizer-lr must be > 0"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.aux_weight is None or self.aux_weight >= 0, f"--aux-weight must be >= 0, got {self.aux_weight}"),
            # torch seeds are 64-bit; a TOML file's seed does not pass the command line's check (cli_options._seed)
            (
                isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed < 2**32,
                f"--seed must be a whole number in 0..{2**32 - 1}, got {self.seed!r}",
            ),
            (self.max_samples is None or self.max_samples >= 1, f"--max-samples must be >= 1, got {self.max_samples}"),
            (self.max_minutes is None or self.max_minutes > 0, f"--max-minutes must be > 0, got {self.max_minutes}"),
            (self.curriculum_threshold > 0, f"--curriculum-threshold must be > 0, got {self.curriculum_threshold}"),
            (self.curriculum_window >= 1, f"--curriculum-window must be >= 1, got {self.curriculum_window}"),
            (self.max_repeats >= 1, f"--max-repeats must be >= 1, got {self.max_repeats}"),
            (self.patience >= 1, f"--patience must be >= 1, got {self.patience}"),
            (self.eval_chars is None or self.eval_chars >= 2 * EVAL_ROWS, f"--eval-chars must be >= {2 * EVAL_ROWS}"),
            (0 < self.target_accuracy <= 1, f"--target-accuracy must be in (0, 1], got {self.target_accuracy}"),
            (self.accuracy_window >= 1, f"--accuracy-window must be >= 1, got {self.accuracy_window}"),
            (self.log_every is None or self.log_every >= 1, f"--log-every must be >= 1, got {self.log_every}"),
            (self.threads is None or self.threads >= 1, f"--threads must be >= 1, got {self.threads}"),
        ]

    def parts(self, core: RecurrentCore) -> tuple[Interface | None, AuxTask | None]:
        """The method's boundary interface (M trained by Adam at `synthesizer_lr`) and aux task for `core`, from
        the resolved config."""
        return method_parts(
            core, adam(self.lr), method=self.method, synthesizer_optimizer=adam(self.synthesizer_lr),
            aux_weight=self.aux_weight, discount=self.discount, synthesizer_target=self.synthesizer_target,
            trace_decay=self.trace_decay,
        )  # fmt: skip

    def model_optimizer(self) -> OptimizerFactory:
        """The optimizer of the core and readout (`optimizer` at `lr`); M's is Adam at `synthesizer_lr`."""
        return rmsprop(self.lr) if self.optimizer is RecurrentOptimizer.RMSPROP else adam(self.lr)

    def core(self, input_size: int) -> LSTMCore:
        """The recurrent core of a Copy task or PTB (`cell`, `init`, `forget_bias`), at `hidden_size` (resolved)."""
        return make_core(self.cell, input_size, self.hidden_size, forget_bias=self.forget_bias, init=self.init)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name).value if f.name in _ENUM_FIELDS else getattr(self, f.name)
                for f in fields(self)}  # fmt: skip


def experiment_names() -> list[str]:
    """The shipped recurrent experiment files (synthgrad/configs/recurrent/NAME.toml), one per row of the
    reproduction, sorted by name."""
    folder = resources.files("synthgrad.configs") / "recurrent"
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def experiment_name(task: RecurrentTask | str, method: RecurrentMethod | str, T: int) -> str:  # noqa: N803
    """The file name (without .toml) of a row: `<task>_<method>_T<T>` with underscores, e.g. copy_dni_aux_T3."""
    task, method = RecurrentTask(task).value, RecurrentMethod(method).value
    return f"{task}_{method}_T{T}".replace("-", "_")


def load_experiment(name_or_path: str | Path) -> dict[str, Any]:
    """The values of a recurrent experiment file: a path, or a shipped name (`experiment_names`, with or without
    `recurrent/` and `.toml`); a `ConfigError` naming it if it is neither or not TOML."""
    path = Path(name_or_path)
    if path.is_file():
        text = path.read_text()
    else:
        name = str(name_or_path).removeprefix("recurrent/").removesuffix(".toml")
        if name not in experiment_names():
            raise ConfigError(f"experiment {str(name_or_path)!r} is neither a file nor one of: "
                              f"{', '.join(experiment_names())}")  # fmt: skip
        text = (resources.files("synthgrad.configs") / "recurrent" / f"{name}.toml").read_text()
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"experiment {str(name_or_path)!r} is not valid TOML: {e}") from None
