"""The cost model (issue 22; `synthgrad plan`): samples/s and bubble fraction of every schedule the runtime
supports, for K stages, from measured per-stage compute, message sizes and a link's latency and bandwidth.

[Note: cost model]
    Inputs, a `Profile`: for each of the model's n layers the seconds of forward + backward + update of one batch
    of N examples on one device (`layer_s`), and optionally a fixed cost per layer and micro-batch (kernel
    launches, Python dispatch: `fixed_s`); the bytes per example crossing the cut after each layer (`cut_bytes`:
    the activation going up; the gradient, or the synthesizer's target, coming down has the same size); the
    synthesizer's cost per batch on every stage that has one (`synth_s`, decoupled only); host work per step
    outside the stages (`overhead_s`: the batch's data, the training loop). A link (`LinkSpec`, link.py): one-way
    delay d and bandwidth; one message of n bytes costs c = d + n / bandwidth.

    Stages. The layers are cut into K·v contiguous chunks (`split_layers`), v per rank, placed as the runtime
    places them (`torch_pipelines.placement`: one per rank for gpipe and 1f1b; a loop r, r+K for
    interleaved-1f1b, looped-bfs and zero-bubble; a V r, 2K−1−r for zbv and dualpipev). With M micro-batches,
    rank r computes τ_r = Σ over its layers (layer_s · φ(N/M) / M + fixed_s) per micro-batch. φ(rows) is the
    measured time per row on a micro-batch of that many rows ÷ on the whole batch (`microbatch_cost`, log-linear
    between measured points; benchmarks/cost_model.py measures it for the FCN's layer): small micro-batches run
    matrix products less efficiently. Without measurements φ = 1: linear in the micro-batch size. τ = max_r τ_r,
    Σ = Σ_r τ_r.

    Flushed schedules (exact gradients, one flush per batch). The time of one batch is

        T = M·τ + bubble + 2·v·(M − 1)·c + 2·H·c

    H: the cuts between ranks on one micro-batch's path (K − 1 with one chunk per rank, vK − 1 for a loop,
    2(K − 1) for a V); c: the largest such cut's message (N/M examples). Every micro-batch's round trip is on the
    critical path, and so is the fill and drain across the H cuts: communication does not overlap compute (the
    standard, conservative model). The compute bubble, the fill and drain:

        gpipe, 1f1b, model-parallel (M = 1)   Σ − τ                      (K − 1)/(M + K − 1) when balanced
            GPipe: Huang et al. 2019 (arXiv:1811.06965); 1F1B, PipeDream-Flush: Narayanan et al. 2021
            (arXiv:2006.09503)
        interleaved-1f1b, looped-bfs          (Σ − τ)/v                  (K − 1)/(vM + K − 1) when balanced
            Narayanan et al. SC'21, Megatron-LM (arXiv:2104.04473) §2.2; looped BFS: Lamy-Poirier 2023
            (arXiv:2211.05953)
        zero-bubble (torch: ZB1P, interleaved)  (Σ − τ)/v · (F + B − W)
            ZB-H1's bubble (p − 1)(T_F + T_B − T_W) of Qi et al. ICLR 2024 (arXiv:2401.10241), with F, B (input
            gradient) and W (weight gradient) as fractions of a chunk's F + B + W, divided by v as interleaving
            divides it
        zbv                                   (Σ − τ)/v · max(0, F + B − 2W)
            ZB-V, the same paper: ZB-H2's (p − 1)(T_F + T_B − 2T_W) in chunk times, zero when F = B = W
        dualpipev                             (Σ − τ)/v · (F + B − W)
            conservative: ZB-H1's bubble. DualPipe's own, (PP/2 − 1)(F&B + B − 3W) (DeepSeek-V3 report,
            arXiv:2412.19437, Table 2), counts on overlapping a forward and a backward chunk on two streams,
            which one stream of ops does not give

    These are steady-state bounds, and conservative about links. `predict` plays torch's own order instead
    ([Note: simulated schedules] in schedule_sim.py): the action list of the multi-stage schedules (v = 2), and
    GPipe's and 1F1B's procedural order written out. With few micro-batches the steady state is never reached
    (zero bubble at K = 2, M = 2: 30 % more time than its bound, measured and simulated alike), and the round trips
    partly overlap compute (1F1B at K = 2, M = 4, 20 ms one way: the closed form's 8 one-way delays per step are
    about 4 on the critical path, measured and simulated alike; the closed form was 29 % under the measured
    samples/s). The closed form remains for model-parallel and for lists longer than the simulation's limit.

    F, B, W: `forward_fraction` of a layer's work is its forward (default 1/3: the backward costs two forwards,
    one for the input gradient and one for the weight gradient), `weight_fraction` of the backward is W (1/2).
    With those, ZB1P's bubble is a third of interleaved 1F1B's and ZB-V's is zero. These bounds assume the
    schedule reaches its steady state, and no cost for splitting the backward into B and W.

    Asynchronous pipelines (no flush; one batch per step, M = 1). Stage r is busy t_r per step (its layers, plus
    the synthesizer on every stage but the last for `decoupled`); the slowest sets the step: T = max_r t_r
    (PipeDream's throughput, Narayanan et al. SOSP 2019). A staleness bound S hides the link's round trip when
    S ≥ 1 + ⌈2(d + x)/T⌉ (`derive_staleness`, [Note: auto staleness] in staleness.py; x: a batch's message over
    the bandwidth). With a smaller S a stage waits for the rest: S + 1 steps must span 2T + 2(d + x), so

        period = max(T, x, (2T + 2(d + x))/(S + 1))

    (x: a link carries one message per x). `auto` takes the derived S plus its margin, as the runtime does.

    single: one process runs every layer: T = Σ_layers (layer_s + fixed_s).

    Output: samples/s = N / (T + overhead_s); bubble fraction = 1 − Σ_r busy_r / (K·T), the share of the ranks'
    time spent idle (fill and drain, imbalance, waiting on links), (K − 1)/(M + K − 1) for balanced GPipe.

[Note: action cost]
    torch's pipeline runtime spends host time on every action it runs, whatever the layer's size: a forward or
    backward of a chunk goes through the stage's Python (argument checks, detaching, autograd.grad over the
    chunk's outputs), and every send and receive through a gloo request. With small layers or many micro-batches
    this is a large share of the step: on the 7 × 1024 FCN, zero bubble at M = 4 runs 48 actions per rank a step.
    `Profile.action_s` holds the cost of one action (a chunk's F, B, I or W, one send, one receive) for each of
    torch's two runtimes: `single-stage` (GPipe and 1F1B, `PipelineScheduleSingle`, which batches a micro-batch's
    sends and receives) and `multi-stage` (the schedules with an action list, `_PipelineScheduleRuntime`). The
    simulation holds the rank for it before each action; the closed forms add each rank's actions per
    micro-batch times the cost to τ_r (`_host_per_microbatch`). synthgrad's own runtime (model-parallel, stale,
    decoupled) has its host cost in its measured stage times and overhead, so none is added there.

    The costs are a property of the runtime on a machine, measured apart from any run they help predict:
    benchmarks/cost_model.py times 1F1B, interleaved 1F1B and zero bubble on a model too narrow to compute
    (width 8) at M = 2, 4, 8, K = 2, and takes each schedule's step time per extra micro-batch (least squares).
    A rank runs 4 actions per micro-batch under 1F1B (F, B, a send, a receive), 10 under interleaved 1F1B and 12
    under zero bubble (torch's lists): single-stage = 1F1B's slope / 4; multi-stage = the least-squares cost per
    action of the other two slopes. Why one cost per runtime and not per kind of action: the three slopes do not
    fit costs per kind (solving them gives F + B < 0), while one cost per runtime fits both multi-stage
    schedules within the measurement's noise (three measurements, 2026-12-05: interleaved 1F1B 4.7–5.0 ms and
    zero bubble 4.6–5.0 ms per micro-batch for 10 and 12 actions; 1F1B 0.9–1.6 ms for 4). The tiny model still
    dispatches its layers' kernels, which the calibrated layer times hold too: a few µs per layer and action,
    left in.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from synthgrad.errors import ConfigError
from synthgrad.parallel.link import LinkSpec
from synthgrad.parallel.partition import split_layers
from synthgrad.parallel.schedule_sim import MAX_ACTIONS, simulate, single_stage_order, torch_order
from synthgrad.parallel.staleness import MARGIN, derive_staleness
from synthgrad.parallel.torch_pipelines import SCHEDULES as TORCH_SCHEDULES
from synthgrad.parallel.torch_pipelines import SINGLE_STAGE, default_microbatches, placement, stages_per_rank

FLUSHED = ("model-parallel", "gpipe", "1f1b", "interleaved-1f1b", "looped-bfs", "zero-bubble", "zbv", "dualpipev")
ASYNC = ("stale", "decoupled")
SCHEDULES = ("single", *FLUSHED, *ASYNC)
INPUT_FEATURES = {"mnist": 784, "cifar10": 3072}
NO_LINK = LinkSpec()  # no delay, unlimited bandwidth
ACTION_RUNTIMES = ("single-stage", "multi-stage")
# their backward is I then W (DualPipeV's is partly a whole B: the closed form over-counts it a little)
SPLIT_BACKWARD = ("zero-bubble", "zbv", "dualpipev")


@dataclass(frozen=True)
class Profile:
    """What one batch costs, layer by layer ([Note: cost model])."""

    layer_s: tuple[float, ...]  # forward + backward + update of each layer, one batch, seconds
    cut_bytes: tuple[float, ...]  # bytes per example crossing the cut after layer i (n − 1 cuts)
    batch_size: int
    fixed_s: float = 0.0  # per layer and micro-batch (launches, dispatch)
    forward_fraction: float = 1 / 3  # F / (F + B + W)
    weight_fraction: float = 0.5  # W / (B + W)
    synth_s: float = 0.0  # the synthesizer, per batch, on each stage that has one (decoupled)
    overhead_s: float = 0.0  # per step, outside the stages
    # measured (rows, time per row ÷ time per row at the whole batch) pairs: how much less efficient a layer is
    # on a micro-batch of that many rows; empty: linear in the rows (the default assumption)
    microbatch_cost: tuple[tuple[int, float], ...] = ()
    # measured (runtime, seconds) pairs: the host's cost of one action (a chunk's F, B, I or W, a send, a receive)
    # of torch's pipeline runtime, whatever the layer's size ([Note: action cost]); runtimes single-stage (GPipe,
    # 1F1B) and multi-stage (the rest); empty: free
    action_s: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if not self.layer_s:
            raise ConfigError("a profile needs at least one layer")
        if len(self.cut_bytes) != len(self.layer_s) - 1:
            n, cuts = len(self.layer_s), len(self.cut_bytes)
            raise ConfigError(f"{n} layers need {n - 1} cut sizes, got {cuts}")
        numbers = {"layer time": self.layer_s, "message size": self.cut_bytes, "fixed time": [self.fixed_s],
                   "synthesizer time": [self.synth_s], "overhead": [self.overhead_s]}  # fmt: skip
        for what, values in numbers.items():
            if any(not (math.isfinite(v) and v >= 0) for v in values):
                raise ConfigError(f"every {what} must be a finite number >= 0, got {list(values)}")
        if self.batch_size < 1:
            raise ConfigError(f"the batch size must be >= 1, got {self.batch_size}")
        if any(not (rows >= 1 and math.isfinite(f) and f > 0) for rows, f in self.microbatch_cost):
            raise ConfigError(f"micro-batch costs must be (rows >= 1, factor > 0) pairs, got {self.microbatch_cost}")
        if any(kind not in ACTION_RUNTIMES or not (math.isfinite(t) and t >= 0) for kind, t in self.action_s):
            raise ConfigError(f"action costs must be (runtime in {'/'.join(ACTION_RUNTIMES)}, seconds >= 0) pairs, "
                              f"got {self.action_s}")  # fmt: skip
        for what, v in (("forward fraction", self.forward_fraction), ("weight fraction", self.weight_fraction)):
            if not 0 <= v <= 1:
                raise ConfigError(f"the {what} must be in 0..1, got {v}")

    @property
    def layers(self) -> int:
        return len(self.layer_s)

    def host_s(self, schedule: str) -> float:
        """The host's cost of one action of torch's runtime for `schedule` ([Note: action cost]); 0 for
        synthgrad's own schedules."""
        if schedule not in TORCH_SCHEDULES:
            return 0.0
        return dict(self.action_s).get("single-stage" if schedule in SINGLE_STAGE else "multi-stage", 0.0)

    @classmethod
    def uniform(cls, stage_s: Sequence[float], bytes_per_example: float, batch_size: int, **kw: Any) -> Profile:
        """Stages of the given times, each as two equal halves (so that two virtual stages per rank halve it),
        with `bytes_per_example` at every cut."""
        layer_s = tuple(s / 2 for s in stage_s for _ in range(2))
        return cls(layer_s, (float(bytes_per_example),) * (len(layer_s) - 1), batch_size, **kw)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def row_factor(self, rows: float) -> float:
        """Time per row on a micro-batch of `rows` ÷ on the whole batch: log-linear between the measured points
        (and the whole batch's 1), the smallest point's value below them; 1 without points."""
        if not self.microbatch_cost or rows >= self.batch_size:
            return 1.0
        points = sorted({**dict(self.microbatch_cost), self.batch_size: 1.0}.items())
        if rows <= points[0][0]:
            return points[0][1]
        for (r0, f0), (r1, f1) in zip(points, points[1:], strict=False):
            if rows <= r1:
                return f0 + math.log(rows / r0) / math.log(r1 / r0) * (f1 - f0)
        return 1.0


@dataclass(frozen=True)
class Prediction:
    """One schedule on K ranks."""

    schedule: str
    stages: int
    microbatches: int
    per_rank: int  # virtual stages (chunks) per rank
    step_s: float  # one batch through the stages (no host overhead)
    samples_per_s: float
    bubble: float  # idle share of the ranks' time
    rank_s: tuple[float, ...]  # each rank's compute per batch
    comm_s: float  # link time on the critical path, per batch
    staleness: int | None = None
    staleness_needed: int | None = None  # the least S that hides the round trip
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def zb_fractions(profile: Profile) -> tuple[float, float, float]:
    """(F, B, W) as fractions of a layer's work."""
    f = profile.forward_fraction
    return f, (1 - f) * (1 - profile.weight_fraction), (1 - f) * profile.weight_fraction


def bubble_factor(schedule: str, v: int, profile: Profile) -> float:
    """The compute bubble's multiple of the fill and drain Σ − τ ([Note: cost model])."""
    f, b, w = zb_fractions(profile)
    if schedule in ("gpipe", "1f1b", "model-parallel"):
        return 1.0
    if schedule in ("interleaved-1f1b", "looped-bfs"):
        return 1 / v
    if schedule in ("zero-bubble", "dualpipev"):  # ZB-H1 (dualpipev: conservatively the same)
        return max(0.0, f + b - w) / v
    if schedule == "zbv":  # ZB-V / ZB-H2
        return max(0.0, f + b - 2 * w) / v
    raise ConfigError(f"no bubble formula for {schedule!r}")


def predict(
    schedule: str, profile: Profile, stages: int, *, microbatches: int | None = None, link: LinkSpec = NO_LINK,
    staleness: int | str = 2, simulate_order: bool = True,
) -> Prediction:  # fmt: skip
    """Samples/s and bubble of `schedule` on `stages` ranks ([Note: cost model]). Raises ConfigError where the
    configuration cannot exist (more chunks than layers, more micro-batches than examples). `simulate_order=False`:
    the closed form for the multi-stage schedules too, not torch's order ([Note: simulated schedules])."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {schedule!r} (one of {', '.join(SCHEDULES)})")
    K = 1 if schedule == "single" else stages
    if K < 1:
        raise ConfigError(f"K must be >= 1, got {stages}")
    if schedule in ASYNC and K < 2:
        raise ConfigError(f"{schedule} needs K >= 2")
    v = stages_per_rank(schedule) if schedule in TORCH_SCHEDULES else 1
    n, N = profile.layers, profile.batch_size
    if K * v > n:
        raise ConfigError(f"{K} ranks × {v} chunk(s) need {K * v} layers; the model has {n}")
    M = (microbatches or default_microbatches(schedule, K, v)) if schedule in TORCH_SCHEDULES else 1
    if not 1 <= M <= N:
        raise ConfigError(f"{M} micro-batches of a batch of {N}: need 1..{N}")
    chunks = split_layers(n, K * v)
    owner = {j: r for r in range(K) for j in placement(schedule, r, K, v)}
    slow = profile.row_factor(N / M)  # small micro-batches run less efficiently (measured, where given)
    tau = [sum(profile.layer_s[i] * slow / M + profile.fixed_s for j, c in enumerate(chunks) if owner[j] == r
               for i in c) for r in range(K)]  # fmt: skip
    if schedule in TORCH_SCHEDULES and profile.action_s:  # the closed forms: each rank's host cost per micro-batch
        tau = [t + _host_per_microbatch(schedule, profile, owner, r, K * v) for r, t in enumerate(tau)]
    cross = [chunks[j][-1] for j in range(K * v - 1) if owner[j] != owner[j + 1]]
    message = max((profile.cut_bytes[i] * N / M for i in cross), default=0.0)
    c = (link.delay_s + link.transfer_s(message)) if cross else 0.0

    if schedule == "single":
        step = sum(s + profile.fixed_s for s in profile.layer_s)
        return _prediction(schedule, 1, 1, 1, step, [step], 0.0, profile)

    order = None
    if schedule in FLUSHED and simulate_order and 3 * K * v * M <= MAX_ACTIONS:
        order = single_stage_order(schedule, K, M) if schedule in SINGLE_STAGE else torch_order(schedule, K, M)
    if order is not None:
        per_mb = [sum(profile.layer_s[i] * slow / M + profile.fixed_s for i in c) for c in chunks]
        f, b, w = zb_fractions(profile)
        share = {"F": f, "I": b, "W": w, "B": b + w}

        def compute_s(kind: str, stage: int) -> float:
            return per_mb[stage] * share[kind]

        def transfer_s(cut: int) -> float:
            return link.transfer_s(profile.cut_bytes[chunks[cut][-1]] * N / M)

        host = profile.host_s(schedule)
        step, busy = simulate(order, compute_s, transfer_s, owner.__getitem__, link.delay_s, lambda kind: host)
        free, _ = simulate(order, compute_s, lambda cut: 0.0, owner.__getitem__, host_s=lambda kind: host)
        return _prediction(schedule, K, M, v, step, busy, step - free, profile,
                           note="torch's action order, simulated")  # fmt: skip

    if schedule in FLUSHED:
        fill = sum(tau) - max(tau)
        comm = 2 * v * (M - 1) * c + 2 * len(cross) * c
        step = M * max(tau) + fill * bubble_factor(schedule, v, profile) + comm
        note = "" if v == 1 else f"closed form: more than {MAX_ACTIONS} actions to simulate, or no torch order"
        return _prediction(schedule, K, M, v, step, [M * t for t in tau], comm, profile, note=note)

    busy = [t + (profile.synth_s if schedule == "decoupled" and r < K - 1 else 0.0) for r, t in enumerate(tau)]
    T = max(busy)
    x = link.transfer_s(message)
    needed = derive_staleness(T, link, round(message), margin=0)["staleness"] if T > 0 else 1
    S = needed + MARGIN if staleness == "auto" else int(staleness)
    if S < 0:
        raise ConfigError(f"the staleness bound must be >= 0 or auto, got {staleness}")
    period = max(T, x, (2 * T + 2 * (link.delay_s + x)) / (S + 1))
    if x > T:
        note = f"bandwidth-bound: a message takes {x * 1e3:.3g} ms, more than a step"
    elif needed > S:
        note = f"S={S} < {needed} needed: waits {(period - T) * 1e3:.3g} ms a step"
    else:
        note = f"S={S} hides the {2 * (link.delay_s + x) * 1e3:.3g} ms round trip"
    return _prediction(schedule, K, 1, 1, period, busy, period - T, profile, S, needed, note)


def _host_per_microbatch(schedule: str, profile: Profile, owner: dict[int, int], rank: int, chunks: int) -> float:
    """Rank's host cost for one micro-batch ([Note: action cost]): one action for each of its chunks' forward and
    backward (two, I and W, for the split-backward schedules), and a send and a receive at every cut to another
    rank (one each way)."""
    actions = 0
    for j in (j for j in range(chunks) if owner[j] == rank):
        actions += 3 if schedule in SPLIT_BACKWARD else 2
        actions += 2 * ((j > 0 and owner[j - 1] != rank) + (j < chunks - 1 and owner[j + 1] != rank))
    return actions * profile.host_s(schedule)


def _prediction(schedule, K, M, v, step, busy, comm, profile, S=None, needed=None, note="") -> Prediction:
    total = step + profile.overhead_s
    if total <= 0:
        raise ConfigError("every time in the profile is zero: nothing to predict")
    bubble = 1 - sum(busy) / (K * step) if step > 0 else 0.0
    return Prediction(schedule, K, M, v, step, profile.batch_size / total, max(0.0, bubble), tuple(busy), comm,
                      S, needed, note)  # fmt: skip


def plan(
    profile_for: Callable[[int], Profile], stages: Sequence[int], schedules: Sequence[str], *,
    microbatches: int | None = None, link: LinkSpec = NO_LINK, staleness: int | str = 2,
) -> list[dict[str, Any]]:  # fmt: skip
    """One row per (schedule, K) (single: once, K = 1): a prediction's fields, or `skipped` with the reason."""
    rows = []
    for schedule in schedules:
        for K in [1] if schedule == "single" else stages:
            try:
                p = predict(schedule, profile_for(K), K, microbatches=microbatches, link=link, staleness=staleness)
                rows.append(p.as_dict())
            except ConfigError as e:
                rows.append({"schedule": schedule, "stages": K, "skipped": str(e)})
    return rows


__all__ = [
    "SCHEDULES",
    "Prediction",
    "Profile",
    "bubble_factor",
    "plan",
    "predict",
]
