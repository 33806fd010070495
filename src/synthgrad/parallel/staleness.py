"""`--max-staleness auto`: the staleness bound S that hides a link's round trip, derived before training from a
measured step time, and the memory each step of staleness costs.

[Note: auto staleness]
    Stage k runs step t once stage k−1's activation of step t has arrived, and consumes the target of step t − S
    (from stage k+1) right after its step t ([Note: bounded staleness] in schedule.py). With every stage taking T
    per step, a one-way delay d and a transfer time x per message (its bytes over the link's bandwidth), stage k+1
    starts step t − S a time T + d + x after stage k did, and its message down arrives another T + d + x later,
    so stage k never waits when

        (S + 1)·T  ≥  2T + 2(d + x)        that is       S ≥ 1 + ⌈2(d + x) / T⌉

    (S = 1 at d = 0: the tightest pipeline). `auto` takes that bound plus a margin of one step for jitter, so
    with no delay it gives the default, 2. T is the slowest stage's step, measured on every rank before training
    on a throw-away copy of its stage (a few warm-up steps, then the median of `STEPS`; the ranks agree on the
    maximum). A link whose transfer time exceeds T cannot be hidden by any S: the pipeline then runs at one
    message per x, and the derivation says so.

    d and x are those of the real network plus those of the emulated link, if one is asked for
    (`--link-delay-ms`, `--link-bandwidth`). The real network's are measured between neighbouring stages before
    training ([Note: measured link]), since on real machines nobody tells synthgrad a link's delay or bandwidth:
    a cap set outside synthgrad (tc, a WAN) showed up only as a slower step before (at 100 Mbit/s, S = 2 where
    the link needs 5). A measured round trip under a tenth of a step (any loopback or LAN link at these sizes)
    counts as none, so S does not change with the noise of a fast link.

    Timing is not deterministic, so S is not either: the derivation is written into the run's config
    (`staleness_basis` in config.json) and a resumed run takes S from its checkpoint's config instead of measuring
    again; S changes the numbers, the delay then does not.

    Memory. What a stage holds grows with S: with bootstrapped targets (cDNI, DNI without folding) one pending
    prediction per step (the activation h the synthesizer read, its prediction and graph, the context); with
    folding, (K − 1 − k)/e more folded batches per step of S on stage k (each: the block's saved activations, a
    snapshot of its weights, ĝ and the gradient it applied), e = 1 for the stale pipeline; and on every cut one
    more message of the activation's size waiting on the link or in the inbox. `staleness_memory` measures these
    on the stage itself (saved tensors counted through autograd's hooks) and reports bytes per step of S.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from synthgrad.parallel.link import LinkSpec, format_bandwidth, parse_bandwidth
from synthgrad.parallel.runtime import TAG_PROBE

MARGIN = 1  # steps of slack beyond the bound, for jitter
WARMUP, STEPS = 3, 8
INPUT_SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


NEGLIGIBLE = 0.1  # a measured round trip under this fraction of a step counts as none ([Note: auto staleness])


def derive_staleness(
    step_s: float, link: LinkSpec, message_bytes: int, margin: int = MARGIN,
    measured: tuple[float, float] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """S for a step time `step_s`, a link, and the largest message per cut ([Note: auto staleness]); returns the
    derivation (S under "staleness"). `measured`: the real network's (one-way delay, transfer time of one message)
    in seconds (`measure_link`), added to the emulated `link`'s unless its round trip is negligible."""
    real_delay, real_transfer = measured or (0.0, 0.0)
    negligible = step_s > 0 and 2 * (real_delay + real_transfer) < NEGLIGIBLE * step_s
    if negligible:
        real_delay = real_transfer = 0.0
    transfer = link.transfer_s(message_bytes) + real_transfer
    round_trip = 2 * (link.delay_s + real_delay + transfer)
    steps = math.ceil(round_trip / step_s - 1e-9) if step_s > 0 else 0
    basis = {
        "staleness": 1 + steps + margin,
        "step_time_ms": round(step_s * 1e3, 3),
        "link_delay_ms": link.delay_s * 1e3,
        "link_bandwidth": format_bandwidth(link.bandwidth_bps),
        "message_bytes": message_bytes,
        "transfer_ms": round(transfer * 1e3, 3),
        "round_trip_ms": round(round_trip * 1e3, 3),
        "round_trip_steps": round(round_trip / step_s, 3) if step_s > 0 else None,
        "margin": margin,
        "bandwidth_bound": transfer > step_s,
        "rule": "S = 1 + ceil(2 (delay + transfer) / step) + margin",
    }
    if measured is not None:
        basis["measured_link"] = {"delay_ms": round(measured[0] * 1e3, 3), "transfer_ms": round(measured[1] * 1e3, 3),
                                  "negligible": negligible}  # fmt: skip
    return basis


def measure_link(rt, message_bytes: int, repeats: int = 3, stream: int = 4) -> tuple[float, float]:
    """[Note: measured link]
    The real network between neighbouring stages, measured before training: (one-way delay d, transfer time x of
    a message of `message_bytes`) in seconds, the worst over the K − 1 links, the same on every rank. Each link
    (k, k + 1) is measured by its two ends, pairs (0, 1), (2, 3), … first, then (1, 2), (3, 4), …, so every rank
    talks to one neighbour at a time. d is half the median round trip of a 4-byte ping-pong. For x the lower end
    streams `stream` messages of that size and the upper end answers with 4 bytes once all have arrived: that
    takes d + stream·x + d, so x = (elapsed − 2d) / stream (a stream, so that a link's burst allowance or slow
    start counts little). It runs before any emulated link is set up, so it sees the real network only, and its
    waiting is not counted in the stage's timing. One direction at a time: a link that is slower when both
    directions carry data (gloo over a 100 Mbit/s tbf cap: ~10 % slower) is measured a little fast; the margin
    step covers that."""
    n = max(1, message_bytes // 4)
    small, big = torch.zeros(1, device=rt.device), torch.zeros(n, device=rt.device)
    saved = (rt.timing.wait_s, rt.timing.comm_s)
    delay = transfer = 0.0
    for phase in (0, 1):
        lower = rt.rank % 2 == phase
        peer = rt.rank + 1 if lower else rt.rank - 1
        if not 0 <= peer < rt.world_size:
            continue
        rtts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            if lower:
                rt.wait(rt.isend(small, peer, TAG_PROBE), peer)
                rt.recv((1,), peer, TAG_PROBE)
            else:
                rt.recv((1,), peer, TAG_PROBE)
                rt.wait(rt.isend(small, peer, TAG_PROBE), peer)
            rtts.append(time.perf_counter() - t0)
        d = statistics.median(rtts) / 2
        if lower:
            t0 = time.perf_counter()
            sends = [rt.isend(big, peer, TAG_PROBE) for _ in range(stream)]
            rt.recv((1,), peer, TAG_PROBE)
            elapsed = time.perf_counter() - t0
            for work in sends:
                rt.wait(work, peer)
            delay, transfer = max(delay, d), max(transfer, max(0.0, elapsed - 2 * d) / stream)
        else:
            buffers = [torch.empty(n, device=rt.device) for _ in range(stream)]
            for work in [rt.irecv(b, peer, TAG_PROBE) for b in buffers]:
                rt.wait(work, peer)
            rt.wait(rt.isend(small, peer, TAG_PROBE), peer)
    rt.timing.wait_s, rt.timing.comm_s = saved
    delay, transfer = rt.all_reduce([delay, transfer], "max")
    return delay, transfer


# ---------------------------------------------------------------------- measuring a stage
def _network(pcfg, device: torch.device):
    """The chain `pcfg` trains (decoupled or stale), built as the stage job builds it, and its cut shapes."""
    from synthgrad.decoupled import infer_shapes
    from synthgrad.parallel.config import ScheduleKind
    from synthgrad.parallel.partition import cuts_of, split_layers
    from synthgrad.training import build_network
    from synthgrad.training.build import build_stale_network

    cfg = pcfg.train
    shape = INPUT_SHAPES[cfg.dataset]
    build = build_stale_network if pcfg.schedule is ScheduleKind.STALE else build_network
    net = build(cfg, shape, 10, cuts=cuts_of(split_layers(cfg.layers, pcfg.stages))).to(device)
    return net, shape, infer_shapes(net.blocks, torch.zeros(2, *shape, device=device))


def _inputs(pcfg, k: int, shape, shapes, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    from synthgrad.config import Method
    from synthgrad.core import one_hot_context

    b = pcfg.train.batch_size
    gen = torch.Generator().manual_seed(k)
    x = torch.randn(b, *(shape if k == 0 else shapes[k - 1]), generator=gen).to(device)
    y = torch.randint(0, 10, (b,), generator=gen).to(device)
    context = one_hot_context(y, 10) if pcfg.train.method is Method.CDNI else None
    return x, y, context


def measure_step_time(pcfg, k: int, device: torch.device, warmup: int = WARMUP, steps: int = STEPS) -> float:
    """Median seconds of stage k's step (forward, synthetic gradient, backward, update, and the synthesizer's
    regression on a message from above), on a throw-away copy of the stage and random data."""
    from synthgrad.schedule import DecoupledSchedule

    net, shape, shapes = _network(pcfg, device)
    stage = net.stages[k]
    schedule = DecoupledSchedule(pcfg.stages, 0, net.rule)
    x, y, context = _inputs(pcfg, k, shape, shapes, device)
    times = []
    for t in range(warmup + steps):
        t0 = time.perf_counter()
        result = stage.step(x, y, context, True)
        if not stage.top:
            carries = schedule.carries_target(k + 1, t)
            stage.receive(1e-3 * torch.randn_like(result.output) if carries else None)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[warmup:])


def _saved_bytes(fn, exclude: set[int]) -> tuple[Any, int]:
    """(fn(), bytes of the distinct storages autograd saved for its backward pass, less those in `exclude`)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in exclude:
            seen[ptr] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def staleness_memory(pcfg, k: int, device: torch.device | None = None) -> dict[str, Any]:
    """Bytes stage k holds per step of staleness ([Note: auto staleness]), by part."""
    from synthgrad.interface import TrueGradient

    device = device or torch.device("cpu")
    net, shape, shapes = _network(pcfg, device)
    stage, rule, K = net.stages[k], net.rule, pcfg.stages
    x, y, context = _inputs(pcfg, k, shape, shapes, device)
    params = {p.untyped_storage().data_ptr() for p in stage.parameters()}
    parts: dict[str, int] = {}
    out_bytes = math.prod(shapes[k]) * pcfg.train.batch_size * 4
    if not stage.top:
        parts["message"] = out_bytes  # one more on the link or in the inbox
    if not stage.top and rule.carries_input_gradient:  # one pending prediction per step
        with torch.no_grad():
            h = stage.block(x)
        pred, saved = _saved_bytes(
            lambda: stage.interface.predict(h, context), params | {h.untyped_storage().data_ptr()}
        )
        ctx = 0 if context is None else context.numel() * context.element_size()
        parts["pending"] = h.numel() * 4 + pred.numel() * pred.element_size() + saved + ctx
    if isinstance(rule, TrueGradient) and rule.every and not stage.top:
        per_step = (K - 1 - k) / rule.every  # more folded batches in flight per step of S
        inp = x.detach().requires_grad_(k > 0)
        _, saved = _saved_bytes(lambda: stage.block(inp), params)
        weights = sum(t.numel() * t.element_size() for t in [*stage.block.parameters(), *stage.block.buffers()])
        applied = 0 if stage.interface.zero else sum(p.numel() * p.element_size() for p in stage.block.parameters())
        flight = saved + weights + applied + out_bytes + inp.numel() * inp.element_size()
        parts["folded"] = round(per_step * flight)
    return {"stage": k, "bytes_per_step": sum(parts.values()), "parts": parts}


# ---------------------------------------------------------------------- the worker's hook
def resolve_auto_staleness(pcfg, rt, resume: bool):
    """`pcfg` with S derived ([Note: auto staleness]), the same on every rank; on resume, the S the run's
    checkpoint was written with."""
    from synthgrad.parallel.config import ScheduleKind

    saved = None
    if resume and rt.rank == 0:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            config = json.loads((Path(pcfg.train.out) / "checkpoint.json").read_text())["config"]
            saved = (int(config["max_staleness"]), config.get("staleness_basis"))
    saved = rt.broadcast_object(saved, src=0)
    if saved is not None:
        return dataclasses.replace(pcfg, max_staleness=saved[0], staleness_basis=saved[1])
    if pcfg.schedule not in (ScheduleKind.DECOUPLED, ScheduleKind.STALE):
        basis = {"staleness": pcfg.max_staleness, "note": f"--schedule {pcfg.schedule.value} has no staleness bound"}
        return dataclasses.replace(pcfg, staleness_basis=basis)
    with torch.random.fork_rng(devices=[]):  # the run's own random streams are untouched
        mine = measure_step_time(pcfg, rt.rank, rt.device)
        memory = staleness_memory(pcfg, rt.rank, rt.device)
    step = rt.all_reduce([mine], "max")[0]
    _, _, shapes = _network(pcfg, torch.device("cpu"))
    message = max(math.prod(s) for s in shapes[:-1]) * pcfg.train.batch_size * 4
    link = LinkSpec(pcfg.link_delay_ms / 1e3, parse_bandwidth(pcfg.link_bandwidth))
    basis = derive_staleness(step, link, message, measured=measure_link(rt, message))  # [Note: measured link]
    s = basis["staleness"]
    memories = rt.all_gather_object(memory)
    basis["memory_per_step_mb"] = [round(m["bytes_per_step"] / 2**20, 3) for m in memories]
    basis["memory_parts"] = [m["parts"] for m in memories]
    basis["extra_memory_mb_vs_s1"] = [round((s - 1) * m["bytes_per_step"] / 2**20, 2) for m in memories]
    if rt.rank == 0:
        per = ", ".join(f"stage {m['stage']} {m['bytes_per_step'] / 2**20:.1f} MiB" for m in memories)
        real = basis["measured_link"]
        measured = "negligible" if real["negligible"] else f"{real['delay_ms']:.1f} + {real['transfer_ms']:.1f} ms"
        print(f"--max-staleness auto: S = {s} (step {basis['step_time_ms']:.1f} ms, round trip "
              f"{basis['round_trip_ms']:.1f} ms = {basis['round_trip_steps']:.2f} steps (measured link: {measured} "
              f"one way), +1, +{MARGIN} margin"
              f"{'; bandwidth-bound: no S hides a transfer longer than a step' if basis['bandwidth_bound'] else ''})"
              f"; each step of S holds {per}", flush=True)  # fmt: skip
    return dataclasses.replace(pcfg, max_staleness=s, staleness_basis=basis)


__all__ = ["derive_staleness", "measure_link", "measure_step_time", "resolve_auto_staleness", "staleness_memory"]
