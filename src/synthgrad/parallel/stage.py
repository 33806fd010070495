"""A decoupled stage: one contiguous block of layers, its optimizer and its synthesizer, in its own process.

Every process builds the same `DecoupledSequential` (same seed), cut at the stage boundaries, and runs only its
own module with the very operations `DecoupledSequential.train_step` is made of (`module_step`,
`train_synthesizer`, `train_input_synthesizer`), so the maths exists once. Per step t, stage k:

    1. takes its input: the batch (k = 0), h_{k-1}(t) from stage k−1, or with complete unlock I_k(x_t);
    2. module_step: forward, synthetic gradient ĝ_k(t) = M_k(h_k(t)), update at once — nothing downstream is
       awaited;
    3. sends h_k(t) down (non-blocking) and the carried gradient (∂h_k/∂h_{k-1})ᵀ ĝ_k up, the target of M_{k-1}
       (with folding: the true gradient of an older batch, see `_pack_target`);
    4. trains M_k on every target that has arrived from stage k+1.

[Note: bounded staleness]
    The target of M_k for step t arrives when stage k+1 has processed step t. A stage never starts step t+1
    while the target of a step older than t − S is missing (S = `max_staleness`), so a synthesizer is trained on
    targets at most S of its own steps late, and a fast stage can run at most S steps ahead of a slow one (this
    is also the back-pressure that bounds memory). S = 0 is lockstep: the K-process run then performs the same
    operations in the same order as `train_step`, and equals it (tests/test_parallel.py). A prediction whose
    synthesizer has been updated since is recomputed with the current synthesizer before it is regressed.
    With complete unlock the real input of step t likewise may arrive up to S steps late; it then trains I_k and
    runs the real forward pass (batch-norm statistics, and the real input of stage k+1).
"""

from __future__ import annotations

import collections
import logging
import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from synthgrad.core import one_hot_context
from synthgrad.decoupled import DecoupledSequential, ModuleStep
from synthgrad.parallel.runtime import TAG_FORWARD, TAG_TARGET, Runtime

log = logging.getLogger("synthgrad.parallel")


@dataclass
class _Pending:
    step: int
    h: Tensor  # the activation M_k read, detached
    context: Tensor | None
    prediction: Tensor | None  # with graph, valid while the synthesizer is unchanged
    version: int  # synthesizer updates done when the prediction was made
    update: bool


class DecoupledStage:
    """Stage `k` of a `DecoupledSequential` whose modules are the stages of a K-process job."""

    def __init__(
        self,
        net: DecoupledSequential,
        runtime: Runtime,
        shapes: list[tuple[int, ...]],
        *,
        max_staleness: int,
        num_classes: int,
        conditioned: bool,
    ) -> None:
        self.net, self.rt = net, runtime
        self.k, self.K = runtime.rank, runtime.world_size
        self.shapes = shapes  # per-example output shape of every stage
        self.max_staleness = max_staleness
        self.num_classes = num_classes
        self.conditioned = conditioned
        self.pending: collections.deque[_Pending] = collections.deque()
        self.inputs_pending: collections.deque[tuple[int, Tensor, Tensor | None, bool]] = collections.deque()
        self.sends: collections.deque = collections.deque()
        self.target_work = None  # (work, buffer) of the posted receive of the next target
        self.input_work = None  # (work, buffer) of the posted receive of the next real input (unlock)
        self.synth_version = 0
        self.max_seen_staleness = 0
        self.sg_loss_sum = 0.0
        self.sg_count = 0

    @property
    def top(self) -> bool:
        return self.k == self.K - 1

    def _context(self, y: Tensor) -> Tensor | None:
        return one_hot_context(y, self.num_classes) if self.conditioned else None

    def _send(self, tensor: Tensor, dst: int, tag: int) -> None:
        self.sends.append(self.rt.isend(tensor, dst, tag))
        while len(self.sends) > 4 * (self.max_staleness + 2):  # completed long ago in practice; bounds memory
            with self.rt.timing.measure("comm"):
                self.rt.wait(self.sends.popleft(), dst)

    # ------------------------------------------------------------------ one step
    def step(self, t: int, x: Tensor | None, y: Tensor) -> float | None:
        """Run step t on batch (x, y) (every stage sees the same indices). Returns the loss on the top stage.

        `x` is needed by the first stage, and by every stage with complete unlock (for I_k(x)); else None."""
        net, rt, k = self.net, self.rt, self.k
        updates = net.draw_updates()  # the same draws on every stage: one generator, one seed
        context = self._context(y)
        batch = y.shape[0]
        if net.unlocked and k > 0:
            self.inputs_pending.append((t, x, context, updates[k]))
            source = self._drain_inputs(t, block_older_than=t - self.max_staleness)
            if source is None:  # the real input of step t has not arrived yet: I_k as it is now
                with rt.timing.measure("compute"), torch.no_grad():
                    source = net.input_synthesizers[k - 1](x, context)
            synthetic_input = True
        elif k > 0:
            source = rt.recv((batch, *self.shapes[k - 1]), k - 1, TAG_FORWARD)
            synthetic_input = False
        else:
            source, synthetic_input = x, False
        with rt.timing.measure("compute"):
            result = net.module_step(k, source, y, context, updates[k], synthetic_input=synthetic_input)
        if k > 0:
            self._send(self._pack_target(result), k - 1, TAG_TARGET)
        if not self.top:
            if not synthetic_input:
                self._send(result.output.detach(), k + 1, TAG_FORWARD)
            self.pending.append(
                _Pending(t, result.output.detach(), context, result.synthetic, self.synth_version, updates[k])
            )
            self._drain_targets(block_older_than=t - self.max_staleness + 1)
        net.steps += 1
        rt.timing.steps += 1
        return result.loss

    def _drain_inputs(self, t: int, block_older_than: int) -> Tensor | None:
        """Complete unlock: train I_k on real inputs that have arrived; wait for those older than allowed.

        Returns I_k(x_t) as computed for its own training step if step t's real input was among them, else None.
        """
        net, rt, k = self.net, self.rt, self.k
        fresh = None
        while self.inputs_pending:
            step, x, context, update = self.inputs_pending[0]
            if self.input_work is None:
                buf = torch.empty((x.shape[0], *self.shapes[k - 1]), device=rt.device)
                self.input_work = (rt.irecv(buf, k - 1, TAG_FORWARD), buf)
            work, buf = self.input_work
            if step <= block_older_than:
                with rt.timing.measure("wait"):
                    rt.wait(work, k - 1)
            elif not work.is_completed():
                break
            self.input_work = None
            self.inputs_pending.popleft()
            with rt.timing.measure("compute"):
                synthetic_in, _ = net.train_input_synthesizer(k, x, buf, context, update)
                with torch.no_grad():
                    real_out = net.stages[k](buf)  # batch-norm statistics from real inputs
            if step == t:
                fresh = synthetic_in
            if not self.top:
                self._send(real_out, k + 1, TAG_FORWARD)
        return fresh

    def _drain_targets(self, block_older_than: int) -> None:
        """Train M_k on the targets that have arrived; block for any older than the staleness bound allows."""
        net, rt, k = self.net, self.rt, self.k
        while self.pending:
            p = self.pending[0]
            if self.target_work is None:
                buf = torch.empty(p.h.numel() + 1, device=p.h.device) if net.fold_every else torch.empty_like(p.h)
                self.target_work = (rt.irecv(buf, k + 1, TAG_TARGET), buf)
            work, target = self.target_work
            if p.step < block_older_than:
                with rt.timing.measure("wait"):
                    rt.wait(work, k + 1)
            elif not work.is_completed():
                break
            self.target_work = None
            self.pending.popleft()
            self.max_seen_staleness = max(self.max_seen_staleness, net.steps - p.step)
            with rt.timing.measure("compute"):
                if net.fold_every:
                    sg_loss, _ = net.receive_true_gradient(k, self._unpack_target(target, p.h), p.update)
                else:
                    prediction = p.prediction
                    if prediction is None or p.version != self.synth_version:
                        prediction = net.synthesizers[k](p.h, p.context)  # the synthesizer changed since
                    sg_loss, _ = net.train_synthesizer(k, prediction, target, p.update)
            if math.isnan(sg_loss):  # folding: nothing came down with this step's message
                continue
            self.synth_version += int(p.update)
            self.sg_loss_sum += sg_loss
            self.sg_count += 1

    # ------------------------------------------------------------------ folding ([Note: folding in true gradients])
    # With folding, stage k+1 sends one target message per step, as without, so that `drain` stays deterministic:
    # [the true gradient of stage k's oldest folded batch in flight | 1], or [zeros | 0] when it folded nothing.
    def _pack_target(self, result: ModuleStep) -> Tensor:
        if not self.net.fold_every:
            return result.carried
        if result.true_below is None:
            batch = result.output.shape[0]
            return torch.zeros(batch * math.prod(self.shapes[self.k - 1]) + 1, device=result.output.device)
        return torch.cat([result.true_below.flatten(), result.true_below.new_ones(1)])

    @staticmethod
    def _unpack_target(buf: Tensor, h: Tensor) -> Tensor | None:
        return buf[:-1].view_as(h) if buf[-1].item() > 0 else None

    def drain(self) -> None:
        """Finish all outstanding work: every target received and trained on, every send completed."""
        if self.net.unlocked and self.k > 0:
            self._drain_inputs(-1, block_older_than=1 << 62)
        if not self.top:
            self._drain_targets(block_older_than=1 << 62)
        while self.sends:
            with self.rt.timing.measure("comm"):
                self.rt.wait(self.sends.popleft(), -1)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, images: Tensor, labels: Tensor, batch: int = 1000) -> float | None:
        """Test error (%) of the assembled network, pipelined through the stages; returned on every stage."""
        net, rt, k = self.net, self.rt, self.k
        module = net.stages[k]
        module.eval()
        wrong = 0
        t0 = time.perf_counter()
        for i in range(0, len(labels), batch):
            n = min(batch, len(labels) - i)
            h = images[i : i + n] if k == 0 else rt.recv((n, *self.shapes[k - 1]), k - 1, TAG_FORWARD)
            out = module(h)
            if self.top:
                wrong += (out.argmax(1) != labels[i : i + n]).sum().item()
            else:
                rt.wait(rt.isend(out, k + 1, TAG_FORWARD), k + 1)
        module.train()
        error = torch.tensor([100.0 * wrong / len(labels)])
        err = rt.broadcast_object(error.item() if self.top else None, src=self.K - 1)
        rt.timing.extra["eval_s"] = rt.timing.extra.get("eval_s", 0.0) + time.perf_counter() - t0
        return float(err)

    # ------------------------------------------------------------------ checkpoint
    def state(self) -> dict:
        net, k = self.net, self.k
        state = {
            "stage": k,
            "module": net.stages[k].state_dict(),
            "optimizer": net.optimizers[k].state_dict() if net.optimizers[k] else None,
            "generator": net.generator.get_state(),
            "steps": net.steps,
        }
        if not self.top:
            state["synthesizer"] = net.synthesizers[k].state_dict()
            opt = net.synthesizer_optimizers[k]
            state["synthesizer_optimizer"] = opt.state_dict() if opt else None
        if net.unlocked and k > 0:
            state["input_synthesizer"] = net.input_synthesizers[k - 1].state_dict()
            opt = net.input_optimizers[k - 1]
            state["input_optimizer"] = opt.state_dict() if opt else None
        return state

    def load_state(self, state: dict) -> None:
        net, k = self.net, self.k
        if state["stage"] != k:
            raise ValueError(f"checkpoint of stage {state['stage']} loaded into stage {k}")
        net.stages[k].load_state_dict(state["module"])
        if net.optimizers[k]:
            net.optimizers[k].load_state_dict(state["optimizer"])
        net.generator.set_state(state["generator"])
        net.steps = int(state["steps"])
        if not self.top:
            net.synthesizers[k].load_state_dict(state["synthesizer"])
            if net.synthesizer_optimizers[k]:
                net.synthesizer_optimizers[k].load_state_dict(state["synthesizer_optimizer"])
        if net.unlocked and k > 0:
            net.input_synthesizers[k - 1].load_state_dict(state["input_synthesizer"])
            if net.input_optimizers[k - 1]:
                net.input_optimizers[k - 1].load_state_dict(state["input_optimizer"])
