"""The multi-stage pipeline schedules as torch runs them: torch's own action lists, timed by a small simulation.

[Note: simulated schedules]
    The cost model's closed forms ([Note: cost model] in costmodel.py) give each schedule's steady-state bubble.
    With few micro-batches and an uneven split they can be far off: torch's interleaved zero bubble at K = 2,
    M = 2 on the 7-layer FCN (chunks of 2, 2, 2, 1 layers; rank 0 holds chunks 0 and 2, 64 % of the work) ran
    99 ms a step where the closed form said 75 ms. The order is the cause: with two micro-batches ZB1P never
    reaches its steady state, and rank 0's weight-gradient work queues behind input gradients it must wait for.

    So for the schedules whose action lists torch computes ahead of time (`pipeline_order_with_comms` of its
    multi-stage schedules: interleaved 1F1B, looped BFS, interleaved zero bubble, ZB-V, DualPipeV), the cost model
    builds that list (`torch_order`: the schedule class constructed on stand-in stages, which is all its order
    needs) and plays it (`simulate`). GPipe and 1F1B torch runs procedurally (`_step_microbatches` of
    `ScheduleGPipe` and `Schedule1F1B`); `single_stage_order` writes that procedure out as the same kind of list.
    (torch 2.13's 1F1B runs K − r forwards on rank r before its first backward, one more than the textbook's
    K − 1 − r and than torch's own `_get_pipeline_order`, which only draws the schedule.) The link matters here:
    the closed form puts every round trip on the critical path, while in torch's order a micro-batch's round trip
    overlaps the forwards of the warmup. Each rank runs its actions in order, one at a time:

        F, I, W, B   busy for the chunk's forward, input-gradient, weight-gradient or whole backward time of one
                     micro-batch (OVERLAP_F_B, DualPipeV's pair: its forward then its backward, one stream)
        SEND_F/B     returns at once; the message occupies the directed link for bytes / bandwidth after the
                     link's previous message, and arrives one-way delay d after that
        RECV_F/B     posted and not waited on (torch's runtime posts an irecv); the F, I or B that reads the
                     message waits until it has arrived
        anything else (UNSHARD, RESHARD, REDUCE_GRAD)  free

    Each F, I, W, B, send and receive also holds its rank for a host cost (`host_s(kind)`, zero unless the
    profile has measured ones: torch's runtime spends Python and gloo time on every action, whatever the layer's
    size; [Note: action cost] in costmodel.py), before it runs.

    The step is the last rank's finish; each rank's busy time is its compute and host costs. Link time on the
    critical path is the step minus the same simulation with free links. The simulation is exact for the order
    and the stated costs; what it leaves out: sends that block, and any host cost that depends on the message.
    Lists grow as K·M (the largest here, K = 64 and M = 128, take ~2 s to build); beyond `MAX_ACTIONS` compute
    actions the cost model falls back on the closed form and says so.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Sequence

COMPUTE = frozenset({"F", "I", "W", "B"})
#: Compute actions (K·v·M·3) above which the closed form is used instead of building torch's list.
MAX_ACTIONS = 6_000

Op = tuple[str, int, int]  # (kind, virtual stage, micro-batch)


def _stand_in_stages(rank: int, ranks: int, indices: Sequence[int]) -> list:
    """What a torch schedule's constructor reads of its stages to compute the order (pinned torch 2.13)."""
    import torch

    n = len(indices) * ranks
    return [types.SimpleNamespace(group_size=ranks, group_rank=rank, num_stages=n, stage_index=i, is_first=i == 0,
                                  is_last=i == n - 1, submod=torch.nn.Identity(), stage_index_to_group_rank=None)
            for i in indices]  # fmt: skip


@functools.lru_cache(maxsize=128)
def torch_order(schedule: str, ranks: int, microbatches: int) -> tuple[tuple[Op, ...], ...] | None:
    """Each rank's actions, with their sends and receives, as torch's `schedule` orders them; None where torch
    does not compute the list ahead of time (GPipe, 1F1B) or cannot build it (its error is the constraint's)."""
    from torch.distributed.pipelining import schedules

    from synthgrad.parallel.torch_pipelines import SCHEDULES, SINGLE_STAGE, placement

    if schedule not in SCHEDULES or schedule in SINGLE_STAGE:
        return None
    cls = getattr(schedules, SCHEDULES[schedule])
    try:
        built = cls(_stand_in_stages(0, ranks, placement(schedule, 0, ranks)), microbatches)
        lists = built.pipeline_order_with_comms
    except (ValueError, AssertionError, AttributeError, TypeError, KeyError, IndexError):
        return None
    return tuple(tuple(_ops(lists[r])) for r in range(ranks))


@functools.lru_cache(maxsize=128)
def single_stage_order(schedule: str, ranks: int, microbatches: int) -> tuple[tuple[Op, ...], ...] | None:
    """Each rank's actions under torch's single-stage GPipe or 1F1B (`ScheduleGPipe`, `Schedule1F1B` of torch
    2.13), which torch runs procedurally rather than from a list: written out here from their
    `_step_microbatches` ([Note: simulated schedules]). None for any other schedule, or for 1F1B with fewer
    micro-batches than stages (torch refuses it)."""
    from synthgrad.parallel.torch_pipelines import SINGLE_STAGE

    K, M = ranks, microbatches
    if schedule not in SINGLE_STAGE or (schedule == "1f1b" and M < K):
        return None
    out = []
    for r in range(K):
        if schedule == "gpipe":  # every forward, then every backward, in micro-batch order
            ops = [op for i in range(M) for op in _forward(r, K, i)]
            ops += [op for i in range(M) for op in _backward(r, K, i)]
        else:  # 1F1B: K − r forwards, then one backward and one forward in turn, then the remaining backwards
            warmup = min(M, K - r)
            ops = [op for i in range(warmup) for op in _forward(r, K, i)]
            for i in range(M - warmup):  # torch fuses each send with the next receive: the same order
                ops += _backward(r, K, i) + _forward(r, K, warmup + i)
            ops += [op for i in range(M - warmup, M) for op in _backward(r, K, i)]
        out.append(tuple(ops))
    return tuple(out)


def _forward(r: int, ranks: int, mb: int) -> list[Op]:
    """Rank r's forward of micro-batch mb under a single-stage schedule: receive (but on the first), compute,
    send (but on the last)."""
    return ([] if r == 0 else [("RECV_F", r, mb)]) + [("F", r, mb)] + ([] if r == ranks - 1 else [("SEND_F", r, mb)])


def _backward(r: int, ranks: int, mb: int) -> list[Op]:
    return ([] if r == ranks - 1 else [("RECV_B", r, mb)]) + [("B", r, mb)] + ([] if r == 0 else [("SEND_B", r, mb)])


def _ops(actions) -> list[Op]:
    out: list[Op] = []
    for a in actions:
        if a is None:
            continue
        kind = a.computation_type.name
        kind = {"FORWARD": "F", "BACKWARD_INPUT": "I", "BACKWARD_WEIGHT": "W", "FULL_BACKWARD": "B"}.get(kind, kind)
        if kind == "OVERLAP_F_B":
            out += _ops(a.sub_actions)
        else:
            out.append((kind, a.stage_index, a.microbatch_index if a.microbatch_index is not None else -1))
    return out


def simulate(
    order: Sequence[Sequence[Op]], compute_s: Callable[[str, int], float], transfer_s: Callable[[int], float],
    owner: Callable[[int], int], delay_s: float = 0.0, host_s: Callable[[str], float] | None = None,
) -> tuple[float, list[float]]:  # fmt: skip
    """Play `order` ([Note: simulated schedules]): (the step's seconds, each rank's busy seconds).

    compute_s(kind, stage): one micro-batch's F / I / W / B on that virtual stage; transfer_s(stage): the bytes
    crossing the cut after `stage` over the bandwidth (the same both ways); owner(stage): its rank; host_s(kind):
    the host's cost of one action of that kind (F, I, W, B, SEND, RECV; none if not given)."""
    host = host_s or (lambda kind: 0.0)
    ranks = len(order)
    clock, busy, pos = [0.0] * ranks, [0.0] * ranks, [0] * ranks
    arrival: dict[tuple[str, int, int], float] = {}
    link_free: dict[tuple[int, int], float] = {}
    posted: list[set[tuple[str, int, int]]] = [set() for _ in range(ranks)]
    moved = True
    while moved:
        moved = False
        for r in range(ranks):
            ops = order[r]
            while pos[r] < len(ops):
                kind, stage, mb = ops[pos[r]]
                if kind in COMPUTE:
                    needs = ("F" if kind == "F" else "B", stage, mb)
                    if needs in posted[r]:  # its input comes over a link: wait for it to arrive
                        if needs not in arrival:
                            break  # the sender has not got there yet
                        clock[r] = max(clock[r], arrival[needs])
                    t = compute_s(kind, stage) + host(kind)
                    clock[r] += t
                    busy[r] += t
                elif kind in ("SEND_F", "SEND_B"):
                    to = stage + 1 if kind == "SEND_F" else stage - 1
                    cut = stage if kind == "SEND_F" else stage - 1
                    link = (r, owner(to))
                    clock[r] += host("SEND")
                    busy[r] += host("SEND")
                    start = max(clock[r], link_free.get(link, 0.0))
                    link_free[link] = start + transfer_s(cut)
                    arrival[(kind[-1], to, mb)] = link_free[link] + delay_s
                elif kind in ("RECV_F", "RECV_B"):  # posted, not waited on: the computation that needs it waits
                    clock[r] += host("RECV")
                    busy[r] += host("RECV")
                    posted[r].add((kind[-1], stage, mb))
                pos[r] += 1
                moved = True
    if any(pos[r] < len(order[r]) for r in range(ranks)):
        stuck = {r: order[r][pos[r]] for r in range(ranks) if pos[r] < len(order[r])}
        raise RuntimeError(f"the schedule's order deadlocks in the simulation at {stuck}")
    return max(clock), busy
