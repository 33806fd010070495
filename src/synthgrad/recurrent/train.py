"""The recurrent trainer: Copy / Repeat Copy with the curriculum, Penn Treebank characters, the two networks.

`train_recurrent(cfg)` is what `synthgrad train --task ...` runs. Each task is a thin loop over
`TruncatedBPTT.train_sequence` (Copy tasks: one episode per batch, chunks of T), `TruncatedBPTT.train_chunk`
over `stream_chunks` (PTB: one stream, the state carried across chunks) or `MultiNetSystem.train_episode`.
Outputs in `cfg.out`: config.json, metrics.jsonl (a row every `log_every` samples), learning_curve.png
(Copy tasks also position_errors.png, [Note: errors by position]),
checkpoint.pt (atomic; `--resume` continues exactly, see [Note: deterministic resume] in `run.py`),
summary.json, train.log.

[Note: curriculum error]
    The curriculum (PAPER.md §4) grows the length when "the average error falls below 0.15 bits per sequence".
    We read the error as the number of *wrongly predicted bits* per sequence (`sequence_bit_errors`: output
    > 0.5 vs target over the scored steps), averaged over the curriculum's window of training batches, not as
    the NTM cross-entropy in bits (`sequence_cost_bits`, logged beside it as `cost_bits`). Why: the score is
    the largest length *solved*, and bits wrong measure exactly that — below 0.15 at least 85% of sequences
    are reproduced perfectly — whatever the confidence. Cross-entropy below 0.15 bits per sequence asks for
    a per-bit entropy of 0.15/(8L), ever smaller as L grows, so it would score how long one trains at each
    length (calibration) more than whether the length is solved. Cross-entropy in bits bounds the bits wrong
    from above (a wrong bit costs ≥ 1 bit), so our criterion is the more lenient of the two and our lengths
    are comparable to the paper's only up to that choice; it is the same for every method and every T.

[Note: synthesizer lr]
    One synthesizer lr for every task: Adam 1e-3, the model's. On PTB the boundary synthesizer's bootstrapped
    target feeds on its own output along a stream that never ends (the state is carried across all chunks of
    an epoch), and with the plain target (discount λ = 1) that loop diverged at 1e-3 and 1e-4 (LSTM 256, batch
    32, T = 8, one thread: the synthesizer loss went 46 → 1.9e7 within 300k characters at 1e-4) and, for DNI +
    Aux, even at 1e-5 (|ĝ|² 0.005 → 5.4e6 in 1,800 chunks); an earlier version therefore ran PTB at 1e-5. With
    the discount λ = 0.1 of [Note: discount] (core.py) nothing diverged. 90-s probes on the same stream, train
    BPC after 7,200 chunks of 8 × 32 characters (DNI + Aux: after 3,600, it costs a second backward pass):
        BPTT 2.04 (3,600: 2.36) · DNI λ = 1 at 1e-5 2.08 · DNI λ = 0.1 at 1e-4 2.44 · at 1e-3 2.03 (3,600:
        2.38) · DNI + Aux λ = 0.1 at 1e-4 (3,600) 2.28 · at 1e-3 (3,600) 2.49.
    One seed each, so differences of ~0.2 are within what a seed changes; the lr that suits DNI and the one
    that suits DNI + Aux disagree, so we keep the model's lr rather than tune either. In every probe the cosine
    between M's prediction and its per-example target stayed below 0.04: at this budget the linear
    synthesizer has barely found the predictable part of the gradient of the next characters. Copy episodes
    end after 2L + 1 steps, which cuts the loop, so they first ran at λ = 1; that made DNI worse than
    truncated BPTT (see [Note: discount] in core.py), and they ran at λ = 0.1 until synthesizer traces
    ([Note: Copy defaults]). On Copy (L = 3,
    T = 2, λ = 0.1, 1,600 batches) synthesizer Adam 1e-4 instead of 1e-3 left 2.4 bits wrong instead of
    2.1, with a lower cosine to the true future gradient (≤ 0.1): 1e-3 stays. The two networks'
    synthesizer regresses onto true gradients only. These are short probes, not a sweep.

[Note: Copy defaults]
    Copy and Repeat Copy run DNI at λ = 1 with synthesizer traces μ = 1 ([Note: synthesizer traces] in
    core.py); PTB stays at λ = 0.1 without traces (its stream never ends, and traces need a sequence end).
    The plain bootstrap at λ = 1 does not train on Copy, and at λ = 0.1 it reaches what a target that short
    allows (the recurrent report's analysis). Measured (LSTM 256, batch 32, synthesizer Adam 1e-3, one thread,
    seed 0), max length at T = 2 / 3 / 4 / 5 (truncated BPTT: 2 / 2 / 3 / 2 at 6 and at 10 minutes):
        6 min: plain bootstrap λ = 0.1: 3 / 4 / 4 / 4 · traces through the forget gates only: 4 / 5 / 5 / 4
        10 min: forget gates only: 5 / 5 / 6 / 5 · the LSTM's cell path (this default): 6 / 5 / 6 / 5
        10 min, seed 1: cell path 7 / 6 / 6 / 7 against BPTT 2 / 2 / 3 / 2 (forget gates at T = 4: 5)
        10 min, T = 4, seeds 2 / 3 / 4 / 5: cell path 5 / 8 / 6 / 7 against BPTT 3 / 2 / 3 / 3
    At 400k sequences and T = 2 every plain λ in {0.1, 0.3, 0.6, 0.9, 1} gave 2–3; traces through the forget
    gates at λ = 1 gave 4 with `--trace-decay 1` and 2 with `--trace-decay 0.9` (a Python probe of a per-chunk
    online form gave 4 at both). With those traces at T = 4, 6 min, a synthesizer lr of 3e-4 gave 5 and 3e-3
    gave 4 (1e-3: 4); one seed each, so 1e-3 stays. A single trajectory moves by a length on rounding alone:
    the same cell-path rule computed once with c_t recomputed in Python (a probe) and once from `nn.LSTMCell`
    reached 7 and 6 at T = 4 in 10 minutes.
    DNI + Aux weights its auxiliary loss 0.1 on Copy tasks (`aux_weight`; PTB: 1). At weight 1 its target,
    M's undiscounted ĝ, pulled the core away from the task: 10 min/row, seed 0, Copy 2 / 2 / 3 / 2 (truncated
    BPTT's level) and Repeat Copy 2 / 4 / 2 / 4 at 5 min/row (below BPTT's 4). At 0.1: Copy 7 / 7 / 6 / 7,
    above DNI's 6 / 5 / 6 / 5, and Repeat Copy 9 / 9 / 9 / 9 (DNI 9 / 9 / 16 / 16); Copy seed 1: 7 / 6 / 7 / 7
    (DNI 7 / 6 / 6 / 7). Only these two weights were tried.

[Note: forget bias]
    `--forget-bias b` adds b to the LSTM's forget-gate bias at initialisation (`LSTMCore(forget_bias=b)`).
    The default is 0, PyTorch's init, which every committed row ran with: the forget gates start near ½, so
    what the cell holds halves every step until training changes that. PAPER.md does not give the paper's
    init; 1 was the LSTM default of TensorFlow and Sonnet at the time (Jozefowicz et al. 2015). Truncated BPTT
    and DNI both live on what the forward dynamics keep by chance (the recurrent report's analysis), so the
    init could explain part of the gap to the paper. Measured on Copy, T = 2, seed 0, one thread (fb: the
    forget bias; lengths solved, sequences trained in brackets):
        truncated BPTT, 10 min:  fb 0: 2 (2.3M) · fb 1: 2 (3.2M; 0.62 bits wrong at length 3) · fb 3: 2 (3.0M)
                        60 min:  fb 1: 2 (16.3M; 4.2 bits wrong at length 3)
        DNI, 10 min:             fb 0: 6 (0.76M) · fb 1: 7 (0.74M) · fb 3: 7 (0.69M)
        DNI, 30 min:             fb 0: 8 (1.6M; first at 1.04M, still 8 at 40 min and 2.0M) · fb 1: 8 (1.7M;
                                 first at 1.25M) · fb 3: 9 (1.5M; first at 1.15M)
        DNI, 90 min:             fb 3: 10 (3.8M; first at 2.25M; 2.9 bits wrong at length 11)
    DNI solves each length sooner with a larger bias (6 at 532k / 458k / 398k sequences for fb 0 / 1 / 3),
    about one length more at equal time, but each further length costs about twice the sequences of the last
    (8 / 9 / 10 at 0.72M / 1.15M / 2.25M for fb 3), 10 after 90 minutes is far below the paper's 16, and
    truncated BPTT stays at 2, far below the paper's 7. So the init is not the missing piece, and the
    default stays at PyTorch's, the init of every row in the report.

[Note: Repeat Copy curriculum]
    PAPER.md §4 gives one curriculum, on "the sequence length", and Repeat Copy scores above Copy in the paper's
    table (DNI 39 / 33 / 39 / 59 against 16 / 14 / 18 / 18). So its score cannot be the length L of the
    sequence to repeat: storing L vectors is Copy's whole difficulty, and Repeat Copy adds counting to it.
    The paper does not say what it counts; 59 is prime, so it is not N·L of a curriculum that grows both.
    Two readings are implemented (`--repeat-curriculum`):
      both (default)  L and the number of repeats N start at 1 and grow in turn, L first: (1, 1), (2, 1),
                      (2, 2), (3, 2), … (`TwoAxisCurriculum`); N stops at `max_repeats` (10, the NTM
                      paper's range, also the range its input channel is normalised over) and L grows on.
                      The score is the largest N·L solved: the vectors in the output. Every level is one
                      step harder than the last, on the axis that is behind.
      length          L grows; N is drawn uniformly from 1 … `max_repeats` for every batch, and the score
                      is the largest L solved (the first version). A length counts as solved only when it is
                      solved for every N the batches happen to draw, so at L = 1 the core must already count
                      to 10 to emit the end marker. In 3-minute rows every method stayed within one length
                      of 0 (the recurrent report), so this reading tells the methods apart only with far
                      more data than our budget.
    "both" counts output vectors, like the paper's numbers seem to, but its scores are ours: its magnitudes
    are comparable with the paper's only up to the unknown bookkeeping. It does tell the methods apart: in
    5-minute rows (recurrent report, seed 0) truncated BPTT solved 4 at every T = 2 … 5 and DNI 9 / 9 / 16 / 16.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import math
from dataclasses import dataclass, fields
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import nn

from synthgrad.checkpoint import write_json
from synthgrad.data import ImageDataset, load_mnist, resolve_data_dir
from synthgrad.decoupled import adam
from synthgrad.errors import ConfigError
from synthgrad.recurrent.core import LSTMCore, RecurrentMethod, SynthesizerTarget, TruncatedBPTT, unroll
from synthgrad.recurrent.run import RESUMABLE, Session, plot_bars, plot_curves
from synthgrad.recurrent.tasks import (
    CharCorpus,
    CopyTask,
    Curriculum,
    RepeatCopyTask,
    SequenceBatch,
    TwoAxisCurriculum,
    batchify,
    bce_step_loss,
    bit_errors_by_step,
    char_step_loss,
    evaluate_bpc,
    load_ptb_chars,
    sequence_bit_errors,
    sequence_cost_bits,
    stream_chunks,
)
from synthgrad.runs import close_logging, flush_denormals, prepare_out, setup_logging, show_progress

LN2 = math.log(2.0)
EVAL_ROWS = 32  # PTB valid/test are read as 32 streams: each starts from a zero state, ~0.1% of the characters
POSITION_SEQUENCES = 1_024  # fresh sequences for Copy tasks' bits wrong by output position ([Note: errors by position])


class RecurrentTask(enum.Enum):
    COPY = "copy"  # NTM Copy, curriculum on the length (PAPER.md §4)
    REPEAT_COPY = "repeat-copy"  # NTM Repeat Copy, curriculum on the length ([Note: Repeat Copy curriculum])
    PTB_CHAR = "ptb-char"  # Penn Treebank characters, bits per character (PAPER.md §4)
    MULTINET = "multinet"  # the two-network system (PAPER.md §5, `synthgrad.recurrent.multinet`)


class RepeatCurriculum(enum.Enum):
    """What Repeat Copy's curriculum grows ([Note: Repeat Copy curriculum])."""

    BOTH = "both"  # L and N in turn from (1, 1); score: the largest N·L solved
    LENGTH = "length"  # L only, N uniform on 1..max_repeats per batch; score: the largest L solved


_COPY_TASKS = (RecurrentTask.COPY, RecurrentTask.REPEAT_COPY)
# Per-task defaults of the fields left None. T: the paper's (Copy table 2..5, so 3 in the middle; PTB 8; §5: 4).
# hidden: the paper's ~256 for Copy (M); for PTB the paper's is larger (M), 256 trains ~22k characters/s on one
# CPU thread (an epoch of 5M in ~4 min); the two networks (64 each) count 3s in 4 and 16 digits. log_every: a
# row every few seconds of CPU (Copy: sequences; PTB: characters, each row also evaluates the validation set;
# multinet: digits read).
# synthesizer_lr: see [Note: synthesizer lr]; discount: [Note: discount] in core.py.
_PER_TASK: dict[str, dict[RecurrentTask, float]] = {
    "T": {RecurrentTask.COPY: 3, RecurrentTask.REPEAT_COPY: 3, RecurrentTask.PTB_CHAR: 8, RecurrentTask.MULTINET: 4},
    "synthesizer_lr": {
        RecurrentTask.COPY: 1e-3,
        RecurrentTask.REPEAT_COPY: 1e-3,
        RecurrentTask.PTB_CHAR: 1e-3,
        RecurrentTask.MULTINET: 1e-3,
    },
    "discount": {  # [Note: discount] in core.py; Copy tasks: λ = 1 with traces ([Note: Copy defaults])
        RecurrentTask.COPY: 1.0,
        RecurrentTask.REPEAT_COPY: 1.0,
        RecurrentTask.PTB_CHAR: 0.1,
        RecurrentTask.MULTINET: 1.0,  # unused: the two networks' synthesizer regresses onto true gradients only
    },
    "aux_weight": {  # DNI + Aux: [Note: DNI + Aux] in core.py; Copy tasks: a tenth ([Note: Copy defaults])
        RecurrentTask.COPY: 0.1,
        RecurrentTask.REPEAT_COPY: 0.1,
        RecurrentTask.PTB_CHAR: 1.0,
        RecurrentTask.MULTINET: 1.0,  # unused: the two networks have no DNI + Aux
    },
    "trace_decay": {  # [Note: synthesizer traces] in core.py; needs episodes that end ([Note: Copy defaults])
        RecurrentTask.COPY: 1.0,
        RecurrentTask.REPEAT_COPY: 1.0,
        RecurrentTask.PTB_CHAR: 0.0,
        RecurrentTask.MULTINET: 0.0,
    },
    "hidden_size": {
        RecurrentTask.COPY: 256,
        RecurrentTask.REPEAT_COPY: 256,
        RecurrentTask.PTB_CHAR: 256,
        RecurrentTask.MULTINET: 64,
    },
    "log_every": {
        RecurrentTask.COPY: 2_000,
        RecurrentTask.REPEAT_COPY: 2_000,
        RecurrentTask.PTB_CHAR: 1_000_000,
        RecurrentTask.MULTINET: 20_000,
    },
}


# Options that only some tasks read (the others ignore the field): `from_dict` rejects one given for another task,
# so that a misplaced option is an error, not a silent no-op. The copy-task-only synthesizer options are checked
# in `validate` (they also depend on the method).
_TASK_ONLY: dict[str, tuple[RecurrentTask, ...]] = {
    "curriculum_threshold": _COPY_TASKS,
    "curriculum_window": _COPY_TASKS,
    "forget_bias": (*_COPY_TASKS, RecurrentTask.PTB_CHAR),
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
}


@dataclass(frozen=True)
class RecurrentConfig:
    # -- what to train
    task: RecurrentTask = RecurrentTask.COPY
    method: RecurrentMethod = RecurrentMethod.DNI  # bptt | dni | dni-aux (multinet: bptt = locked, or dni)
    T: int | None = None  # chunk length (multinet: B's tick period); None: the task's, see _PER_TASK
    hidden_size: int | None = None  # LSTM units (multinet: each of A and B); None: the task's
    forget_bias: float = 0.0  # added to the LSTM's forget-gate bias at init ([Note: forget bias]); not multinet
    # -- optimisation: Adam (PAPER.md §2); the paper gives no recurrent lr, 1e-3 is Adam's own default and
    # trains these LSTMs without clipping in our short runs.
    lr: float = 1e-3
    synthesizer_lr: float | None = None  # None: the task's ([Note: synthesizer lr])
    batch_size: int = 32  # sequences per batch (PTB: parallel streams); not in the paper, cheap on a CPU
    aux_weight: float | None = None  # DNI + Aux: weight of the auxiliary loss ([Note: DNI + Aux]); None: the task's
    discount: float | None = None  # λ on the synthetic gradient ([Note: discount] in core.py); None: the task's
    synthesizer_target: SynthesizerTarget = SynthesizerTarget.BOOTSTRAP  # TRUE: Copy tasks' diagnostic, core.py
    trace_decay: float | None = None  # μ of [Note: synthesizer traces] in core.py; 0: the paper's bootstrap
    seed: int = 0  # weights, data order and generated sequences
    # -- budget (at least one; the run stops at the first update that reaches either)
    max_samples: int | None = None  # sequences (Copy), characters (PTB), digits read (multinet): deterministic
    max_minutes: float | None = None  # wall time, summed over resumptions
    # -- Copy tasks (PAPER.md §4)
    curriculum_threshold: float = 0.15  # bits wrong per sequence ([Note: curriculum error])
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
        """From the values given (the CLI's), converting the enums. A feed-forward-only key, or an option that
        values' task (default copy) does not read, is a `ConfigError` naming the option."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
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
        """The config with every per-task default (None) filled in (no traces without a bootstrapped synthesizer;
        the aux weight only for DNI + Aux, else 1, unused, the value every run had before it was per task, so that
        their checkpoints still resume)."""
        cfg = dataclasses.replace(
            self, **{k: table[self.task] for k, table in _PER_TASK.items() if getattr(self, k) is None}
        )
        if self.aux_weight is None and cfg.method is not RecurrentMethod.DNI_AUX:
            cfg = dataclasses.replace(cfg, aux_weight=1.0)
        bootstrapped = cfg.method is not RecurrentMethod.BPTT and cfg.synthesizer_target is SynthesizerTarget.BOOTSTRAP
        return cfg if self.trace_decay is not None or bootstrapped else dataclasses.replace(cfg, trace_decay=0.0)

    def implied(self) -> dict[str, Any]:
        """Config fields added after checkpoints had been written, with the value those checkpoints ran with
        (the behaviour before the field existed), so that an older run resumes when the command states that
        value. `repeat_curriculum` mattered to Repeat Copy only (one axis before it); for the other tasks it is
        moot, so any saved config matches today's value."""
        return {
            "discount": 1.0,
            "forget_bias": 0.0,
            "synthesizer_target": "bootstrap",
            "trace_decay": 0.0,
            "repeat_curriculum": (
                RepeatCurriculum.LENGTH if self.task is RecurrentTask.REPEAT_COPY else self.repeat_curriculum
            ).value,
        }

    def validate(self) -> RecurrentConfig:
        """Raise `ConfigError` naming the offending value; return self for chaining."""
        for key, kind in _ENUM_FIELDS.items():
            if not isinstance(getattr(self, key), kind):
                raise ConfigError(f"{key} must be a {kind.__name__}, got {getattr(self, key)!r} (use from_dict)")
        checks = [
            (self.T is None or self.T >= 1, f"--T must be >= 1, got {self.T}"),
            (self.hidden_size is None or self.hidden_size >= 1, f"--hidden-size must be >= 1, got {self.hidden_size}"),
            (math.isfinite(self.forget_bias), f"--forget-bias must be a finite number, got {self.forget_bias}"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.synthesizer_lr is None or self.synthesizer_lr > 0, "--synthesizer-lr must be > 0"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.aux_weight is None or self.aux_weight >= 0, f"--aux-weight must be >= 0, got {self.aux_weight}"),
            (self.discount is None or 0 < self.discount <= 1, f"--discount must be in (0, 1], got {self.discount}"),
            (
                self.trace_decay is None or 0 <= self.trace_decay <= 1,
                f"--trace-decay must be in [0, 1], got {self.trace_decay}",
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
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.max_samples is None and self.max_minutes is None:
            raise ConfigError("a budget is needed: --max-samples S or --max-minutes M")
        if self.synthesizer_target is SynthesizerTarget.TRUE:
            if self.task not in _COPY_TASKS:
                raise ConfigError("--synthesizer-target true needs episodes that end: --task copy or repeat-copy")
            if self.method is RecurrentMethod.BPTT:
                raise ConfigError("--synthesizer-target applies to --method dni and dni-aux (bptt has no synthesizer)")
        if self.trace_decay:
            if self.task not in _COPY_TASKS:
                raise ConfigError("--trace-decay needs episodes that end: --task copy or repeat-copy")
            if self.method is RecurrentMethod.BPTT:
                raise ConfigError("--trace-decay applies to --method dni and dni-aux (bptt has no synthesizer)")
            if self.synthesizer_target is SynthesizerTarget.TRUE:
                raise ConfigError("--trace-decay shapes the bootstrapped target; --synthesizer-target true has none")
        if self.task is RecurrentTask.MULTINET and self.method is RecurrentMethod.DNI_AUX:
            raise ConfigError("--task multinet runs locked (--method bptt) or with a DNI (--method dni), not dni-aux")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name).value if f.name in _ENUM_FIELDS else getattr(self, f.name)
                for f in fields(self)}  # fmt: skip


def train_recurrent(cfg: RecurrentConfig, *, resume: bool = False, progress: bool | None = None) -> dict:
    """Train per `cfg` until its budget is spent (PTB: or early stopping); returns the summary, also written to
    `cfg.out/summary.json`. Data are read before anything is written, so a missing file leaves no run behind."""
    cfg = cfg.validate().resolve()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data: CharCorpus | ImageDataset | None = None
    if cfg.task is RecurrentTask.PTB_CHAR:
        data = load_ptb_chars(resolve_data_dir(cfg.data_dir))
    elif cfg.task is RecurrentTask.MULTINET:
        data = load_mnist(resolve_data_dir(cfg.data_dir))
    out = Path(cfg.out)
    ckpt = prepare_out(cfg.to_dict(), out, resume, RESUMABLE, cfg.implied())
    handler = setup_logging(out)
    session = Session(
        out, cfg.to_dict(), max_samples=cfg.max_samples, max_minutes=cfg.max_minutes, log_every=cfg.log_every,
        ckpt=ckpt, show=show_progress(progress), desc=f"{cfg.task.value} {cfg.method.value} T={cfg.T}",
    )  # fmt: skip
    try:
        with flush_denormals():  # as every trainer (PAPER.md §8)
            write_json(out / "config.json", cfg.to_dict())
            if cfg.task in _COPY_TASKS:
                result = _train_copy(cfg, session, ckpt)
            elif cfg.task is RecurrentTask.PTB_CHAR:
                result = _train_ptb(cfg, session, data, ckpt)
            else:
                from synthgrad.recurrent.multinet import train_multinet

                result = train_multinet(cfg, session, data, ckpt)
            p = session.progress
            summary = {
                "task": cfg.task.value, "method": cfg.method.value, "T": cfg.T, "hidden_size": cfg.hidden_size,
                "forget_bias": cfg.forget_bias, "batch_size": cfg.batch_size, "lr": cfg.lr,
                "synthesizer_lr": cfg.synthesizer_lr,
                "discount": cfg.discount, "synthesizer_target": cfg.synthesizer_target.value,
                "trace_decay": cfg.trace_decay, "aux_weight": cfg.aux_weight, "seed": cfg.seed,
                "samples": p.samples,
                "updates": p.updates, "wall_time_s": p.wall_time_s, "max_samples": cfg.max_samples,
                "max_minutes": cfg.max_minutes, **result,
            }  # fmt: skip
            write_json(out / "summary.json", summary)
            return summary
    finally:
        session.close()
        close_logging(handler)


def _trainer(cfg: RecurrentConfig, core: nn.Module, readout: nn.Module, loss_fn) -> TruncatedBPTT:
    return TruncatedBPTT(
        core, readout, loss_fn, adam(cfg.lr), T=cfg.T, method=cfg.method,
        synthesizer_optimizer=adam(cfg.synthesizer_lr), aux_weight=cfg.aux_weight, discount=cfg.discount,
        synthesizer_target=cfg.synthesizer_target, trace_decay=cfg.trace_decay,
    )  # fmt: skip


def _mean(total: float, n: int) -> float | None:
    return total / n if n else None


# ---------------------------------------------------------------------------------------------- Copy tasks
def _train_copy(cfg: RecurrentConfig, session: Session, ckpt: dict | None) -> dict:
    """Copy / Repeat Copy: one batch of fresh sequences per update at the curriculum's length, chunks of T."""
    task = CopyTask() if cfg.task is RecurrentTask.COPY else RepeatCopyTask(cfg.max_repeats)
    torch.manual_seed(cfg.seed)
    core = LSTMCore(task.input_size, cfg.hidden_size, forget_bias=cfg.forget_bias)
    trainer = _trainer(cfg, core, nn.Linear(cfg.hidden_size, task.output_size), bce_step_loss)
    generator = torch.Generator().manual_seed(cfg.seed)
    two_axes = isinstance(task, RepeatCopyTask) and cfg.repeat_curriculum is RepeatCurriculum.BOTH
    limits = {"threshold": cfg.curriculum_threshold, "window": cfg.curriculum_window}
    curriculum = TwoAxisCurriculum(**limits, max_repeats=cfg.max_repeats) if two_axes else Curriculum(**limits)
    sums = _copy_sums()
    if ckpt is not None:
        trainer.load_training_state(ckpt["training"])
        generator.set_state(ckpt["task"]["generator"])
        curriculum = type(curriculum).from_state_dict(ckpt["task"]["curriculum"])
        sums = ckpt["task"]["sums"]

    def repeats() -> dict:
        return {"repeats": curriculum.repeats, "output_length": curriculum.size} if two_axes else {}

    def sample(n: int, gen: torch.Generator) -> SequenceBatch:
        """n sequences at the curriculum's level."""
        if two_axes:
            return task.sample(n, curriculum.length, curriculum.repeats, gen)
        if isinstance(task, RepeatCopyTask):
            return task.sample(n, curriculum.length, task.sample_repeats(gen), gen)
        return task.sample(n, curriculum.length, gen)

    def save() -> None:
        state = {"generator": generator.get_state(), "curriculum": curriculum.state_dict(), "sums": sums}
        session.checkpoint(trainer.training_state(), state)

    while not session.exhausted():
        batch = sample(cfg.batch_size, generator)
        chunks = trainer.train_sequence(batch.inputs, batch.targets, batch.mask)
        loss = sum(c.loss for c in chunks)
        session.check_finite(loss, "the training loss")
        logits = torch.cat([c.outputs for c in chunks])  # (S, B, O), as predicted while training
        bits_wrong = sequence_bit_errors(logits, batch).mean().item()  # [Note: curriculum error]
        curriculum.record(bits_wrong)
        sg = [c.sg_loss for c in chunks if c.sg_loss is not None]
        for key, v in (("loss", loss), ("bits", bits_wrong), ("cost", sequence_cost_bits(logits, batch).mean())):
            sums[key] += float(v)
        sums["n"] += 1
        sums["sg"], sums["n_sg"] = sums["sg"] + sum(sg), sums["n_sg"] + len(sg)
        session.postfix(length=curriculum.length, **repeats(), solved=curriculum.max_solved)
        if session.advance(cfg.batch_size):
            session.record(
                {
                    "length": curriculum.length,
                    **repeats(),
                    "max_length": curriculum.max_solved,
                    "bit_errors": _mean(sums["bits"], sums["n"]),
                    "cost_bits": _mean(sums["cost"], sums["n"]),
                    "loss": _mean(sums["loss"], sums["n"]),
                    "sg_loss": _mean(sums["sg"], sums["n_sg"]),
                }
            )
            sums = _copy_sums()
            save()
    save()
    current, what = ("output_length", "output vectors N·L") if two_axes else ("length", "sequence length")
    plot_curves(
        session.progress.history, session.out / "learning_curve.png", x="samples",
        ys=[(current, "current"), ("max_length", "max solved")], step=True, xlabel="sequences",
        ylabel=what, title=f"{cfg.task.value}, {cfg.method.value}, T={cfg.T}",
    )  # fmt: skip
    result = {
        "max_length": curriculum.max_solved,
        "final_length": curriculum.length,
        # [Note: errors by position]; a generator of its own leaves the training stream untouched
        "bit_errors_by_position": _errors_by_position(
            trainer, sample(POSITION_SEQUENCES, torch.Generator().manual_seed(cfg.seed + 1))
        ),
    }
    level = f"L={curriculum.length}, N={curriculum.repeats}" if two_axes else f"length {curriculum.length}"
    plot_bars(
        result["bit_errors_by_position"], session.out / "position_errors.png", xlabel="output step",
        ylabel="bits wrong per sequence", title=f"{cfg.task.value}, {cfg.method.value}, T={cfg.T}, at {level}",
    )  # fmt: skip
    if isinstance(task, RepeatCopyTask):
        result["repeat_curriculum"] = cfg.repeat_curriculum.value
        result["score"] = "N·L, output vectors" if two_axes else "L, N uniform on 1..max_repeats"
    if two_axes:
        result["final_repeats"] = curriculum.repeats
    return {
        **result,
        "curriculum_error": "bits wrong per sequence",
        "curriculum_threshold": cfg.curriculum_threshold,
    }


def _errors_by_position(trainer: TruncatedBPTT, batch: SequenceBatch) -> list[float]:
    """[Note: errors by position]
    Where in the output the final model goes wrong: bits wrong at each scored step, in time order, averaged
    over `POSITION_SEQUENCES` fresh sequences at the level the run was working on when it ended (the first one
    not solved; Repeat Copy with `--repeat-curriculum length` draws one N for them all), run forward from the
    start state with the final weights. On Copy the errors sit at the end of the output: the DNI rows at 10
    minutes and the 40-minute T = 2 run got every position right but the last one or two (the recurrent
    report), that is, reading out late after the delimiter is what they have not learned."""
    core, readout = trainer.core, trainer.readout
    with torch.no_grad():
        state = core.initial_state(batch.inputs.shape[1])
        _, _, preds, _ = unroll(core, readout, trainer.loss_fn, batch.inputs, batch.targets, state, batch.mask)
    return [round(v, 4) for v in bit_errors_by_step(torch.stack(preds), batch).tolist()]


def _copy_sums() -> dict:
    return {"n": 0, "loss": 0.0, "bits": 0.0, "cost": 0.0, "sg": 0.0, "n_sg": 0}


# ---------------------------------------------------------------------------------------------- Penn Treebank
def _train_ptb(cfg: RecurrentConfig, session: Session, corpus: CharCorpus, ckpt: dict | None) -> dict:
    """PTB characters: `batch_size` parallel streams in chunks of T, the state carried across chunks and reset
    at each epoch; validation BPC at every row, early stopping on it, test BPC of the best validation weights."""
    vocab = corpus.vocab_size
    train = batchify(corpus.train, cfg.batch_size)  # (B, N)
    valid, test = (batchify(s[: cfg.eval_chars], EVAL_ROWS) for s in (corpus.valid, corpus.test))
    torch.manual_seed(cfg.seed)
    core = LSTMCore(vocab, cfg.hidden_size, forget_bias=cfg.forget_bias)
    readout = nn.Linear(cfg.hidden_size, vocab)
    trainer = _trainer(cfg, core, readout, char_step_loss)
    n_chunks = math.ceil((train.shape[1] - 1) / cfg.T)
    st: dict = {"epoch": 0, "chunk": 0, "state": None, "best": None, "bad": 0, "last_eval": -1, "sums": _ptb_sums()}
    if ckpt is not None:
        trainer.load_training_state(ckpt["training"])
        st = ckpt["task"]
    state = tuple(st["state"]) if st["state"] is not None else None

    def validate_and_record() -> None:
        bpc = evaluate_bpc(core, readout, valid, vocab)
        best = st["best"]
        if best is None or bpc < best["valid_bpc"]:
            weights = {"core": core.state_dict(), "readout": readout.state_dict()}
            st["best"] = {"valid_bpc": bpc, "samples": session.progress.samples, "weights": copy.deepcopy(weights)}
            st["bad"] = 0
        else:
            st["bad"] += 1
            session.progress.finished = st["bad"] >= cfg.patience  # early stopping (PAPER.md §4)
        st["last_eval"] = session.progress.samples
        s = st["sums"]
        session.record(
            {
                "epoch": session.progress.samples / corpus.train.numel(),
                "train_bpc": _mean(s["bits"], s["chars"]),
                "valid_bpc": bpc,
                "best_valid_bpc": st["best"]["valid_bpc"],
                "sg_loss": _mean(s["sg"], s["n_sg"]),
            }
        )
        st["sums"] = _ptb_sums()

    def save() -> None:
        session.checkpoint(trainer.training_state(), {**st, "state": list(state) if state is not None else None})

    while not session.exhausted():
        for x, y in islice(stream_chunks(train, cfg.T, vocab), st["chunk"], None):  # x (T', B, V), y (T', B)
            state, stats = trainer.train_chunk(x, y, state, last=st["chunk"] == n_chunks - 1)
            st["chunk"] += 1
            session.check_finite(stats.loss, "the training loss")
            s = st["sums"]
            s["bits"] += stats.loss * x.shape[1] / LN2  # loss = Σ_t batch-mean nats ([Note: chunk loss])
            s["chars"] += x.shape[0] * x.shape[1]
            if stats.sg_loss is not None:
                s["sg"], s["n_sg"] = s["sg"] + stats.sg_loss, s["n_sg"] + 1
            session.postfix(bpc=f"{stats.loss / x.shape[0] / LN2:.3f}")
            if session.advance(x.shape[0] * x.shape[1]):
                validate_and_record()
                save()
            if session.exhausted():
                break
        if st["chunk"] == n_chunks:  # a new epoch restarts the streams from a zero state
            st["epoch"], st["chunk"], state = st["epoch"] + 1, 0, None
    if st["last_eval"] != session.progress.samples:
        validate_and_record()
    save()
    best_core, best_readout = copy.deepcopy(core), copy.deepcopy(readout)
    best_core.load_state_dict(st["best"]["weights"]["core"])
    best_readout.load_state_dict(st["best"]["weights"]["readout"])
    plot_curves(
        session.progress.history, session.out / "learning_curve.png", x="samples",
        ys=[("train_bpc", "train"), ("valid_bpc", "validation")], xlabel="characters", ylabel="bits per character",
        title=f"PTB characters, {cfg.method.value}, T={cfg.T}, LSTM {cfg.hidden_size}",
    )  # fmt: skip
    return {
        "test_bpc": evaluate_bpc(best_core, best_readout, test, vocab),
        "valid_bpc": st["best"]["valid_bpc"],
        "best_at_samples": st["best"]["samples"],
        "stopped_early": session.progress.finished,
        "epochs": session.progress.samples / corpus.train.numel(),
        "eval_chars": cfg.eval_chars,
    }


def _ptb_sums() -> dict:
    return {"bits": 0.0, "chars": 0, "sg": 0.0, "n_sg": 0}
