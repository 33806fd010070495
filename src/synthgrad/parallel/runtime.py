"""torch.distributed behind one small interface: rank, world size, send, receive, barrier — with timing.

Processes find each other through the environment torchrun sets (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT),
whether `synthgrad parallel` spawned them on this machine or torchrun started them across machines. The backend is
gloo on CPU and NCCL on CUDA. Every blocking operation is timed as *waiting*, every send as *communication*, so a
stage can report where its time went.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from synthgrad.errors import SynthgradError

# Message tags: activations travel down the stack, gradient targets up.
TAG_FORWARD = 1
TAG_TARGET = 2


class StageLost(SynthgradError):
    """A peer process stopped answering (killed, crashed or unreachable)."""


@dataclass
class StageTiming:
    """Seconds spent per kind of work on one stage."""

    compute_s: float = 0.0  # forward, backward, optimizer and synthesizer updates
    wait_s: float = 0.0  # blocked on a message from another stage
    comm_s: float = 0.0  # posting sends and completing them
    steps: int = 0
    extra: dict = field(default_factory=dict)

    @contextmanager
    def measure(self, kind: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, f"{kind}_s", getattr(self, f"{kind}_s") + time.perf_counter() - t0)

    def as_dict(self) -> dict:
        total = self.compute_s + self.wait_s + self.comm_s
        return {
            "compute_s": self.compute_s,
            "wait_s": self.wait_s,
            "comm_s": self.comm_s,
            "steps": self.steps,
            "compute_fraction": self.compute_s / total if total else 0.0,
            **self.extra,
        }


def env_rank_world() -> tuple[int, int] | None:
    """(rank, world size) if this process was started as part of a distributed job, else None."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return None


class Runtime:
    """One process of a distributed job; `Runtime.from_env()` joins it (loopback unless told otherwise)."""

    def __init__(self, rank: int, world_size: int, device: torch.device, timing: StageTiming | None = None) -> None:
        self.rank = rank
        self.world_size = world_size
        self.device = device
        self.timing = timing or StageTiming()

    @classmethod
    def from_env(cls, device: str = "cpu", timeout_s: float = 60.0) -> Runtime:
        rank_world = env_rank_world()
        if rank_world is None:
            raise SynthgradError("not started as a distributed job (RANK and WORLD_SIZE are not set)")
        rank, world = rank_world
        addr = os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        port = os.environ.setdefault("MASTER_PORT", "29500")
        dev = torch.device(device)
        if dev.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", rank))
            dev = torch.device("cuda", local % max(1, torch.cuda.device_count()))
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        try:
            dist.init_process_group(
                backend,
                init_method="env://",  # MASTER_ADDR/PORT; under torchrun this reuses its store
                rank=rank,
                world_size=world,
                timeout=datetime.timedelta(seconds=timeout_s),
            )
        except Exception as e:
            raise SynthgradError(
                f"rank {rank}: cannot join the job at {addr}:{port} ({type(e).__name__}: {e})"
            ) from None
        return cls(rank, world, dev)

    # -------------------------------------------------------------- point to point
    def isend(self, tensor: torch.Tensor, dst: int, tag: int) -> dist.Work:
        with self.timing.measure("comm"):
            try:
                return dist.isend(tensor.contiguous(), dst, tag=tag)
            except Exception as e:
                raise StageLost(f"stage {self.rank}: lost stage {dst} while sending ({_short(e)})") from None

    def irecv(self, buffer: torch.Tensor, src: int, tag: int) -> dist.Work:
        try:
            return dist.irecv(buffer, src, tag=tag)
        except Exception as e:
            raise StageLost(f"stage {self.rank}: lost stage {src} ({_short(e)})") from None

    def recv(self, shape: tuple[int, ...], src: int, tag: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        buffer = torch.empty(shape, dtype=dtype, device=self.device)
        with self.timing.measure("wait"):
            self.wait(self.irecv(buffer, src, tag), src)
        return buffer

    def wait(self, work: dist.Work, peer: int) -> None:
        try:
            work.wait()
        except Exception as e:
            raise StageLost(f"stage {self.rank}: lost stage {peer} ({_short(e)})") from None

    def barrier(self) -> None:
        with self.timing.measure("wait"):
            try:
                dist.barrier()
            except Exception as e:
                raise StageLost(f"stage {self.rank}: a stage was lost at a barrier ({_short(e)})") from None

    def all_gather_object(self, obj: object) -> list:
        out: list = [None] * self.world_size
        try:
            dist.all_gather_object(out, obj)
        except Exception as e:
            raise StageLost(f"stage {self.rank}: a stage was lost while gathering results ({_short(e)})") from None
        return out

    def gather_object(self, obj: object, dst: int = 0) -> list | None:
        """Every rank's `obj` on rank `dst` (None elsewhere)."""
        out: list | None = [None] * self.world_size if self.rank == dst else None
        try:
            dist.gather_object(obj, out, dst=dst)
        except Exception as e:
            raise StageLost(f"stage {self.rank}: a stage was lost while gathering weights ({_short(e)})") from None
        return out

    def all_reduce(self, values: list[float], op: str) -> list[float]:
        """Element-wise "sum" or "max" of `values` over ranks."""
        t = torch.tensor(values, dtype=torch.float64)
        try:
            dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        except Exception as e:
            raise StageLost(f"stage {self.rank}: a stage was lost while agreeing on metrics ({_short(e)})") from None
        return t.tolist()

    def broadcast_object(self, obj: object, src: int = 0) -> object:
        box = [obj]
        try:
            dist.broadcast_object_list(box, src=src)
        except Exception as e:
            raise StageLost(f"stage {self.rank}: lost stage {src} while agreeing on the config ({_short(e)})") from None
        return box[0]

    def close(self, clean: bool = True) -> None:
        """Leave the job. After a clean run all ranks meet first: destroying the group while a peer is still
        using it has been seen to abort the process ("terminate called without an active exception")."""
        if not dist.is_initialized():
            return
        if clean:
            with contextlib.suppress(Exception):  # a peer is gone: nothing left to agree on
                dist.barrier()
        dist.destroy_process_group()


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:160]}"
