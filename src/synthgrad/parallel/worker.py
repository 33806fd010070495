"""What one process of `synthgrad parallel` does: join the job, agree on the config, build its job, train, report.

The same code runs under the local launcher (`synthgrad parallel --stages K`) and under torchrun. Every rank
builds its job for the chosen schedule (a decoupled stage, or a baseline) and runs the one training loop
(`synthgrad.training.fit`) in the shared run folder: config.json, metrics.jsonl, summary.json (with per-stage
timing), checkpoint.json naming the last checkpoint every rank has written, from which `--resume` continues.
"""

from __future__ import annotations

import os

import torch

from synthgrad.config import Method
from synthgrad.data import ImageDataset, load_dataset
from synthgrad.errors import ConfigError
from synthgrad.parallel.config import TORCH_PIPELINES, ParallelConfig, ScheduleKind
from synthgrad.parallel.exact import DDPJob, ModelParallelJob
from synthgrad.parallel.partition import cuts_of, split_layers
from synthgrad.parallel.runtime import Runtime
from synthgrad.parallel.stage_job import StageJob
from synthgrad.parallel.torch_pipelines import TorchPipelineJob
from synthgrad.schedule import DecoupledSchedule
from synthgrad.training import ChainJob, Plan, RunFolder, build_network, fit, flush_denormals, model_of, show_progress
from synthgrad.training.build import build_stale_network
from synthgrad.training.lm import LMData, lm_plan, load_lm
from synthgrad.training.task import Task, classification, training_examples

# Fields that may differ between ranks (each machine has its own paths and cores) and between a run and its
# resumption (also the budget).
LOCAL = ("out", "data_dir", "threads", "pin_cores")
RESUMABLE = frozenset({"epochs", "out", "data_dir", "threads", "device", "download", "timeout_s", "pin_cores",
                       "link_delay_ms", "link_bandwidth", "staleness_auto", "staleness_basis"})  # fmt: skip


def _agree_on_config(rt: Runtime, pcfg: ParallelConfig) -> None:
    """Every rank must run the same experiment: compare all ranks' configs before training starts."""
    mine = {k: v for k, v in pcfg.to_dict().items() if k not in LOCAL}
    configs = rt.all_gather_object(mine)
    for r, other in enumerate(configs):
        differ = sorted(k for k in set(other) | set(configs[0]) if other.get(k) != configs[0].get(k))
        if differ:
            raise ConfigError(
                f"rank {r} was started with a different config than rank 0 (differs in: {', '.join(differ)})"
            )


def run_worker(pcfg: ParallelConfig, *, resume: bool = False, progress: bool | None = None) -> dict:
    """Join the job from the environment and run this rank's part. Returns the run's summary (every rank)."""
    cfg = pcfg.train
    world = int(os.environ["WORLD_SIZE"])
    if world != pcfg.stages:
        raise ConfigError(f"the job has {world} processes but --stages is {pcfg.stages}")
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // pcfg.stages)
    torch.set_num_threads(threads)
    rt = Runtime.from_env(cfg.device, pcfg.timeout_s)
    if pcfg.pin_cores:
        cores = os.cpu_count() or 1
        os.sched_setaffinity(0, {(rt.rank * threads + i) % cores for i in range(threads)})
    clean = False
    try:
        _agree_on_config(rt, pcfg)
        if pcfg.staleness_auto:  # before the run folder: config.json records the S it derives
            from synthgrad.parallel.staleness import resolve_auto_staleness

            pcfg = resolve_auto_staleness(pcfg, rt, resume)
        _emulate_links(pcfg, rt)
        data = load_lm(cfg) if cfg.model == "gpt" else load_dataset(cfg.dataset, cfg.data_dir, download=cfg.download)
        if cfg.model != "gpt":  # before the folder is written: a refused run leaves nothing behind
            training_examples(data, cfg.train_limit, cfg.batch_size, cfg.dataset)
        run = RunFolder(cfg.out, pcfg.to_dict(), resumable=RESUMABLE, collective=rt)
        saved = run.open(resume)
        run.start()
        try:
            with flush_denormals():
                summary = _train(pcfg, rt, run, data, saved, show_progress(progress) and rt.rank == 0)
            run.write_summary(summary)
        finally:
            run.close()
        clean = True
        return summary
    finally:
        rt.close(clean)


def _emulate_links(pcfg: ParallelConfig, rt: Runtime) -> None:
    """--link-delay-ms / --link-bandwidth: this rank's sends go through emulated links ([Note: link emulation] in
    parallel/link.py), torch's pipeline schedules' sends too."""
    from synthgrad.parallel.link import EmulatedLinks, LinkSpec, hook_torch_pipelining, parse_bandwidth

    spec = LinkSpec(pcfg.link_delay_ms / 1e3, parse_bandwidth(pcfg.link_bandwidth))
    if spec.active and pcfg.stages > 1:
        rt.link = EmulatedLinks(spec)
        if pcfg.schedule.value in TORCH_PIPELINES:
            hook_torch_pipelining(rt.link)


def _train(
    pcfg: ParallelConfig, rt: Runtime, run: RunFolder, data: ImageDataset | LMData, saved: dict | None, bar: bool
):
    cfg, desc, conditioned = pcfg.train, f"{pcfg.schedule.value} stage {rt.rank}", pcfg.train.method is Method.CDNI
    if isinstance(data, LMData):  # a language model (training/lm.py): windows of tokens, a budget in tokens
        task = data.task(examples=cfg.train_limit, conditioned=conditioned, device=rt.device)
        plan = lm_plan(cfg, len(task.train_y), progress=bar, desc=desc, eval_every=pcfg.eval_every,
                       target=pcfg.target_error, stop_at_target=pcfg.stop_at_target)  # fmt: skip
        if rt.rank == 0:
            data.write_vocab(run.out)
    else:
        data = data.to(rt.device)
        examples = training_examples(data, cfg.train_limit, cfg.batch_size, cfg.dataset)
        task = classification(data, examples, conditioned=conditioned)
        plan = Plan(cfg.epochs, cfg.batch_size, cfg.seed, examples, eval_every=pcfg.eval_every,
                    target=pcfg.target_error, progress=bar, desc=desc,
                    stop_at_target=pcfg.stop_at_target)  # fmt: skip
    ticks = plan.epochs * plan.steps_per_epoch
    try:
        job = make_job(pcfg, rt, task, ticks if plan.max_steps is None else min(ticks, plan.max_steps))
    except ValueError as e:  # a shape the schedule cannot split (batch, micro-batches, stages)
        raise ConfigError(f"--schedule {pcfg.schedule.value}: {e}") from None
    if saved is not None:
        job.load_training_state(saved["job"])
    result = fit(job, run, plan)
    return {"schedule": pcfg.schedule.value, "method": cfg.method.value, "stages": pcfg.stages,
            "max_staleness": pcfg.max_staleness, "note": getattr(job, "note", ""),
            "link_delay_ms": pcfg.link_delay_ms, "link_bandwidth": pcfg.link_bandwidth,
            "staleness_basis": pcfg.staleness_basis, **result}  # fmt: skip


def make_job(pcfg: ParallelConfig, rt: Runtime, task: Task, ticks: int):
    """This rank's job for the config's schedule."""
    cfg, kind = pcfg.train, pcfg.schedule
    if kind is ScheduleKind.SINGLE:
        net = build_network(cfg, task.input_shape, task.num_classes).to(rt.device)
        return _single(ChainJob(net, task), rt)
    blocks = split_layers(cfg.model_layers, pcfg.stages)
    if kind in (ScheduleKind.DECOUPLED, ScheduleKind.STALE):
        build = build_network if kind is ScheduleKind.DECOUPLED else build_stale_network
        net = build(cfg, task.input_shape, task.num_classes, cuts=cuts_of(blocks)).to(rt.device)
        schedule = DecoupledSchedule(pcfg.stages, pcfg.max_staleness, net.rule, unlock=net.unlocked)
        return StageJob(net, rt, schedule, task, batch_size=cfg.batch_size, ticks=ticks,
                        layers=list(blocks[rt.rank]))  # fmt: skip
    full = model_of(cfg, task.input_shape, task.num_classes)
    if kind is ScheduleKind.MODEL_PARALLEL:
        return ModelParallelJob(rt, full, blocks[rt.rank], task, cfg.lr, cfg.beta1)
    if kind is ScheduleKind.DDP:
        return DDPJob(rt, full, task, cfg.lr, cfg.batch_size, cfg.beta1)
    return TorchPipelineJob(rt, full, task, cfg.lr, name=kind.value, batch_size=cfg.batch_size,
                            microbatches=pcfg.microbatches, beta1=cfg.beta1)  # fmt: skip


def _single(job: ChainJob, rt: Runtime) -> ChainJob:
    """The single-process baseline under the launcher: the in-process job, reporting through the runtime."""
    job.comm = rt
    return job
