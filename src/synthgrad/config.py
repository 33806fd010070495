"""Experiment configuration: frozen dataclasses, parsed from the CLI or a TOML file, validated in one place.

Each field's comment gives the reason for its default. Named experiment files live in `synthgrad/configs/`
(`synthgrad train --config mnist_fcn6_cdni`), one per paper table row.
"""

from __future__ import annotations

import dataclasses
import enum
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
    synthesizer: SynthesizerKind | None = None  # None: the method's default, see `synthesizer_spec`
    synthesizer_hidden: tuple[int, ...] | None = None  # None: per kind, see `synthesizer_spec`
    update_prob: float = 1.0  # update decoupling: each module updates with probability p per step
    unlock: str | None = None  # "full": complete unlock with synthetic inputs
    # Fold the true gradient of every k-th batch into every module as it arrives ([Note: folding in true
    # gradients] in decoupled.py); 0 never; None: the method's default, see `fold_interval`.
    fold_every: int | None = None
    # -- optimisation: Adam with batch 256 as in PAPER.md §2.
    epochs: int = 10
    batch_size: int = 256
    lr: float | None = None  # module learning rate; None: the method's default, see `module_lr`
    synthesizer_lr: float | None = None  # None: the method's default, see `synthesizer_learning_rate`
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
        if self.fold_interval() and self.unlock:
            raise ConfigError("folding true gradients needs real inputs: use --fold-every 0 with --unlock full")
        if self.layers == 1 and self.method is not Method.BACKPROP:
            raise ConfigError("a 1-layer network has no interface to decouple: use --layers >= 2")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ConfigError(f"--device must be cpu, cuda or cuda:N, got {self.device!r}")
        return self

    # -- derived choices, kept here so the trainer, the reports and the parallel runtime agree
    def module_lr(self) -> float:
        """The modules' Adam learning rate: `lr`, else the method's default.

        Measured on the 6-layer MNIST FCN (BENCHMARKS.md): backprop and cDNI learn fastest at 1e-4 within tens of
        epochs (the paper's 3e-5 is for 500k steps). DNI folds the true gradient of every 3rd batch in, so its
        modules take a true-gradient step a third as often, and learn as fast at 2e-4 (20 epochs, 3 seeds: +0.08
        to +0.21 points over backprop at 3-6 layers); folding every batch, at 1e-4 as backprop. (Plain DNI
        without folding needs its modules slower than its synthesizers can follow: the paper's recipe keeps
        3e-5, see `paper_recipe`.)
        """
        if self.lr is not None:
            return self.lr
        if self._dni_without_folding():
            return 3e-5
        return 2e-4 if self.method is Method.DNI and self.fold_interval() > 1 else 1e-4

    def _dni_without_folding(self) -> bool:
        """DNI where folding cannot work (complete unlock) or is turned off: the paper's recipe is its best."""
        return self.method is Method.DNI and self.fold_interval() == 0

    def synthesizer_learning_rate(self) -> float:
        """The synthesizers' Adam learning rate: `synthesizer_lr`, else the method's default.

        Synthesizers chase a moving target, so cDNI's learn 10× faster than the modules (1e-3; 3e-3 was worse).
        DNI's, whose targets are dominated by the label they cannot see, do better at the modules' 1e-4 once
        true gradients are folded in (6-layer FCN, 20 epochs: 1.84% against 2.10% with 1e-3). BENCHMARKS.md,
        "Recipe ablation".
        """
        if self.synthesizer_lr is not None:
            return self.synthesizer_lr
        return 1e-4 if self.method is Method.DNI and not self._dni_without_folding() else 1e-3

    def fold_interval(self) -> int:
        """Every how many batches a true gradient is folded in (0: never): `fold_every`, else the method's.

        DNI folds every 3rd batch: a synthesizer that cannot see the label cannot predict the part of the
        gradient that is about the label, and without it the lower modules starve (PAPER.md §3: 4.3% at 6 layers
        even after 500k steps). Folding every batch matches backprop's error but costs 2× its time per step;
        every 3rd batch stays within 0.3 points of it at 1.4× (BENCHMARKS.md, "Recipe ablation"). cDNI's
        synthesizer sees the label and matches backprop without folding, at a lower cost. Complete unlock trains
        on synthetic inputs, which folding cannot correct: never there.
        """
        if self.fold_every is not None:
            return self.fold_every
        return 3 if self.method is Method.DNI and self.unlock is None else 0

    def model_width(self) -> int:
        if self.width is not None:
            return self.width
        if self.model == "cnn":
            return 64 if self.dataset == "mnist" else 128
        return 256 if self.dataset == "mnist" else 1000

    def synthesizer_spec(self) -> SynthesizerSpec:
        """The synthesizers, unless overridden: for FCNs a low-rank map of rank width/16 (plus the label term for
        cDNI), conv synthesizers for CNNs (PAPER.md §2); `paper_recipe` gives the paper's. Measured (BENCHMARKS.md,
        "Recipe ablation"): cDNI's paper synthesizer, linear, costs 4× the arithmetic for no gain in 20 epochs;
        with folding, DNI's accuracy comes mostly from the folded true gradients, so it gets the cheap synthesizer
        too (the paper's 2×1024 MLP costs ~20× backprop per step)."""
        if self.synthesizer is not None:
            kind = self.synthesizer
        elif self.model == "cnn":
            kind = SynthesizerKind.CONV
        elif self._dni_without_folding():
            kind = SynthesizerKind.MLP  # without folding DNI needs the paper's synthesizer: 9.8% with a linear one
        else:
            kind = SynthesizerKind.LOWRANK
        hidden = self.synthesizer_hidden
        if hidden is None:
            # Low rank: width / 16, at least 16. On the 256-wide MNIST FCN rank 16 matches rank 64 (20 epochs:
            # 1.86% against 1.85%); on a 1024-wide FCN rank 16 learns more slowly in the first epochs (parallel
            # benchmark, 3 epochs: 2.22% against rank 64's 1.97%). Both keep the synthesizer at 1/8 of the
            # arithmetic of the layer it serves.
            rank = max(16, self.model_width() // 16)
            hidden = {SynthesizerKind.CONV: (128, 128), SynthesizerKind.LOWRANK: (rank,)}.get(kind, (1024, 1024))
        return SynthesizerSpec(kind, tuple(hidden))

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.value if isinstance(v, enum.Enum) else list(v) if isinstance(v, tuple) else v
        return out


class Schedule(enum.Enum):
    """How `synthgrad parallel` runs the K processes."""

    DECOUPLED = "decoupled"  # DNI/cDNI stages, never waiting for gradients from downstream
    MODEL_PARALLEL = "model-parallel"  # synchronous model-parallel backprop (the locked baseline)
    GPIPE = "gpipe"  # torch.distributed.pipelining, GPipe schedule
    ONE_F_ONE_B = "1f1b"  # torch.distributed.pipelining, 1F1B schedule
    DDP = "ddp"  # DistributedDataParallel, a data-parallel reference
    SINGLE = "single"  # single-process backprop (world size 1)


@dataclass(frozen=True)
class ParallelConfig:
    """`synthgrad parallel`: a TrainConfig run over K processes."""

    train: TrainConfig
    stages: int = 2  # K processes; for model/pipeline parallelism a contiguous block of layers each
    schedule: Schedule = Schedule.DECOUPLED  # --method backprop picks model-parallel unless named
    # Targets of a synthesizer may arrive up to this many of its own steps late ([Note: bounded staleness]); 0 is
    # lockstep (equal to the in-process run). 2 lets a stage run two batches ahead, enough to hide one hop.
    max_staleness: int = 2
    eval_every: int = 0  # steps between test evaluations (for time-to-target); 0: at epoch ends only
    target_error: float | None = None  # test error % that counts as "target reached" (e.g. 2.5 = 97.5% accuracy)
    master_addr: str = "127.0.0.1"  # rendezvous: loopback unless the user names another address
    master_port: int | None = None  # None: a free port (single machine); multi-machine jobs name one
    timeout_s: float = 60.0  # a stage that does not answer for this long is declared lost

    def validate(self) -> ParallelConfig:
        self.train.validate()
        t = self.train
        if self.stages < 1:
            raise ConfigError(f"--stages must be >= 1, got {self.stages}")
        if self.schedule is not Schedule.DDP and self.stages > t.layers:
            raise ConfigError(f"--stages {self.stages} is more than the model's {t.layers} layers")
        if self.schedule is Schedule.DECOUPLED and t.method is Method.BACKPROP:
            raise ConfigError("the decoupled schedule needs --method dni or cdni (backprop: --schedule model-parallel)")
        if self.schedule is not Schedule.DECOUPLED and t.method is not Method.BACKPROP:
            raise ConfigError(f"--schedule {self.schedule.value} trains with backprop: use --method backprop")
        if self.schedule is Schedule.DECOUPLED and self.stages < 2:
            raise ConfigError("the decoupled schedule needs --stages >= 2 (one stage is plain backprop)")
        if self.max_staleness < 0:
            raise ConfigError(f"--max-staleness must be >= 0, got {self.max_staleness}")
        if self.master_port is not None and not 0 < self.master_port < 65536:
            raise ConfigError(f"--master-port must be in 1..65535, got {self.master_port}")
        if t.model != "fcn":
            raise ConfigError("synthgrad parallel supports --model fcn for now")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "train": self.train.to_dict(),
            "stages": self.stages,
            "schedule": self.schedule.value,
            "max_staleness": self.max_staleness,
            "eval_every": self.eval_every,
            "target_error": self.target_error,
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
    "Schedule",
    "TrainConfig",
    "from_dict",
    "load_config_file",
    "named_configs",
    "paper_recipe",
]
