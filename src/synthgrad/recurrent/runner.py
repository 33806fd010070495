"""`train_recurrent(cfg)`: what `synthgrad train --task ...` runs.

One run in one `RunFolder` (config.json, train.log, metrics.jsonl: a row every `log_every` samples,
checkpoint.json + checkpoint-r0-N.pt, summary.json, and learning_curve.png; Copy tasks also position_errors.png).
The folder is checked (and, with `resume`, the checkpoint loaded) before the data are read, and written only
once they have loaded, so a missing file leaves no run behind. Each task is a thin loop of its own:
`copy_loop.train_copy` (`TruncatedBPTT.train_sequence`, one episode per sequence, or `--episodes` of them back to
back), `ptb_loop.train_ptb` (`TruncatedBPTT.train_chunk` over one stream) and `multinet_loop.train_multinet`
(`MultiNetSystem.train_episode`).
"""

from __future__ import annotations

import torch

from synthgrad.data import load_mnist, resolve_data_dir
from synthgrad.data.ptb import load_ptb_chars
from synthgrad.recurrent.budget import Budget
from synthgrad.recurrent.copy_loop import train_copy
from synthgrad.recurrent.multinet_loop import train_multinet
from synthgrad.recurrent.ptb_loop import check_streams, train_ptb
from synthgrad.recurrent.task_config import COPY_TASKS, RecurrentConfig, RecurrentTask
from synthgrad.training.run_folder import RunFolder, flush_denormals, show_progress

# Config fields that may differ between a run and its resumption: the budget (to extend a run) and where it runs.
RESUMABLE = frozenset({"max_minutes", "max_samples", "out", "threads", "data_dir"})
# Config fields added after runs were written, with the value those runs ran with: such a run still resumes.
IMPLIED = {
    "forget_bias": 0.0, "cell": "lstm", "init": "torch", "item_bits": 8, "optimizer": "adam", "clip": 0.0,
    "episodes": 1,
}  # fmt: skip


def train_recurrent(cfg: RecurrentConfig, *, resume: bool = False, progress: bool | None = None) -> dict:
    """Train per `cfg` until its budget is spent (PTB: or early stopping); returns the summary, also written to
    `cfg.out/summary.json`. With `resume`, continue the run in `cfg.out` exactly ([Note: deterministic resume])."""
    cfg = cfg.validate().resolve()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    folder = RunFolder(cfg.out, cfg.to_dict(), resumable=RESUMABLE, implied=IMPLIED)
    saved = folder.open(resume)
    data = None
    if cfg.task is RecurrentTask.PTB_CHAR:
        data = load_ptb_chars(resolve_data_dir(cfg.data_dir))
        check_streams(cfg, data)
    elif cfg.task is RecurrentTask.MULTINET:
        data = load_mnist(resolve_data_dir(cfg.data_dir))
    folder.start()
    run = Budget(
        folder, max_samples=cfg.max_samples, max_minutes=cfg.max_minutes, log_every=cfg.log_every,
        show=show_progress(progress), desc=f"{cfg.task.value} {cfg.method.value} T={cfg.T}",
    )  # fmt: skip
    try:
        with flush_denormals():  # as every trainer (PAPER.md §8)
            if cfg.task in COPY_TASKS:
                result = train_copy(cfg, run, saved)
            elif cfg.task is RecurrentTask.PTB_CHAR:
                result = train_ptb(cfg, run, data, saved)
            else:
                result = train_multinet(cfg, run, data, saved)
        p = run.progress
        summary = {
            "task": cfg.task.value, "method": cfg.method.value, "T": cfg.T, "hidden_size": cfg.hidden_size,
            "forget_bias": cfg.forget_bias, "cell": cfg.cell.value, "init": cfg.init.value,
            "optimizer": cfg.optimizer.value, "clip": cfg.clip, "batch_size": cfg.batch_size, "lr": cfg.lr,
            "synthesizer_lr": cfg.synthesizer_lr, "discount": cfg.discount,
            "synthesizer_target": cfg.synthesizer_target.value, "trace_decay": cfg.trace_decay,
            "aux_weight": cfg.aux_weight, "seed": cfg.seed, "samples": p.samples, "steps": p.steps,
            "wall_time_s": p.wall_time_s, "max_samples": cfg.max_samples, "max_minutes": cfg.max_minutes, **result,
        }  # fmt: skip
        folder.write_summary(summary)
        return summary
    finally:
        run.close()
        folder.close()
