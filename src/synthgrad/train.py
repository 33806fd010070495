"""The feed-forward training loop: one loop for backprop, DNI and cDNI, with checkpoint and resume.

Backprop is a `DecoupledSequential` with a single module, so every method runs through the same step code.
Outputs in `cfg.out`: config.json, metrics.jsonl (one row per epoch), diagnostics.jsonl (synthesizer quality
every `diagnose_every` steps), learning_curves.png, gradient_quality.png, checkpoint.pt, summary.json, train.log.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from synthgrad import plots
from synthgrad.checkpoint import save_checkpoint, write_json
from synthgrad.config import Method, TrainConfig
from synthgrad.core import one_hot_context
from synthgrad.data import ImageDataset, load_cifar10, load_mnist, resolve_data_dir
from synthgrad.decoupled import DecoupledSequential, adam, decouple
from synthgrad.errors import ConfigError, SynthgradError
from synthgrad.models import cnn, fcn
from synthgrad.runs import close_logging, flush_denormals, prepare_out, setup_logging, show_progress

log = logging.getLogger("synthgrad.train")

# Fields that may differ between a run and its resumption.
_RESUMABLE = {"epochs", "out", "device", "threads", "data_dir", "download"}


class TrainingDiverged(SynthgradError):
    """The loss became NaN or infinite."""


def load_dataset(cfg: TrainConfig) -> ImageDataset:
    loader = load_mnist if cfg.dataset == "mnist" else load_cifar10
    return loader(resolve_data_dir(cfg.data_dir), download=cfg.download)


def build_network(
    cfg: TrainConfig, input_shape: tuple[int, ...], num_classes: int, cuts: list[int] | None = None
) -> DecoupledSequential:
    """The model of `cfg` cut after every layer (or after the layers in `cuts`) for DNI/cDNI, not at all for
    backprop. Seeds the init, so every process that builds it gets the same network."""
    torch.manual_seed(cfg.seed)
    width = cfg.model_width()
    if cfg.model == "fcn":
        model = fcn(input_shape, num_classes, layers=cfg.layers, width=width)
    else:
        model = cnn(input_shape, num_classes, layers=cfg.layers, channels=width)
    example = torch.zeros(2, *input_shape)
    locked = cfg.method is Method.BACKPROP
    lr = cfg.module_lr()
    slr = cfg.synthesizer_learning_rate()
    return decouple(
        model,
        example,
        lr=lr,
        cuts=[] if locked else cuts,
        synthesizer=cfg.synthesizer_spec(),
        context_dim=num_classes if cfg.method is Method.CDNI else 0,
        update_prob=cfg.update_prob,
        unlock=cfg.unlock == "full",
        seed=cfg.seed,
        synthesizer_optimizer=adam(slr),
        fold_every=0 if locked else cfg.fold_interval(),
    )


def _mean_per_cut(rows: list[dict], key: str) -> list[float]:
    """Average of the per-cut lists `row[key]` over the diagnosed steps of an epoch ([] if none), skipping NaN
    (with folding, a synthesizer trains only on the steps a true gradient comes down to it)."""
    if not rows:
        return []
    return [_nanmean([r[key][j] for r in rows]) for j in range(len(rows[0][key]))]


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> tuple[float, float]:
    """(error %, mean cross-entropy) of `model` in eval mode on real inputs; restores its mode."""
    was = model.training
    model.eval()
    wrong, total_loss = 0, 0.0
    for i in range(0, len(labels), batch):
        logits = model(images[i : i + batch])
        wrong += (logits.argmax(1) != labels[i : i + batch]).sum().item()
        total_loss += F.cross_entropy(logits, labels[i : i + batch], reduction="sum").item()
    model.train(was)
    return 100.0 * wrong / len(labels), total_loss / len(labels)


@dataclass
class _RunState:
    epoch: int = 0  # epochs completed
    history: list | None = None
    diagnostics: list | None = None
    wall_time_s: float = 0.0


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool | None = None) -> dict:
    """Train per `cfg`; returns the summary (also written to `cfg.out/summary.json`)."""
    cfg.validate()
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {cfg.device}: no CUDA GPU is available on this machine")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    ckpt = prepare_out(cfg.to_dict(), out, resume, _RESUMABLE)
    handler = setup_logging(out)
    try:
        with flush_denormals():
            return _train(cfg, out, ckpt, progress)
    finally:
        close_logging(handler)


def _train(cfg: TrainConfig, out: Path, ckpt: dict | None, progress: bool | None) -> dict:
    device = torch.device(cfg.device)
    data = load_dataset(cfg)
    train_x, train_y = data.train_images, data.train_labels
    if cfg.train_limit:
        train_x, train_y = train_x[: cfg.train_limit], train_y[: cfg.train_limit]
    train_x, train_y = train_x.to(device), train_y.to(device)
    test_x, test_y = data.test_images.to(device), data.test_labels.to(device)
    net = build_network(cfg, data.input_shape, data.num_classes).to(device)
    state = _RunState(history=[], diagnostics=[])
    if ckpt is not None:
        net.load_training_state(ckpt["training"])
        state = _RunState(ckpt["epoch"], ckpt["history"], ckpt["diagnostics"], ckpt["wall_time_s"])
        log.info("resumed from %s at epoch %d", out / "checkpoint.pt", state.epoch)
    write_json(out / "config.json", cfg.to_dict())
    conditioned = cfg.method is Method.CDNI
    steps_per_epoch = len(train_y) // cfg.batch_size  # drop the ragged last batch: batch norm needs B >= 2
    show = show_progress(progress)
    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        loss_sum, sg_rows = 0.0, []
        epoch_diag = []
        bar = tqdm(range(steps_per_epoch), desc=f"{cfg.method.value} epoch {epoch}/{cfg.epochs}", disable=not show)
        for s in bar:
            idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size].to(device)
            x, y = train_x[idx], train_y[idx]
            context = one_hot_context(y, data.num_classes, x.dtype) if conditioned else None
            diagnose = cfg.diagnose_every > 0 and net.steps % cfg.diagnose_every == 0
            stats = net.train_step(x, y, context, diagnose=diagnose)
            if not math.isfinite(stats.loss):
                last = out / "checkpoint.pt"
                raise TrainingDiverged(
                    f"training diverged: loss is {stats.loss} at epoch {epoch}, step {net.steps} "
                    f"(lr {cfg.module_lr()}); "
                    + (f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet")
                )
            loss_sum += stats.loss
            if stats.sg_loss:
                sg_rows.append({"sg_loss": stats.sg_loss})
            if stats.true_cosine is not None:
                epoch_diag.append(
                    {
                        "step": net.steps,
                        "epoch": epoch,
                        "true_cosine": stats.true_cosine,
                        "target_cosine": stats.target_cosine,
                        "sg_loss": stats.sg_loss,
                    }
                )
            if show and s % 20 == 0:
                bar.set_postfix(loss=f"{stats.loss:.3f}")
        bar.close()
        test_error, test_loss = evaluate(net, test_x, test_y)
        epoch_time = time.perf_counter() - t0
        state.wall_time_s += epoch_time
        row = {
            "epoch": epoch,
            "step": net.steps,
            "train_loss": loss_sum / steps_per_epoch,
            "test_error": test_error,
            "test_loss": test_loss,
            "epoch_time_s": epoch_time,
            "wall_time_s": state.wall_time_s,
            "sg_loss": _mean_per_cut(sg_rows, "sg_loss"),
            "target_cosine": _mean_per_cut(epoch_diag, "target_cosine"),
            "true_cosine": _mean_per_cut(epoch_diag, "true_cosine"),
        }
        state.history.append(row)
        state.diagnostics.extend(epoch_diag)
        state.epoch = epoch
        log.info(
            "epoch %d: train loss %.4f, test error %.2f%%, %.1fs", epoch, row["train_loss"], test_error, epoch_time
        )
        save_checkpoint(
            out / "checkpoint.pt",
            {
                "config": cfg.to_dict(),
                "epoch": epoch,
                "training": net.training_state(),
                "history": state.history,
                "diagnostics": state.diagnostics,
                "wall_time_s": state.wall_time_s,
            },
        )
        _write_metrics(out, state)
    return _finish(cfg, out, state, net)


def _write_metrics(out: Path, state: _RunState) -> None:
    for name, rows in (("metrics.jsonl", state.history), ("diagnostics.jsonl", state.diagnostics)):
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def _finish(cfg: TrainConfig, out: Path, state: _RunState, net: DecoupledSequential) -> dict:
    title = f"{cfg.dataset} {cfg.model} {cfg.layers} layers, {cfg.method.value}"
    plots.learning_curves(state.history, out / "learning_curves.png", title)
    plots.gradient_quality(state.diagnostics, out / "gradient_quality.png", title)
    last = state.history[-1]
    summary = {
        "method": cfg.method.value,
        "dataset": cfg.dataset,
        "model": cfg.model,
        "layers": cfg.layers,
        "epochs": state.epoch,
        "steps": net.steps,
        "test_error": last["test_error"],
        "test_loss": last["test_loss"],
        "train_loss": last["train_loss"],
        "best_test_error": min(r["test_error"] for r in state.history),
        "wall_time_s": state.wall_time_s,
        "time_per_epoch_s": state.wall_time_s / max(1, len(state.history)),
        "update_prob": cfg.update_prob,
        "unlock": cfg.unlock,
        "seed": cfg.seed,
        "final_true_cosine": last["true_cosine"],
    }
    write_json(out / "summary.json", summary)
    return summary
