"""Training: the one loop (`fit`), the run folder, the evaluator, and `train`, what `synthgrad train` runs."""

from __future__ import annotations

from synthgrad.config import Method, TrainConfig
from synthgrad.data import load_dataset
from synthgrad.errors import ConfigError
from synthgrad.training.build import build_network, model_of
from synthgrad.training.chain_job import ChainJob
from synthgrad.training.evaluate import evaluate
from synthgrad.training.loop import Job, Plan, batch_order, fit
from synthgrad.training.run_folder import Progress, RunFolder, flush_denormals, read_rows, show_progress
from synthgrad.training.task import Task, classification, training_examples

__all__ = [
    "ChainJob",
    "Job",
    "Plan",
    "Progress",
    "RunFolder",
    "Task",
    "batch_order",
    "build_network",
    "classification",
    "evaluate",
    "fit",
    "model_of",
    "read_rows",
    "train",
]

# Config fields that may differ between a run and its resumption: the budget (and with it a language model's
# evaluation interval, 1/8 of its budget by default) and where things live.
RESUMABLE = frozenset(
    {"epochs", "out", "device", "threads", "data_dir", "download", "max_tokens", "max_minutes", "eval_tokens"}
)


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool | None = None) -> dict:
    """Train per `cfg` in this process; returns the summary (also written to `cfg.out/summary.json`)."""
    import torch

    from synthgrad import plots

    cfg = cfg.validate().resolve()
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {cfg.device}: no CUDA GPU is available on this machine")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = RunFolder(cfg.out, cfg.to_dict(), resumable=RESUMABLE)
    saved = run.open(resume)
    if cfg.model == "gpt":  # a language model on text: its task, metrics and figures (training/lm.py)
        from synthgrad.training.lm import train_lm

        return train_lm(cfg, run, saved, progress=progress)
    data = load_dataset(cfg.dataset, cfg.data_dir, download=cfg.download).to(cfg.device)
    examples = training_examples(data, cfg.train_limit, cfg.batch_size, cfg.dataset)
    run.start()
    try:
        with flush_denormals():
            net = build_network(cfg, data.input_shape, data.num_classes).to(cfg.device)
            task = classification(data, examples, conditioned=cfg.method is Method.CDNI)
            job = ChainJob(net, task, diagnose_every=cfg.diagnose_every)
            if saved is not None:
                job.load_training_state(saved["job"])
            plan = Plan(cfg.epochs, cfg.batch_size, cfg.seed, examples, progress=show_progress(progress),
                        desc=cfg.method.value)  # fmt: skip
            result = fit(job, run, plan)
        history, diagnostics = run.progress.history, run.progress.diagnostics
        summary = {
            "method": cfg.method.value, "dataset": cfg.dataset, "model": cfg.model, "layers": cfg.layers,
            "update_prob": cfg.update_prob, "unlock": cfg.unlock, "fold_every": cfg.fold_every, "seed": cfg.seed,
            "final_true_cosine": history[-1]["true_cosine"] if history else [], **result,
        }  # fmt: skip
        title = f"{cfg.dataset} {cfg.model} {cfg.layers} layers, {cfg.method.value}"
        plots.learning_curves(history, run.out / "learning_curves.png", title)
        plots.gradient_quality(diagnostics, run.out / "gradient_quality.png", title)
        run.write_summary(summary)
        return summary
    finally:
        run.close()
