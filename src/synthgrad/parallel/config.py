"""`synthgrad parallel`'s config: a TrainConfig run over K processes, the schedule that runs them, the runtime's
options (staleness, link emulation, rendezvous, time to target)."""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass
from typing import Any

from synthgrad.config import Method, TrainConfig
from synthgrad.errors import ConfigError


class ScheduleKind(enum.Enum):
    """How `synthgrad parallel` runs the K processes."""

    DECOUPLED = "decoupled"  # DNI/cDNI stages, never waiting for gradients from downstream
    MODEL_PARALLEL = "model-parallel"  # synchronous model-parallel backprop (the locked baseline)
    GPIPE = "gpipe"  # torch.distributed.pipelining, GPipe schedule
    ONE_F_ONE_B = "1f1b"  # torch.distributed.pipelining, 1F1B schedule
    INTERLEAVED_1F1B = "interleaved-1f1b"  # torch, interleaved 1F1B (2 virtual stages per rank, loop placement)
    LOOPED_BFS = "looped-bfs"  # torch, breadth-first looped (2 virtual stages per rank, loop placement)
    ZERO_BUBBLE = "zero-bubble"  # torch, interleaved zero bubble ZB1P (2 virtual stages per rank, loop placement)
    ZBV = "zbv"  # torch, ZB-V zero bubble (2 virtual stages per rank, V placement)
    DUALPIPEV = "dualpipev"  # torch, DualPipeV (2 virtual stages per rank, V placement)
    STALE = "stale"  # asynchronous pipeline of exact gradients applied S + 1 steps late, weights stashed (PipeDream)
    DDP = "ddp"  # DistributedDataParallel, a data-parallel reference
    SINGLE = "single"  # single-process backprop (world size 1)


#: The schedules of torch.distributed.pipelining (synthgrad/parallel/torch_pipelines.py).
TORCH_PIPELINES = frozenset({"gpipe", "1f1b", "interleaved-1f1b", "looped-bfs", "zero-bubble", "zbv", "dualpipev"})


@dataclass(frozen=True)
class ParallelConfig:
    """`synthgrad parallel`: a TrainConfig run over K processes."""

    train: TrainConfig
    stages: int = 2  # K processes; for model/pipeline parallelism a contiguous block of layers each
    schedule: ScheduleKind = ScheduleKind.DECOUPLED  # --method backprop picks model-parallel unless named
    # Targets of a synthesizer may arrive up to this many of its own steps late ([Note: bounded staleness]); 0 is
    # lockstep (equal to the in-process run). 2 lets a stage run two batches ahead, enough to hide one hop.
    max_staleness: int = 2
    microbatches: int | None = None  # torch pipeline schedules: micro-batches per batch; None: max(4, virtual stages)
    eval_every: int = 0  # steps between test evaluations (for time-to-target); 0: at epoch ends only
    # The first metric's value that counts as "target reached": test error % (e.g. 2.5 = 97.5% accuracy), or for
    # gpt on ptb-char the validation bits per character (--target-bpc).
    target_error: float | None = None
    stop_at_target: bool = False  # end the run at the first evaluation that reaches target_error (benchmarks)
    master_addr: str = "127.0.0.1"  # rendezvous: loopback unless the user names another address
    master_port: int | None = None  # None: a free port (single machine); multi-machine jobs name one
    timeout_s: float = 60.0  # a stage that does not answer for this long is declared lost
    pin_cores: bool = False  # rank r runs on cores [r·threads, (r+1)·threads) of this machine (benchmarks)
    # Link emulation ([Note: link emulation] in parallel/link.py), only when asked: every point-to-point message
    # a rank sends is held this many ms (one way) and paced at this bandwidth (tc's units: 1gbit, 100mbit; None:
    # unlimited) before delivery. It changes when messages arrive, never the decoupled or stale numbers.
    link_delay_ms: float = 0.0
    link_bandwidth: str | None = None
    # --max-staleness auto: S derived before training from the measured step time and the link
    # ([Note: auto staleness] in parallel/staleness.py); the derivation is recorded in `staleness_basis`
    # (config.json), and a resumed run reuses the recorded S rather than measuring again (S changes the numbers).
    staleness_auto: bool = False
    staleness_basis: dict | None = None

    def validate(self) -> ParallelConfig:
        self.train.validate()
        t = self.train
        if self.stages < 1:
            raise ConfigError(f"--stages must be >= 1, got {self.stages}")
        if self.schedule is not ScheduleKind.DDP and self.stages > t.model_layers:
            raise ConfigError(f"--stages {self.stages} is more than the model's {t.model_layers} layers")
        if self.schedule is ScheduleKind.DECOUPLED and t.method is Method.BACKPROP:
            raise ConfigError("the decoupled schedule needs --method dni or cdni (backprop: --schedule model-parallel)")
        if self.schedule is not ScheduleKind.DECOUPLED and t.method is not Method.BACKPROP:
            raise ConfigError(f"--schedule {self.schedule.value} trains with backprop: use --method backprop")
        if self.schedule in (ScheduleKind.DECOUPLED, ScheduleKind.STALE) and self.stages < 2:
            raise ConfigError(f"--schedule {self.schedule.value} needs --stages >= 2 (one stage is plain backprop)")
        if self.max_staleness < 0:
            raise ConfigError(f"--max-staleness must be >= 0, got {self.max_staleness}")
        if self.eval_every < 0:
            raise ConfigError(f"--eval-every must be >= 0 (0: at epoch ends only), got {self.eval_every}")
        if self.stop_at_target and self.target_error is None:
            raise ConfigError("--stop-at-target needs a target: --target-accuracy or --target-bpc")
        if self.target_error is not None and not 0 <= self.target_error <= 100:
            raise ConfigError(f"--target-accuracy must be a percentage in 0..100, got {100 - self.target_error}")
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise ConfigError(f"--timeout must be a number of seconds > 0, got {self.timeout_s}")
        if self.microbatches is not None and self.microbatches < 1:
            raise ConfigError(f"--microbatches must be >= 1, got {self.microbatches}")
        if self.schedule.value in TORCH_PIPELINES:  # their constraints live with them, checked before any process
            from synthgrad.parallel.torch_pipelines import check_schedule

            try:  # every hidden layer of synthgrad's models has batch norm
                check_schedule(self.schedule.value, self.stages, t.model_layers, t.batch_size, self.microbatches,
                               batchnorm=t.layers > 1 and t.model != "gpt")  # fmt: skip
            except ValueError as e:
                raise ConfigError(f"--schedule {self.schedule.value}: {e}") from None
        if not (0 <= self.link_delay_ms <= 60_000 and math.isfinite(self.link_delay_ms)):
            raise ConfigError(f"--link-delay-ms must be in 0..60000, got {self.link_delay_ms}")
        from synthgrad.parallel.link import parse_bandwidth

        try:
            parse_bandwidth(self.link_bandwidth)
        except ValueError as e:
            raise ConfigError(f"--link-bandwidth: {e}") from None
        if self.master_port is not None and not 0 < self.master_port < 65536:
            raise ConfigError(f"--master-port must be in 1..65535, got {self.master_port}")
        if t.model not in ("fcn", "gpt"):
            raise ConfigError(f"synthgrad parallel supports --model fcn or gpt for now, not {t.model}")
        if t.max_minutes is not None:  # ranks would stop at different steps: a budget must be a number of steps
            raise ConfigError("synthgrad parallel takes a budget in --epochs or --max-tokens, not --max-minutes")
        if t.modules is not None and t.modules != self.stages:
            raise ConfigError(f"--modules {t.modules} differs from --stages {self.stages} (a stage is a module)")
        return self

    def resolve(self) -> ParallelConfig:
        """The config with its training config resolved (`TrainConfig.resolve`); a decoupled GPT's modules are its
        stages."""
        t = self.train
        if t.model == "gpt" and t.method is not Method.BACKPROP:
            t = dataclasses.replace(t, modules=self.stages)
        return dataclasses.replace(self, train=t.resolve())

    def to_dict(self) -> dict[str, Any]:
        """One flat mapping: the training config's fields and the job's."""
        return {
            **self.train.to_dict(),
            "stages": self.stages,
            "schedule": self.schedule.value,
            "max_staleness": self.max_staleness,
            "microbatches": self.microbatches,
            "eval_every": self.eval_every,
            "target_error": self.target_error,
            "stop_at_target": self.stop_at_target,
            "timeout_s": self.timeout_s,
            "link_delay_ms": self.link_delay_ms,
            "link_bandwidth": self.link_bandwidth,
            "staleness_auto": self.staleness_auto,
            "staleness_basis": self.staleness_basis,
        }
