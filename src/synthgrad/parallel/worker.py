"""What one process of `synthgrad parallel` does: join the job, agree on the config, train its stage, report.

The same code runs under the local launcher (`synthgrad parallel --stages K`) and under torchrun. Outputs in
`out` (written by rank 0 unless said otherwise): config.json, metrics.jsonl, summary.json (with per-stage
timing), stage{k}-e{epoch}.pt (each rank its own, atomically) and checkpoint.json, the manifest naming the last
epoch for which *every* stage saved — the consistent point `--resume` continues from.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from synthgrad.checkpoint import load_checkpoint, save_checkpoint, write_json
from synthgrad.config import Method, ParallelConfig, Schedule
from synthgrad.decoupled import infer_shapes
from synthgrad.errors import ConfigError
from synthgrad.parallel.baselines import split_layers
from synthgrad.parallel.runtime import Runtime
from synthgrad.parallel.stage import DecoupledStage
from synthgrad.runs import resume_mismatch
from synthgrad.train import build_network, load_dataset

log = logging.getLogger("synthgrad.parallel")


def _agree_on_config(rt: Runtime, pcfg: ParallelConfig) -> None:
    """Every rank must run the same experiment: compare all ranks' configs before training starts."""
    mine = pcfg.to_dict()
    for local in ("out", "data_dir", "threads"):  # may differ between machines
        mine["train"].pop(local, None)
    configs = rt.all_gather_object(mine)
    for r, other in enumerate(configs):
        if other != configs[0]:
            differ = sorted(
                k
                for k in set(other["train"]) | set(configs[0]["train"])
                if other["train"].get(k) != configs[0]["train"].get(k)
            )
            differ += [k for k in other if k != "train" and other[k] != configs[0][k]]
            raise ConfigError(
                f"rank {r} was started with a different config than rank 0 (differs in: {', '.join(differ)})"
            )


def run_worker(pcfg: ParallelConfig, *, resume: bool = False, progress: bool | None = None) -> dict:
    """Join the job from the environment and run this rank's part. Returns this rank's result dict."""
    cfg = pcfg.train
    rank_world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
    if rank_world[1] != pcfg.stages:
        raise ConfigError(f"the job has {rank_world[1]} processes but --stages is {pcfg.stages}")
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // pcfg.stages))
    torch.set_flush_denormal(True)
    rt = Runtime.from_env(cfg.device, pcfg.timeout_s)
    clean = False
    try:
        _agree_on_config(rt, pcfg)
        data = load_dataset(cfg)
        if pcfg.schedule is Schedule.DECOUPLED:
            result = _run_decoupled(pcfg, rt, data, resume, progress)
            clean = True
            return result
        from synthgrad.parallel import baselines

        run = {
            Schedule.MODEL_PARALLEL: baselines.run_model_parallel,
            Schedule.GPIPE: baselines.run_pipeline_gpipe,
            Schedule.ONE_F_ONE_B: baselines.run_pipeline_1f1b,
            Schedule.DDP: baselines.run_ddp,
            Schedule.SINGLE: baselines.run_backprop_single,
        }[pcfg.schedule]
        try:
            result = run(cfg, rank=rt.rank, world_size=rt.world_size, data=data, target_error=pcfg.target_error,
                         eval_every=pcfg.eval_every)  # fmt: skip
        except ValueError as e:  # a shape the schedule cannot split (batch, micro-batches, stages)
            raise ConfigError(f"--schedule {pcfg.schedule.value}: {e}") from None
        if rt.rank == 0:
            out = Path(cfg.out)
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / "summary.json", {**result, "schedule": pcfg.schedule.value, "stages": pcfg.stages})
        clean = True
        return result
    finally:
        rt.close(clean)


def _run_decoupled(pcfg: ParallelConfig, rt: Runtime, data, resume: bool, progress: bool | None) -> dict:
    cfg, k, K = pcfg.train, rt.rank, rt.world_size
    out = Path(cfg.out)
    blocks = split_layers(cfg.layers, K)
    cuts = [b[-1] for b in blocks[:-1]]
    net = build_network(cfg, data.input_shape, data.num_classes, cuts=cuts).to(rt.device)
    shapes = infer_shapes(list(net.stages), torch.zeros(2, *data.input_shape, device=rt.device))
    stage = DecoupledStage(
        net,
        rt,
        shapes,
        max_staleness=pcfg.max_staleness,
        num_classes=data.num_classes,
        conditioned=cfg.method is Method.CDNI,
    )
    history: list[dict] = []
    first_epoch, train_time = 1, 0.0
    manifest = out / "checkpoint.json"
    # Rank 0 decides whether OUT may be used, and every rank hears the verdict (no rank is left waiting).
    problem = None
    if k == 0 and not resume and (manifest.exists() or (out / "summary.json").exists()):
        problem = f"{out} already holds a run: pass --resume to continue it, or choose another --out"
    elif k == 0 and resume and manifest.exists():
        problem = _resume_mismatch(json.loads((out / "config.json").read_text()), pcfg.to_dict(), out)
    problem = rt.broadcast_object(problem, src=0)
    if problem:
        raise ConfigError(problem)
    if resume and manifest.exists():
        meta = json.loads(manifest.read_text())
        stage.load_state(load_checkpoint(out / meta["files"][k]))
        first_epoch, history, train_time = meta["epoch"] + 1, meta["history"], meta["train_time_s"]
        log.info("stage %d: resumed from epoch %d", k, meta["epoch"])
    if k == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", pcfg.to_dict())
    rt.barrier()
    device = rt.device
    train_x, train_y = data.train_images, data.train_labels
    if cfg.train_limit:
        train_x, train_y = train_x[: cfg.train_limit], train_y[: cfg.train_limit]
    train_x, train_y = train_x.to(device), train_y.to(device)
    test_x, test_y = data.test_images.to(device), data.test_labels.to(device)
    steps_per_epoch = len(train_y) // cfg.batch_size
    show = (sys.stderr.isatty() if progress is None else progress) and k == 0
    time_to_target = next((h["train_time_s"] for h in history if _hit(pcfg, h["test_error"])), None)
    evals = []
    for epoch in range(first_epoch, cfg.epochs + 1):
        order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        loss_sum, n_loss = 0.0, 0
        t0 = time.perf_counter()
        for s in tqdm(range(steps_per_epoch), desc=f"stage {k} epoch {epoch}", disable=not show):
            idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size].to(device)
            loss = stage.step(net.steps, train_x[idx] if k == 0 or net.unlocked else None, train_y[idx])
            if loss is not None:
                loss_sum, n_loss = loss_sum + loss, n_loss + 1
            if pcfg.eval_every and (s + 1) % pcfg.eval_every == 0 and s + 1 < steps_per_epoch:
                stage.drain()
                train_time += time.perf_counter() - t0
                err = stage.evaluate(test_x, test_y)
                evals.append({"step": net.steps, "train_time_s": train_time, "test_error": err})
                if time_to_target is None and _hit(pcfg, err):
                    time_to_target = train_time
                t0 = time.perf_counter()
        stage.drain()
        train_time += time.perf_counter() - t0
        err = stage.evaluate(test_x, test_y)
        if time_to_target is None and _hit(pcfg, err):
            time_to_target = train_time
        row = {
            "epoch": epoch,
            "step": net.steps,
            "test_error": err,
            "train_time_s": train_time,
            "train_loss": loss_sum / max(1, n_loss) if stage.top else None,
        }
        history.append(row)
        _checkpoint(stage, out, epoch, history, train_time)
        if k == 0:
            log.info("epoch %d: test error %.2f%%, %.1fs training", epoch, err, train_time)
    timings = rt.all_gather_object(
        {**rt.timing.as_dict(), "max_staleness_seen": stage.max_seen_staleness, "stage": k, "layers": list(blocks[k])}
    )
    losses = rt.all_gather_object(history[-1]["train_loss"] if history else None)
    steps = history[-1]["step"] if history else 0
    result = {
        "schedule": "decoupled",
        "method": cfg.method.value,
        "stages": K,
        "max_staleness": pcfg.max_staleness,
        "epochs": len(history),
        "steps": steps,
        "test_error": history[-1]["test_error"] if history else None,
        "final_test_error": history[-1]["test_error"] if history else None,
        "train_loss": losses[-1],
        "samples_per_s": steps * cfg.batch_size / train_time if train_time else None,
        "time_to_target_s": time_to_target,
        "target_error": pcfg.target_error,
        "wall_time_s": train_time,
        "per_stage": timings,
        "evaluations": evals,
    }
    if k == 0:
        (out / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
        write_json(out / "summary.json", result)
    return result


_RESUMABLE = {"epochs", "out", "data_dir", "threads", "device", "download"}


def _resume_mismatch(saved: dict, now: dict, out: Path) -> str | None:
    """A message if the run in `out` was started with another config (epochs may grow), else None."""

    def flat(d: dict) -> dict:
        return {**{k: v for k, v in d.items() if k != "train"}, **d["train"]}

    detail = resume_mismatch(flat(saved), flat(now), _RESUMABLE)
    return f"--resume with a different config than the run in {out} ({detail})" if detail else None


def _hit(pcfg: ParallelConfig, err: float) -> bool:
    return pcfg.target_error is not None and err <= pcfg.target_error


def _checkpoint(stage: DecoupledStage, out: Path, epoch: int, history: list, train_time: float) -> None:
    """Each stage saves its own file; once all have, rank 0 names them in the manifest (atomically)."""
    k, K = stage.k, stage.K
    save_checkpoint(out / f"stage{k}-e{epoch}.pt", stage.state())
    stage.rt.barrier()
    if k == 0:
        files = [f"stage{r}-e{epoch}.pt" for r in range(K)]
        write_json(
            out / "checkpoint.json", {"epoch": epoch, "files": files, "history": history, "train_time_s": train_time}
        )
    stage.rt.barrier()
    old = out / f"stage{k}-e{epoch - 1}.pt"
    old.unlink(missing_ok=True)
