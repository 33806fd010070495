"""Experiment configuration: frozen dataclasses, parsed from the CLI or a TOML file, validated in one place.

Each field's comment gives the reason for its default. Named experiment files live in `synthgrad/configs/`
(`synthgrad train --config mnist_fcn6_cdni`), one per paper table row.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import re
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from synthgrad.errors import ConfigError
from synthgrad.synthesizers import SynthesizerKind, SynthesizerSpec

LM_DATASETS = ("ptb-char", "ptb-word")  # text, read by the language model (synthgrad.data.ptb)
DATASETS = ("mnist", "cifar10", *LM_DATASETS)
MODELS = ("fcn", "cnn", "gpt")
# The language model's default budget in training tokens (targets), when neither --max-tokens nor --max-minutes is
# given: the shipped default runs' (configs/ptb_char_gpt_*.toml, reports/transformer/report.md).
LM_DEFAULT_TOKENS = 6_000_000


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
    # The bootstrap's synthesizers train on every k-th batch's target only ([Note: sparse targets] in
    # interface.py): the module above skips its input gradient on the others. 1: every batch (the paper's).
    target_every: int = 1
    # -- optimisation: Adam with batch 256 as in PAPER.md §2.
    epochs: int = 10
    batch_size: int = 256
    lr: float | None = None  # module learning rate; None: the method's default, see `resolve`
    synthesizer_lr: float | None = None  # None: the method's default, see `resolve`
    beta1: float | None = None  # the modules' Adam β1; None: the method's default (0.9; see `resolve`)
    seed: int = 0
    # -- running
    device: str = "cpu"  # cpu | cuda | cuda:N
    threads: int | None = None  # torch intra-op threads; None: PyTorch's default (all cores)
    diagnose_every: int = 50  # steps between true-gradient cosine measurements (one extra backward each)
    out: str = "runs/train"
    # -- the language model (--model gpt on ptb-char or ptb-word; synthgrad/models/gpt.py, training/lm.py). Every
    # field below defaults to None, so that runs written before it existed resume unchanged.
    context: int | None = None  # T, tokens per window; None: 64 (with width 64, 4 blocks: the default experiment)
    heads: int | None = None  # attention heads; None: 4 (16 per head at width 64)
    positions: str | None = None  # learned | rotary; None: learned (GPT-2's)
    # Decoupled modules in process (K − 1 interfaces), each a contiguous run of layers (`parallel.partition`);
    # None: every layer its own module (fcn, cnn) or K = 2 for gpt (see `_resolve_gpt`).
    modules: int | None = None
    # -- budgets besides --epochs; the run stops at whichever is spent first (`training.loop.Plan`)
    max_tokens: int | None = None  # gpt: training tokens (targets); None: LM_DEFAULT_TOKENS unless max_minutes
    max_minutes: float | None = None  # minutes of training (evaluation and checkpoints excluded)
    eval_tokens: int | None = None  # gpt: training tokens between evaluations and checkpoints; None: 1/5 of the budget

    def validate(self) -> TrainConfig:
        """Raise `ConfigError` naming the offending value; return self for chaining."""
        checks = [
            (self.dataset in DATASETS, f"unknown dataset {self.dataset!r} ({', '.join(DATASETS)})"),
            (self.model in MODELS, f"unknown model {self.model!r} ({', '.join(MODELS)})"),
            (self.layers >= (2 if self.model == "cnn" else 1), f"--layers must be >= 1 (cnn: >= 2), got {self.layers}"),
            (self.width is None or self.width >= 1, f"--width must be >= 1, got {self.width}"),
            (0.0 < self.update_prob <= 1.0, f"--update-prob must be in (0, 1], got {self.update_prob}"),
            (self.unlock in (None, "full"), f"--unlock must be 'full', got {self.unlock!r}"),
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 2, f"--batch-size must be >= 2 (batch norm needs 2 examples), got {self.batch_size}"),
            (self.lr is None or 0 < self.lr < math.inf, f"--lr must be a finite number > 0, got {self.lr}"),
            (
                self.synthesizer_lr is None or 0 < self.synthesizer_lr < math.inf,
                f"--synthesizer-lr must be a finite number > 0, got {self.synthesizer_lr}",
            ),
            (self.beta1 is None or 0.0 <= self.beta1 < 1.0, f"--beta1 must be in [0, 1), got {self.beta1}"),
            (self.train_limit is None or self.train_limit >= self.batch_size, "--train-limit must be >= batch size"),
            (self.diagnose_every >= 0, f"--diagnose-every must be >= 0, got {self.diagnose_every}"),
            # torch's thread count is a C int; no machine has a thousand cores for one process
            (self.threads is None or 1 <= self.threads <= 1024, f"--threads must be in 1..1024, got {self.threads}"),
            # torch seeds are 64-bit and the batch order derives seed × 100,003 + epoch from it (batch_order)
            (0 <= self.seed < 2**32, f"--seed must be in 0..{2**32 - 1}, got {self.seed}"),
            (self.layers <= 1000, f"--layers must be <= 1000 (the paper's deepest network has 6), got {self.layers}"),
            (
                all(h >= 1 for h in self.synthesizer_hidden or ()),
                f"--synthesizer-hidden widths must be >= 1, got {','.join(map(str, self.synthesizer_hidden or ()))}",
            ),
            (
                self.batch_size <= {"mnist": 60_000, "cifar10": 50_000}.get(self.dataset, self.batch_size),
                f"--batch-size {self.batch_size} is more than {self.dataset}'s training set holds",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self._validate_budget_and_lm()
        self._validate_memory()
        self._validate_method()
        return self

    def _validate_memory(self) -> None:
        # A model too large for this machine fails deep inside torch or gets the process killed: refuse it here.
        # Parameters: the model's, plus per cut the largest default synthesizer (a low-rank map of rank w/16 in and
        # out, or the MLP 2×1024); the CNN's convolutions are 5×5. 32 bytes each: the weight, its gradient and
        # Adam's two moments, and the copy of all three a checkpoint takes.
        w, k = self.width or _default_width(self.model, self.dataset), 25 if self.model == "cnn" else 1
        channels = 3 if self.dataset == "cifar10" else 1
        first = channels * k if self.model == "cnn" else channels * (1024 if channels == 3 else 784)  # input features
        params = first * w + max(0, self.layers - 2) * k * w * w + 10 * w * (64 if self.model == "cnn" else 1)
        if self.method is not Method.BACKPROP:
            params += (self.layers - 1) * k * max(w * w // 8, 2 * 1024 * w + 1024 * 1024)
        memory = physical_memory()
        if memory and self.model in ("fcn", "cnn") and 32 * params > memory:
            raise ConfigError(
                f"--width {w} with --layers {self.layers} needs about {32 * params / 2**30:.0f} GiB for the "
                f"weights, gradients, Adam's moments and a checkpoint, more than this machine's "
                f"{memory / 2**30:.0f} GiB: choose a smaller --width or --layers"
            )

    def _validate_method(self) -> None:
        """The options that need a decoupled method, and the combinations that cannot work."""
        if self.method is Method.BACKPROP and (
            self.unlock or self.update_prob < 1.0 or self.synthesizer or self.fold_every
        ):
            raise ConfigError("--unlock, --update-prob, --synthesizer and --fold-every need --method dni or cdni")
        if self.fold_every is not None and self.fold_every < 0:
            raise ConfigError(f"--fold-every must be >= 0, got {self.fold_every}")
        if self.target_every < 1:
            raise ConfigError(f"--target-every must be >= 1, got {self.target_every}")
        if self.target_every > 1 and (self.method is Method.BACKPROP or self.fold_every):
            raise ConfigError("--target-every thins the bootstrapped targets of dni or cdni without folding "
                              "(--fold-every 0)")  # fmt: skip
        if self.fold_every and self.unlock:
            raise ConfigError("folding true gradients needs real inputs: use --fold-every 0 with --unlock full")
        if self.layers == 1 and self.method is not Method.BACKPROP and self.model != "gpt":
            raise ConfigError("a 1-layer network has no interface to decouple: use --layers >= 2")
        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"--device must be cpu, cuda or cuda:N, got {self.device!r}")

    @property
    def model_layers(self) -> int:
        """The model's layers, the children that modules and stages are cut from: a GPT's are its embedding, its
        L = `layers` blocks and its head."""
        return self.layers + 2 if self.model == "gpt" else self.layers

    def _validate_budget_and_lm(self) -> None:
        """The budgets, and the language model's options: gpt reads text, and only gpt does."""
        gpt = self.model == "gpt"
        if gpt != (self.dataset in LM_DATASETS):
            raise ConfigError(
                f"--model gpt reads text: use --dataset {' or '.join(LM_DATASETS)}, not {self.dataset}"
                if gpt
                else f"--dataset {self.dataset} is text, read by the language model: use --model gpt"
            )
        lm_only = {"--context": self.context, "--heads": self.heads, "--positions": self.positions,
                   "--max-tokens": self.max_tokens, "--eval-tokens": self.eval_tokens}  # fmt: skip
        given = [flag for flag, value in lm_only.items() if value is not None]
        if given and not gpt:
            raise ConfigError(f"{', '.join(given)}: option(s) of the language model (--model gpt)")
        for flag, value in (*lm_only.items(), ("--modules", self.modules)):
            if flag != "--positions" and value is not None and value < 1:
                raise ConfigError(f"{flag} must be >= 1, got {value}")
        if self.positions not in (None, "learned", "rotary"):
            raise ConfigError(f"--positions must be learned or rotary, got {self.positions!r}")
        if self.max_minutes is not None and not 0 < self.max_minutes < math.inf:
            raise ConfigError(f"--max-minutes must be a finite number > 0, got {self.max_minutes}")
        kind = self.synthesizer
        if gpt:
            width, heads, context = self.width or _default_width("gpt", ""), self.heads or 4, self.context or 64
            if width % heads:
                raise ConfigError(f"--width {width} is not divisible by --heads {heads}")
            if self.positions == "rotary" and (width // heads) % 2:
                raise ConfigError(f"rotary positions need an even head width, got --width {width} / --heads {heads}")
            if self.max_tokens is not None and self.max_tokens < self.batch_size * context:
                raise ConfigError(f"--max-tokens {self.max_tokens} is less than one batch of "
                                  f"{self.batch_size} × {context} tokens")  # fmt: skip
            if self.unlock:
                raise ConfigError("--unlock full is not supported with --model gpt (no input synthesizer reads ids)")
            if kind is not None and not (kind.tokenwise or kind is SynthesizerKind.ZERO):
                raise ConfigError(f"--synthesizer {kind.value} flattens the (T, D) activations of a GPT: use "
                                  "token-linear, token-lowrank, token-mlp, token-attention or zero")  # fmt: skip
            hidden = self.synthesizer_hidden
            if kind is SynthesizerKind.TOKEN_ATTENTION and hidden is not None and len(hidden) != 1:
                raise ConfigError("--synthesizer token-attention takes one width, its rank: got --synthesizer-hidden "
                                  f"{','.join(map(str, hidden)) or 'none'}")  # fmt: skip
        elif kind is not None and kind.tokenwise:
            raise ConfigError(f"--synthesizer {kind.value} reads (T, D) token activations: use it with --model gpt")
        if self.modules is not None:
            if self.modules > self.model_layers:
                raise ConfigError(f"--modules {self.modules} is more than the model's {self.model_layers} layers")
            if self.method is Method.BACKPROP and self.modules > 1:
                raise ConfigError("--modules K > 1 decouples the model: use --method dni or cdni")
            if self.method is not Method.BACKPROP and self.modules == 1:
                raise ConfigError("--modules 1 has no interface to decouple: use --modules >= 2")

    # -- the defaults left open (None) above, resolved once for everyone (trainer, runtime, reports)
    def resolve(self) -> TrainConfig:
        """The config with every method-dependent default filled in; the reasons, measured in BENCHMARKS.md
        ("Recipe ablation"), are the comments below. Idempotent; call `validate` first."""
        width = self.width or _default_width(self.model, self.dataset)
        beta1 = 0.9 if self.beta1 is None else self.beta1  # torch's; every recipe keeps it ([Note: GPT recipe])
        r = dataclasses.replace(self, width=width, beta1=beta1)
        if r.model == "gpt":
            return _resolve_gpt(r)
        if r.method is Method.BACKPROP:  # no synthesizer, nothing to fold
            return dataclasses.replace(r, fold_every=0, lr=r.lr or 1e-4)
        # DNI folds every 3rd batch's true gradient in: a synthesizer that cannot see the label cannot predict
        # the part of the gradient that is about the label (PAPER.md §3: 4.3% at 6 layers after 500k steps).
        # Every batch matches backprop's error at 2× its time per step; every 3rd stays within 0.3 points at
        # 1.4×. cDNI's synthesizer sees the label and needs no folding. Complete unlock trains on synthetic
        # inputs, which folding cannot correct: never there. Sparse targets (--target-every) are bootstrapped ones:
        # no folding by default with them either.
        folds = r.method is Method.DNI and not r.unlock and r.target_every == 1
        fold = r.fold_every if r.fold_every is not None else (3 if folds else 0)
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
        kind = SynthesizerKind(self.synthesizer)  # token-wise kinds without batch norm (`token_default`)
        return SynthesizerSpec(kind, tuple(self.synthesizer_hidden or ()), batch_norm=not kind.tokenwise)

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.value if isinstance(v, enum.Enum) else list(v) if isinstance(v, tuple) else v
        return out


def _resolve_gpt(r: TrainConfig) -> TrainConfig:
    """The language model's defaults (width already resolved); what they reach on PTB characters at the default
    size is in reports/transformer/report.md."""
    budget = r.max_tokens or (None if r.max_minutes else LM_DEFAULT_TOKENS)
    lm = dataclasses.replace(
        r, context=r.context or 64, heads=r.heads or 4, positions=r.positions or "learned", max_tokens=budget,
        # 5 evaluations (and checkpoints) per budget in tokens (each scores the 835k valid and test characters, a
        # fifth of a default run's training time); with a budget in minutes, every 2M tokens
        eval_tokens=r.eval_tokens or (max(1, budget // 5) if budget else 2_000_000),
    )  # fmt: skip
    if r.method is Method.BACKPROP:
        return dataclasses.replace(lm, modules=1, fold_every=0, lr=r.lr or GPT_RECIPE["backprop_lr"])
    recipe = GPT_RECIPE[r.method.value]
    kind = r.synthesizer or SynthesizerKind(recipe["synthesizer"])
    hidden = r.synthesizer_hidden
    if hidden is None:
        hidden = {SynthesizerKind.TOKEN_MLP: (max(1, r.width // 4),),
                  SynthesizerKind.TOKEN_LOWRANK: (max(1, r.width // 8),),
                  # r = D/8: 6.25 % of a block at the defaults ([Note: anti-causal synthesizer] in tokens.py)
                  SynthesizerKind.TOKEN_ATTENTION: (max(1, r.width // 8),)}.get(kind, ())  # fmt: skip
    return dataclasses.replace(
        lm, modules=r.modules or 2, fold_every=recipe["fold_every"] if r.fold_every is None else r.fold_every,
        lr=r.lr or recipe["lr"], synthesizer_lr=r.synthesizer_lr or recipe["synthesizer_lr"], synthesizer=kind,
        synthesizer_hidden=hidden,
    )  # fmt: skip


# [Note: GPT recipe] The defaults of a decoupled GPT: one interface in the middle (K = 2 modules), token-wise
# MLP synthesizers (one hidden layer of width/4 at every position; cDNI's also reads the target character of the
# position), and every batch's true gradient folded in as it arrives (one step late). Measured on PTB characters
# at the default size, 6M tokens (reports/transformer/report.md, "The recipe, tuned"): folding every batch is
# what carries both methods. Without it cDNI's synthetic gradients alone diverge at lr 1e-3 (3.20 BPC) and are
# slow at 3e-4 (2.51); folding every 2nd batch at 1e-3 diverges too (4.14); every batch at 1e-3 gives 2.117 against
# backprop's 2.066 (the token-linear map 2.143; a hidden layer of 64 or synthesizer lr 3e-4 no better). DNI:
# folding every 3rd batch 2.339, every batch 2.154 (synthesizer frozen at zero: 2.189, the delayed gradient
# alone). Adam's β1 (0.5 or 0 instead of 0.9) moved no decoupled recipe beyond one seed's noise, so it stays 0.9.
# Over three seeds: DNI 5.7 % and cDNI 4.1 % above backprop's validation BPC (13 % and 21 % before, one seed). The
# price is one more backward pass of the modules below the cut per step (1.31-1.39× backprop per token).
GPT_RECIPE: dict[str, Any] = {
    "backprop_lr": 1e-3,
    "dni": {"synthesizer": "token-mlp", "fold_every": 1, "lr": 1e-3, "synthesizer_lr": 1e-4},
    "cdni": {"synthesizer": "token-mlp", "fold_every": 1, "lr": 1e-3, "synthesizer_lr": 1e-4},
}


def model_defaults(model: object) -> TrainConfig:
    """The config a model's options start from (`from_dict`): `TrainConfig()`, or for gpt PTB characters in
    batches of 32 windows (the issue's 256 images would be 256 windows, 32k tokens a step; the recipe is tuned
    at 32)."""
    if model == "gpt":
        return TrainConfig(dataset="ptb-char", model="gpt", batch_size=32)
    return TrainConfig()


def _default_width(model: str, dataset: str) -> int:
    """The paper's (PAPER.md §2): MNIST FCN 256, CIFAR-10 FCN 1000, CNN 64 (MNIST) / 128 (CIFAR-10)."""
    if model == "gpt":
        return 64  # the default experiment's (configs/ptb_char_gpt_*.toml): it trains in minutes on a CPU
    if model == "cnn":
        return 64 if dataset == "mnist" else 128
    return 256 if dataset == "mnist" else 1000


_ENUMS = {"method": Method, "synthesizer": SynthesizerKind}
_PLAIN = {"str": str, "bool": bool, "int": int, "float": (int, float)}


def physical_memory() -> int | None:
    """This machine's memory in bytes, or None where the system does not say (not POSIX): no check then."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


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
        return dataclasses.replace(base or model_defaults(values.get("model")), **converted)
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
    "TrainConfig",
    "from_dict",
    "load_config_file",
    "model_defaults",
    "named_configs",
    "paper_recipe",
]
