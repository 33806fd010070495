"""The two-network system's training loop (PAPER.md §5; the system: `synthgrad.recurrent.multinet`).

A sample is one digit read by A (B per A-step); a row every `log_every` samples. `steps_to_target` is the A-step
at which B's moving training accuracy (its last tick of each episode, over `accuracy_window` episodes) first
reaches `target_accuracy`; at the end both networks are scored on `TEST_EPISODES` episodes of test digits.
"""

from __future__ import annotations

import torch

from synthgrad import plots
from synthgrad.data import ImageDataset
from synthgrad.recurrent.budget import Budget
from synthgrad.recurrent.multinet import MultiNetSystem, at_target, moving_accuracy
from synthgrad.recurrent.task_config import RecurrentConfig
from synthgrad.recurrent.tasks import MultiNetTask

TEST_EPISODES = 100  # test-split episodes of `batch_size` streams scored at the end (3,200 streams by default)


def train_multinet(cfg: RecurrentConfig, run: Budget, dataset: ImageDataset, saved: dict | None) -> dict:
    """Train the system on episodes from the training digits until the budget is spent; returns the task's
    part of the summary."""
    task = MultiNetTask.from_dataset(dataset, split="train", T=cfg.T)
    torch.manual_seed(cfg.seed)
    system = MultiNetSystem(
        cfg.T, method=cfg.method, a_hidden=cfg.hidden_size, b_hidden=cfg.hidden_size, lr=cfg.lr,
        synthesizer_lr=cfg.synthesizer_lr,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(cfg.seed)
    st: dict = {"recent": [], "recent_a": [], "steps_to_target": None, "sums": _zero_sums()}
    if saved is not None:
        system.load_training_state(saved["training"])
        st = saved["task"]
        generator.set_state(st.pop("generator"))
    while not run.exhausted():
        batch = task.sample(cfg.batch_size, generator)
        ep = system.train_episode(batch)
        run.check_finite(ep.b_loss, "B's loss")
        run.check_finite(ep.a_loss, "A's loss")
        run.check_step(ep.a_loss + ep.b_loss, "the loss of A and B", system)  # an episode's length is fixed
        st["recent"] = moving_accuracy(st["recent"], ep.b_correct / ep.batch, cfg.accuracy_window)
        st["recent_a"] = moving_accuracy(st["recent_a"], ep.a_correct / ep.batch, cfg.accuracy_window)
        if st["steps_to_target"] is None and at_target(st["recent"], cfg.accuracy_window, cfg.target_accuracy):
            st["steps_to_target"] = ep.a_steps
        sums = st["sums"]
        sums["episodes"] += 1
        sums["a_loss"] += ep.a_loss
        sums["b_loss"] += ep.b_loss
        if ep.sg_loss is not None:
            sums["sg_loss"] += ep.sg_loss
        run.postfix(acc=f"{sum(st['recent']) / len(st['recent']):.3f}")
        if run.advance(batch.inputs.shape[0] * batch.inputs.shape[1]):
            run.record(_row(system, st))
            st["sums"] = _zero_sums()
            run.checkpoint(system.training_state(), {**st, "generator": generator.get_state()})
    run.checkpoint(system.training_state(), {**st, "generator": generator.get_state()})
    plots.curves(
        run.progress.history, run.out / "learning_curve.png", x="a_steps",
        ys=[("accuracy", "B: 3s in the last T² steps"), ("a_accuracy", "A: 3s in its window")],
        xlabel="A steps", ylabel=f"training accuracy over the last {cfg.accuracy_window} episodes",
        title=f"two networks, {cfg.method.value}, T={cfg.T}",
    )  # fmt: skip
    return _result(cfg, system, dataset, st)


def _row(system: MultiNetSystem, st: dict) -> dict:
    sums, n = st["sums"], st["sums"]["episodes"]
    return {
        "a_steps": system.a_steps,
        "a_updates": system.a_updates,
        "accuracy": sum(st["recent"]) / len(st["recent"]),
        "a_accuracy": sum(st["recent_a"]) / len(st["recent_a"]),
        "a_loss": sums["a_loss"] / n,
        "b_loss": sums["b_loss"] / n,
        "sg_loss": sums["sg_loss"] / n if system.message is not None else None,
    }


def _result(cfg: RecurrentConfig, system: MultiNetSystem, dataset: ImageDataset, st: dict) -> dict:
    """The summary's two-network part, with both networks' accuracy on `TEST_EPISODES` test episodes."""
    test = MultiNetTask.from_dataset(dataset, split="test", T=cfg.T)
    test_gen = torch.Generator().manual_seed(cfg.seed + 1)
    counts = [system.accuracy(test.sample(cfg.batch_size, test_gen)) for _ in range(TEST_EPISODES)]
    total = sum(n for *_, n in counts)
    return {
        "steps_to_target": st["steps_to_target"],
        "target_accuracy": cfg.target_accuracy,
        "accuracy_window": cfg.accuracy_window,
        "final_accuracy": sum(st["recent"]) / len(st["recent"]) if st["recent"] else None,
        "test_accuracy": sum(b for _, b, _ in counts) / total,
        "test_a_accuracy": sum(a for a, _, _ in counts) / total,
        "a_steps": system.a_steps,
        "a_updates": system.a_updates,
    }


def _zero_sums() -> dict:
    return {"episodes": 0, "a_loss": 0.0, "b_loss": 0.0, "sg_loss": 0.0}
