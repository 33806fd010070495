"""Profiles for the cost model ([Note: cost model] in costmodel.py): what a model's layers cost relative to each
other (their FLOPs) and the bytes at a cut, and a `Profile` from a finished `synthgrad parallel` run."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from synthgrad.errors import ConfigError
from synthgrad.parallel.costmodel import INPUT_FEATURES, SCHEDULES, Profile, predict
from synthgrad.parallel.link import LinkSpec, parse_bandwidth
from synthgrad.parallel.partition import split_layers
from synthgrad.parallel.torch_pipelines import SCHEDULES as TORCH_SCHEDULES


def fcn_layer_flops(layers: int, width: int, in_features: int = 784, classes: int = 10) -> list[float]:
    """Forward + backward FLOPs per example of each linear layer of synthgrad's FCN: 2·in·out forward, as much
    again for the weight gradient, and for the input gradient on every layer but the first."""
    dims = [in_features] + [width] * (layers - 1) + [classes]
    return [(4 if i == 0 else 6) * dims[i] * dims[i + 1] for i in range(layers)]


def gpt_layer_flops(layers: int, width: int, context: int, vocab: int) -> list[float]:
    """Forward + backward FLOPs per example (a window) of a GPT's embedding, blocks and head (3 × the forward's
    matrix products; attention's T² terms included; the embedding lookup counted as free)."""
    block = 3 * context * (24 * width * width + 4 * context * width)
    return [0.0] + [float(block)] * layers + [3.0 * 2 * context * width * vocab]


def model_shape(config: dict[str, Any]) -> tuple[list[float], float]:
    """(relative cost of each layer, bytes per example at a cut) of the model a run's config.json describes."""
    try:
        model, layers, width = config["model"], int(config["layers"]), int(config["width"])
        if model == "fcn":
            inputs = INPUT_FEATURES.get(config.get("dataset", "mnist"))
            if inputs is None:
                raise ConfigError(f"no input size known for dataset {config.get('dataset')!r}")
            return fcn_layer_flops(layers, width, inputs), 4.0 * width  # float32 activations
        if model == "gpt":
            context = int(config.get("context") or 64)
            vocab = int(config.get("vocab_size") or 50)  # PTB characters: ~50 symbols
            return gpt_layer_flops(layers, width, context, vocab), 4.0 * context * width
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"config.json lacks the model's shape ({type(e).__name__}: {e})") from None
    raise ConfigError(f"plan knows the shapes of fcn and gpt models, not {model!r}: give --stage-ms and --message-kb")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist: --from needs a finished `synthgrad parallel` run folder") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{path} is not readable JSON ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a JSON object")
    return data


def _spread(weights: Sequence[float], layers: Sequence[int], seconds: float, into: list[float]) -> None:
    """Share `seconds` among `layers` in proportion to their weights (equally where they weigh nothing)."""
    total = sum(weights[i] for i in layers)
    for i in layers:
        into[i] = seconds * (weights[i] / total if total > 0 else 1 / len(layers))


def profile_from_run(run_dir: str | Path) -> tuple[Profile, dict[str, Any]]:
    """The profile a finished `synthgrad parallel` run measured, and what else it says (K, schedule,
    micro-batches, link, staleness, notes).

    Per-stage compute is compute_s + comm_s per step of each stage (posting sends counts as the stage's work),
    spread over its layers by their FLOPs (`model_shape`). A torch pipeline schedule times its whole step as
    compute (bubble included), so its layer times are scaled until the model predicts the measured step; a
    single-process run's step is train_time_s / steps. Host overhead per step: the training time per step beyond
    the slowest stage's busy time (compute, wait, comm)."""
    out = Path(run_dir)
    summary, config = _read_json(out / "summary.json"), _read_json(out / "config.json")
    try:
        schedule = str(summary.get("schedule") or config["schedule"])
        K, steps, train_s = int(summary["stages"]), int(summary["steps"]), float(summary["train_time_s"])
        N = int(config["batch_size"])
        per_stage = list(summary.get("per_stage") or [])
        link = LinkSpec(float(config.get("link_delay_ms") or 0) / 1e3, parse_bandwidth(config.get("link_bandwidth")))
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{out}: summary.json or config.json lacks {e} (a run of `synthgrad parallel`?)") from None
    if schedule not in SCHEDULES:
        raise ConfigError(f"{out}: plan models pipelines; a {schedule} run has no stages to measure")
    if steps < 1 or train_s <= 0:
        raise ConfigError(f"{out}: the run took no training steps")
    weights, message = model_shape(config)
    n = len(weights)
    microbatches = config.get("microbatches")
    notes = []
    layer_s = [0.0] * n
    overhead = 0.0
    timed = [p for p in per_stage if isinstance(p, dict) and "compute_s" in p]
    if timed:
        busiest = max(p["compute_s"] + p.get("wait_s", 0) + p.get("comm_s", 0) for p in timed) / steps
        overhead = max(0.0, train_s / steps - busiest)
    if schedule == "single" or not timed:
        _spread(weights, range(n), train_s / steps, layer_s)
        notes.append(f"one step of the whole model: {train_s / steps * 1e3:.3g} ms (train_time_s / steps)")
    elif schedule in TORCH_SCHEDULES:
        measured = max(p["compute_s"] for p in timed) / steps
        unit = Profile(tuple(w / sum(weights) for w in weights), (message,) * (n - 1), N)
        at = {a: predict(schedule, dataclasses.replace(unit, layer_s=tuple(a * s for s in unit.layer_s)), K,
                         microbatches=microbatches, link=link).step_s for a in (0.0, 1.0)}  # fmt: skip
        scale = max(0.0, (measured - at[0.0]) / (at[1.0] - at[0.0])) if at[1.0] > at[0.0] else 0.0
        layer_s = [scale * s for s in unit.layer_s]
        notes.append(f"{schedule} times its step as compute: layer times scaled to the measured "
                     f"{measured * 1e3:.3g} ms step by this model")  # fmt: skip
    else:
        blocks = split_layers(n, K)
        for p in timed:
            k = int(p.get("stage", 0))
            layers = list(p.get("layers") or blocks[k])
            _spread(weights, layers, (p["compute_s"] + p.get("comm_s", 0.0)) / steps, layer_s)
        if schedule == "decoupled":
            notes.append("stage times include the synthesizers (exact schedules predicted from them carry it too)")
    threads = {p.get("threads") for p in per_stage if isinstance(p, dict) and p.get("threads")}
    if threads:
        notes.append(f"measured with {'/'.join(str(t) for t in sorted(threads))} thread(s) per process")
    staleness = config.get("max_staleness", 2)
    info = {"run": str(out), "schedule": schedule, "stages": K, "microbatches": microbatches, "link": link,
            "staleness": staleness, "measured_samples_per_s": summary.get("samples_per_s"), "notes": notes}  # fmt: skip
    return Profile(tuple(layer_s), (message,) * (n - 1), N, overhead_s=overhead), info


__all__ = ["fcn_layer_flops", "gpt_layer_flops", "model_shape", "profile_from_run"]
