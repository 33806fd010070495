"""Experiment configuration: frozen dataclasses, parsed from the CLI or a TOML file, validated in one place.

Each field's comment gives the reason for its default. Named experiment files live in `synthgrad/configs/`
(`synthgrad train --config mnist_fcn6_cdni`), one per paper table row.
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

from synthgrad.errors import ConfigError
from synthgrad.synthesizers import SynthesizerKind, SynthesizerSpec


class Method(enum.Enum):
    BACKPROP = "backprop"  # locked: one backward pass through the whole network
    DNI = "dni"  # synthetic gradients from h alone
    CDNI = "cdni"  # synthetic gradients conditioned on the one-hot label (PAPER.md §2)


@dataclass(frozen=True)
class TrainConfig:
    # -- data
    dataset: str = "mnist"  # mnist | cifar10
    data_dir: str | None = None  # None: $SYNTHGRAD_DATA_DIR, else ~/.cache/synthgrad/data
    download: bool = False  # fetch missing files from the canonical sources (checksums verified)
    train_limit: int | None = None  # use only the first N training examples (smoke runs, tests)
    # -- model (PAPER.md §2)
    model: str = "fcn"  # fcn | cnn
    layers: int = 4  # N layers = N-1 hidden layers + the output layer
    width: int | None = None  # FCN units / CNN filters; None: the paper's (MNIST FCN 256, CIFAR FCN 1000, CNN 64/128)
    # -- method
    method: Method = Method.DNI
    synthesizer: SynthesizerKind | None = None  # None: the method's default, see `resolve`
    synthesizer_hidden: tuple[int, ...] | None = None  # None: per kind, see `resolve`
    update_prob: float = 1.0  # update decoupling: each module updates with probability p per step
    unlock: str | None = None  # "full": complete unlock with synthetic inputs
    # Fold the true gradient of every k-th batch into every module as it arrives ([Note: folding in true
    # gradients] in stage.py); 0 never; None: the method's default, see `resolve`.
    fold_every: int | None = None
    # -- optimisation: Adam with batch 256 as in PAPER.md §2.
    epochs: int = 10
    batch_size: int = 256
    lr: float | None = None  # module learning rate; None: the method's default, see `resolve`
    synthesizer_lr: float | None = None  # None: the method's default, see `resolve`
    seed: int = 0
    # -- running
    device: str = "cpu"  # cpu | cuda | cuda:N
    threads: int | None = None  # torch intra-op threads; None: PyTorch's default (all cores)
    diagnose_every: int = 50  # steps between true-gradient cosine measurements (one extra backward each)
    out: str = "runs/train"

    def validate(self) -> TrainConfig:
        """Raise `ConfigError` naming the offending value; return self for chaining."""
        checks = [
            (self.dataset in ("mnist", "cifar10"), f"unknown dataset {self.dataset!r} (mnist, cifar10)"),
            (self.model in ("fcn", "cnn"), f"unknown model {self.model!r} (fcn, cnn)"),
            (self.layers >= (2 if self.model == "cnn" else 1), f"--layers must be >= 1 (cnn: >= 2), got {self.layers}"),
            (self.width is None or self.width >= 1, f"--width must be >= 1, got {self.width}"),
            (0.0 < self.update_prob <= 1.0, f"--update-prob must be in (0, 1], got {self.update_prob}"),
            (self.unlock in (None, "full"), f"--unlock must be 'full', got {self.unlock!r}"),
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 2, f"--batch-size must be >= 2 (batch norm needs 2 examples), got {self.batch_size}"),
            (self.lr is None or self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.synthesizer_lr is None or self.synthesizer_lr > 0, "--synthesizer-lr must be > 0"),
            (self.train_limit is None or self.train_limit >= self.batch_size, "--train-limit must be >= batch size"),
            (self.diagnose_every >= 0, f"--diagnose-every must be >= 0, got {self.diagnose_every}"),
            (self.threads is None or self.threads >= 1, f"--threads must be >= 1, got {self.threads}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.method is Method.BACKPROP and (
            self.unlock or self.update_prob < 1.0 or self.synthesizer or self.fold_every
        ):
            raise ConfigError("--unlock, --update-prob, --synthesizer and --fold-every need --method dni or cdni")
        if self.fold_every is not None and self.fold_every < 0:
            raise ConfigError(f"--fold-every must be >= 0, got {self.fold_every}")
        if self.fold_every and self.unlock:
            raise ConfigError("folding true gradients needs real inputs: use --fold-every 0 with --unlock full")
        if self.layers == 1 and self.method is not Method.BACKPROP:
            raise ConfigError("a 1-layer network has no interface to decouple: use --layers >= 2")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ConfigError(f"--device must be cpu, cuda or cuda:N, got {self.device!r}")
        return self

    # -- the defaults left open (None) above, resolved once for everyone (trainer, runtime, reports)
    def resolve(self) -> TrainConfig:
        """The config with every method-dependent default filled in; the reasons, measured in BENCHMARKS.md
        ("Recipe ablation"), are the comments below. Idempotent; call `validate` first."""
        r = dataclasses.replace(self, width=self.width or _default_width(self.model, self.dataset))
        if r.method is Method.BACKPROP:  # no synthesizer, nothing to fold
            return dataclasses.replace(r, fold_every=0, lr=r.lr or 1e-4)
        # DNI folds every 3rd batch's true gradient in: a synthesizer that cannot see the label cannot predict
        # the part of the gradient that is about the label (PAPER.md §3: 4.3% at 6 layers after 500k steps).
        # Every batch matches backprop's error at 2× its time per step; every 3rd stays within 0.3 points at
        # 1.4×. cDNI's synthesizer sees the label and needs no folding. Complete unlock trains on synthetic
        # inputs, which folding cannot correct: never there.
        fold = r.fold_every if r.fold_every is not None else (3 if r.method is Method.DNI and not r.unlock else 0)
        plain_dni = r.method is Method.DNI and fold == 0  # the paper's recipe is its best there (`paper_recipe`)
        # Module lr: backprop and cDNI learn fastest at 1e-4 within tens of epochs (the paper's 3e-5 is for 500k
        # steps); folding every k > 1 batches takes a true-gradient step a k-th as often and learns as fast at
        # 2e-4; plain DNI needs its modules slower than its synthesizers can follow (3e-5).
        lr = r.lr or (3e-5 if plain_dni else 2e-4 if r.method is Method.DNI and fold > 1 else 1e-4)
        # Synthesizers chase a moving target: cDNI's learn 10× faster than the modules (1e-3; 3e-3 was worse).
        # Folding DNI's, whose targets are true gradients dominated by the label, do better at 1e-4.
        synthesizer_lr = r.synthesizer_lr or (1e-4 if r.method is Method.DNI and not plain_dni else 1e-3)
        # FCNs: a low-rank map of rank width/16 (plus the label term for cDNI): 1/8 of its layer's arithmetic;
        # rank 16 matches rank 64 on the 256-wide FCN, and on a 1024-wide FCN rank 64 learns faster early.
        # Plain DNI needs the paper's MLP (9.8% with a linear one). CNNs: conv synthesizers (PAPER.md §2).
        kind = r.synthesizer or (
            SynthesizerKind.CONV if r.model == "cnn" else SynthesizerKind.MLP if plain_dni else SynthesizerKind.LOWRANK
        )
        hidden = r.synthesizer_hidden
        if hidden is None:
            rank = max(16, r.width // 16)
            hidden = {SynthesizerKind.CONV: (128, 128), SynthesizerKind.LOWRANK: (rank,), SynthesizerKind.ZERO: ()}
            hidden = hidden.get(kind, (1024, 1024))
        return dataclasses.replace(
            r, fold_every=fold, lr=lr, synthesizer_lr=synthesizer_lr, synthesizer=kind, synthesizer_hidden=hidden
        )

    def synthesizer_spec(self) -> SynthesizerSpec:
        """The synthesizers of a resolved config."""
        return SynthesizerSpec(self.synthesizer, tuple(self.synthesizer_hidden or ()))

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.value if isinstance(v, enum.Enum) else list(v) if isinstance(v, tuple) else v
        return out


def _default_width(model: str, dataset: str) -> int:
    """The paper's (PAPER.md §2): MNIST FCN 256, CIFAR-10 FCN 1000, CNN 64 (MNIST) / 128 (CIFAR-10)."""
    if model == "cnn":
        return 64 if dataset == "mnist" else 128
    return 256 if dataset == "mnist" else 1000


class ScheduleKind(enum.Enum):
    """How `synthgrad parallel` runs the K processes."""

    DECOUPLED = "decoupled"  # DNI/cDNI stages, never waiting for gradients from downstream
    MODEL_PARALLEL = "model-parallel"  # synchronous model-parallel backprop (the locked baseline)
    GPIPE = "gpipe"  # torch.distributed.pipelining, GPipe schedule
    ONE_F_ONE_B = "1f1b"  # torch.distributed.pipelining, 1F1B schedule
    INTERLEAVED_1F1B = "interleaved-1f1b"  # torch, interleaved 1F1B (2 virtual stages per rank, loop placement)
    LOOPED_BFS = "looped-bfs"  # torch, breadth-first looped (2 virtual stages per rank, loop placement)
    ZERO_BUBBLE = "zero-bubble"  # torch, interleaved zero bubble ZB1P (2 virtual stages per rank, loop placement)
    ZBV = "zbv"  # torch, ZB-V zero bubble (2 virtual stages per rank, V placement)
    DUALPIPEV = "dualpipev"  # torch, DualPipeV (2 virtual stages per rank, V placement)
    STALE = "stale"  # asynchronous pipeline of exact gradients applied S + 1 steps late, weights stashed (PipeDream)
    DDP = "ddp"  # DistributedDataParallel, a data-parallel reference
    SINGLE = "single"  # single-process backprop (world size 1)


#: The schedules of torch.distributed.pipelining (synthgrad/parallel/torch_pipelines.py).
TORCH_PIPELINES = frozenset({"gpipe", "1f1b", "interleaved-1f1b", "looped-bfs", "zero-bubble", "zbv", "dualpipev"})


@dataclass(frozen=True)
class ParallelConfig:
    """`synthgrad parallel`: a TrainConfig run over K processes."""

    train: TrainConfig
    stages: int = 2  # K processes; for model/pipeline parallelism a contiguous block of layers each
    schedule: ScheduleKind = ScheduleKind.DECOUPLED  # --method backprop picks model-parallel unless named
    # Targets of a synthesizer may arrive up to this many of its own steps late ([Note: bounded staleness]); 0 is
    # lockstep (equal to the in-process run). 2 lets a stage run two batches ahead, enough to hide one hop.
    max_staleness: int = 2
    microbatches: int | None = None  # torch pipeline schedules: micro-batches per batch; None: max(4, virtual stages)
    eval_every: int = 0  # steps between test evaluations (for time-to-target); 0: at epoch ends only
    target_error: float | None = None  # test error % that counts as "target reached" (e.g. 2.5 = 97.5% accuracy)
    master_addr: str = "127.0.0.1"  # rendezvous: loopback unless the user names another address
    master_port: int | None = None  # None: a free port (single machine); multi-machine jobs name one
    timeout_s: float = 60.0  # a stage that does not answer for this long is declared lost
    pin_cores: bool = False  # rank r runs on cores [r·threads, (r+1)·threads) of this machine (benchmarks)

    def validate(self) -> ParallelConfig:
        self.train.validate()
        t = self.train
        if self.stages < 1:
            raise ConfigError(f"--stages must be >= 1, got {self.stages}")
        if self.schedule is not ScheduleKind.DDP and self.stages > t.layers:
            raise ConfigError(f"--stages {self.stages} is more than the model's {t.layers} layers")
        if self.schedule is ScheduleKind.DECOUPLED and t.method is Method.BACKPROP:
            raise ConfigError("the decoupled schedule needs --method dni or cdni (backprop: --schedule model-parallel)")
        if self.schedule is not ScheduleKind.DECOUPLED and t.method is not Method.BACKPROP:
            raise ConfigError(f"--schedule {self.schedule.value} trains with backprop: use --method backprop")
        if self.schedule in (ScheduleKind.DECOUPLED, ScheduleKind.STALE) and self.stages < 2:
            raise ConfigError(f"--schedule {self.schedule.value} needs --stages >= 2 (one stage is plain backprop)")
        if self.max_staleness < 0:
            raise ConfigError(f"--max-staleness must be >= 0, got {self.max_staleness}")
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise ConfigError(f"--timeout must be a number of seconds > 0, got {self.timeout_s}")
        if self.microbatches is not None and self.microbatches < 1:
            raise ConfigError(f"--microbatches must be >= 1, got {self.microbatches}")
        if self.schedule.value in TORCH_PIPELINES:  # their constraints live with them, checked before any process
            from synthgrad.parallel.torch_pipelines import check_schedule

            try:  # every hidden layer of synthgrad's models has batch norm
                check_schedule(self.schedule.value, self.stages, t.layers, t.batch_size, self.microbatches,
                               batchnorm=t.layers > 1)  # fmt: skip
            except ValueError as e:
                raise ConfigError(f"--schedule {self.schedule.value}: {e}") from None
        if self.master_port is not None and not 0 < self.master_port < 65536:
            raise ConfigError(f"--master-port must be in 1..65535, got {self.master_port}")
        if t.model != "fcn":
            raise ConfigError("synthgrad parallel supports --model fcn for now")
        return self

    def resolve(self) -> ParallelConfig:
        """The config with its training config resolved (`TrainConfig.resolve`)."""
        return dataclasses.replace(self, train=self.train.resolve())

    def to_dict(self) -> dict[str, Any]:
        """One flat mapping: the training config's fields and the job's."""
        return {
            **self.train.to_dict(),
            "stages": self.stages,
            "schedule": self.schedule.value,
            "max_staleness": self.max_staleness,
            "microbatches": self.microbatches,
            "eval_every": self.eval_every,
            "target_error": self.target_error,
            "timeout_s": self.timeout_s,
        }


_ENUMS = {"method": Method, "synthesizer": SynthesizerKind}
_PLAIN = {"str": str, "bool": bool, "int": int, "float": (int, float)}


def _check_type(field: dataclasses.Field, v: Any) -> None:
    """Reject a value of the wrong type (e.g. `layers = "3"` in a TOML file) with a message naming the key."""
    kind = str(field.type).split(" | ")[0]
    if kind.startswith("tuple"):
        ok = isinstance(v, list | tuple) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
        kind = "a list of integers"
    elif kind in _PLAIN:
        ok = isinstance(v, _PLAIN[kind]) and (kind == "bool" or not isinstance(v, bool))
    else:
        return  # enums: converted and checked below
    if not ok:
        raise ConfigError(f"{field.name} must be {kind}, got {v!r}")


def from_dict(values: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """Build a config from plain values (TOML, JSON, CLI), converting enums; unknown keys are an error."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
    converted = {}
    by_name = {f.name: f for f in fields(TrainConfig)}
    for k, v in values.items():
        if v is not None:
            _check_type(by_name[k], v)
        if v is not None and k in _ENUMS:
            try:
                v = _ENUMS[k](v)
            except ValueError:
                choices = ", ".join(m.value for m in _ENUMS[k])
                raise ConfigError(f"{k} must be one of {choices}, got {v!r}") from None
        if k == "synthesizer_hidden" and v is not None:
            v = tuple(int(x) for x in v)
        converted[k] = v
    try:
        return dataclasses.replace(base or TrainConfig(), **converted)
    except TypeError as e:  # pragma: no cover - guarded by the unknown-key check
        raise ConfigError(str(e)) from None


def named_configs() -> list[str]:
    """Names of the experiment files shipped with the package."""
    return sorted(
        p.name.removesuffix(".toml") for p in resources.files("synthgrad.configs").iterdir() if p.name.endswith(".toml")
    )


def load_config_file(name_or_path: str) -> dict[str, Any]:
    """Read a TOML experiment file: a path, or the name of a shipped config (see `named_configs`)."""
    path = Path(name_or_path)
    if path.is_file():
        text = path.read_text()
    else:
        candidate = resources.files("synthgrad.configs") / f"{name_or_path.removesuffix('.toml')}.toml"
        if not candidate.is_file():
            raise ConfigError(f"config {name_or_path!r} is neither a file nor one of: {', '.join(named_configs())}")
        text = candidate.read_text()
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {name_or_path!r} is not valid TOML: {e}") from None


def paper_recipe(method: Method) -> dict[str, Any]:
    """`TrainConfig` overrides for the paper's recipe (PAPER.md §2) at our budget, for the comparison rows of the
    reproduction: its synthesizers (DNI: MLP 2×1024 with BN; cDNI: linear on [h, y]) and no folding; learning
    rates as issue #2 tuned them for tens of epochs (module 3e-5 for DNI, 1e-4 for cDNI; synthesizers 1e-3)."""
    if method is Method.DNI:
        return {"method": method, "synthesizer": SynthesizerKind.MLP, "synthesizer_hidden": (1024, 1024),
                "lr": 3e-5, "synthesizer_lr": 1e-3, "fold_every": 0}  # fmt: skip
    if method is Method.CDNI:
        return {"method": method, "synthesizer": SynthesizerKind.LINEAR, "synthesizer_hidden": (),
                "lr": 1e-4, "synthesizer_lr": 1e-3, "fold_every": 0}  # fmt: skip
    return {"method": method}


__all__ = [
    "Method",
    "ParallelConfig",
    "ScheduleKind",
    "TrainConfig",
    "from_dict",
    "load_config_file",
    "named_configs",
    "paper_recipe",
]
