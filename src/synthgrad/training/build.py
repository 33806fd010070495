"""From a resolved `TrainConfig` to the network it trains: the model of the config, cut and decoupled."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from synthgrad.config import Method, TrainConfig
from synthgrad.decoupled import DecoupledSequential, decouple
from synthgrad.interface import TrueGradient
from synthgrad.models import GPTConfig, build_model, gpt, lm_loss
from synthgrad.optim import adam
from synthgrad.parallel.partition import cuts_of, split_layers
from synthgrad.stage import LossFn
from synthgrad.synthesizers import SynthesizerKind


def model_of(cfg: TrainConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """The model of `cfg` (resolved), seeded with `cfg.seed`: every process that builds it gets the same one. For
    gpt, `input_shape` is (T,) and `num_classes` the vocabulary."""
    torch.manual_seed(cfg.seed)
    if cfg.model == "gpt":
        return gpt(GPTConfig(num_classes, layers=cfg.layers, width=cfg.width, heads=cfg.heads, context=cfg.context,
                             positions=cfg.positions))  # fmt: skip
    return build_model(cfg.model, input_shape, num_classes, layers=cfg.layers, width=cfg.width)


def example_input(cfg: TrainConfig, input_shape: tuple[int, ...]) -> torch.Tensor:
    """Two inputs of the model's input type, to infer the shape at every cut: token ids for gpt."""
    return torch.zeros(2, *input_shape, dtype=torch.long if cfg.model == "gpt" else torch.get_default_dtype())


def loss_of(cfg: TrainConfig) -> LossFn:
    """The task loss of the model's output: the batch-mean cross-entropy over examples, or over all B·T tokens."""
    return lm_loss if cfg.model == "gpt" else F.cross_entropy


def module_cuts(cfg: TrainConfig) -> list[int] | None:
    """Where the model is cut in process: into `cfg.modules` contiguous runs of layers, or (None) after every
    layer."""
    return None if cfg.modules is None else cuts_of(split_layers(cfg.model_layers, cfg.modules))


def build_network(
    cfg: TrainConfig, input_shape: tuple[int, ...], num_classes: int, cuts: list[int] | None = None
) -> DecoupledSequential:
    """The model of `cfg` (resolved) cut after the layers in `cuts` (None: as `cfg.modules` says, by default after
    every layer) for DNI/cDNI, not at all for backprop; synthesizers, learning rates and folding as the config
    says."""
    model = model_of(cfg, input_shape, num_classes)
    locked = cfg.method is Method.BACKPROP
    spec = None if locked else cfg.synthesizer_spec()
    if cfg.synthesizer is SynthesizerKind.ZERO:  # ĝ = 0: an interface without a synthesizer
        spec = _no_synthesizer
    return decouple(
        model,
        example_input(cfg, input_shape),
        loss_fn=loss_of(cfg),
        optimizer=adam(cfg.lr, cfg.beta1),
        cuts=[] if locked else module_cuts(cfg) if cuts is None else cuts,
        synthesizer=spec,
        context_dim=num_classes if cfg.method is Method.CDNI else 0,
        update_prob=cfg.update_prob,
        unlock=cfg.unlock == "full",
        seed=cfg.seed,
        synthesizer_optimizer=None if locked else adam(cfg.synthesizer_lr),
        fold_every=cfg.fold_every,
        target_every=cfg.target_every,
    )


def _no_synthesizer(shape: tuple[int, ...]) -> None:
    return None


def build_stale_network(
    cfg: TrainConfig, input_shape: tuple[int, ...], num_classes: int, cuts: list[int]
) -> DecoupledSequential:
    """The model of `cfg` cut at `cuts` as a stale-gradient pipeline: no synthesizer (ĝ = 0) and every batch's true
    gradient folded in when it arrives, through the weights that batch used ([Note: folding in true gradients]
    in stage.py): delayed backprop with weight stashing, PipeDream's asynchronous pipeline."""
    model = model_of(cfg, input_shape, num_classes)
    return decouple(model, example_input(cfg, input_shape), loss_fn=loss_of(cfg), optimizer=adam(cfg.lr, cfg.beta1),
                    cuts=cuts, synthesizer=_no_synthesizer, seed=cfg.seed, rule=TrueGradient(every=1))  # fmt: skip
