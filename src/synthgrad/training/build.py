"""From a resolved `TrainConfig` to the network it trains: the model of the config, cut and decoupled."""

from __future__ import annotations

import torch
from torch import nn

from synthgrad.config import Method, TrainConfig
from synthgrad.decoupled import DecoupledSequential, decouple
from synthgrad.interface import TrueGradient
from synthgrad.models import build_model
from synthgrad.optim import adam
from synthgrad.synthesizers import SynthesizerKind


def model_of(cfg: TrainConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """The model of `cfg` (resolved), seeded with `cfg.seed`: every process that builds it gets the same one."""
    torch.manual_seed(cfg.seed)
    return build_model(cfg.model, input_shape, num_classes, layers=cfg.layers, width=cfg.width)


def build_network(
    cfg: TrainConfig, input_shape: tuple[int, ...], num_classes: int, cuts: list[int] | None = None
) -> DecoupledSequential:
    """The model of `cfg` (resolved) cut after every layer (or after the layers in `cuts`) for DNI/cDNI, not at
    all for backprop; synthesizers, learning rates and folding as the config says."""
    model = model_of(cfg, input_shape, num_classes)
    locked = cfg.method is Method.BACKPROP
    spec = None if locked else cfg.synthesizer_spec()
    if cfg.synthesizer is SynthesizerKind.ZERO:  # ĝ = 0: an interface without a synthesizer
        spec = _no_synthesizer
    return decouple(
        model,
        torch.zeros(2, *input_shape),
        lr=cfg.lr,
        cuts=[] if locked else cuts,
        synthesizer=spec,
        context_dim=num_classes if cfg.method is Method.CDNI else 0,
        update_prob=cfg.update_prob,
        unlock=cfg.unlock == "full",
        seed=cfg.seed,
        synthesizer_optimizer=None if locked else adam(cfg.synthesizer_lr),
        fold_every=cfg.fold_every,
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
    return decouple(model, torch.zeros(2, *input_shape), lr=cfg.lr, cuts=cuts, synthesizer=_no_synthesizer,
                    seed=cfg.seed, rule=TrueGradient(every=1))  # fmt: skip
