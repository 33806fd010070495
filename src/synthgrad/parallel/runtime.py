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
import re
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
TAG_PROBE = 3  # measuring the link before training ([Note: measured link] in parallel/staleness.py)


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
        self.link = None  # emulated links (parallel/link.py): point-to-point sends go through them when set

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
        if backend == "gloo" and not os.environ.get("GLOO_SOCKET_IFNAME"):
            ifname = _interface_towards(addr)  # [Note: gloo's interface]
            if ifname:
                os.environ["GLOO_SOCKET_IFNAME"] = ifname
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
                if self.link is not None:  # [Note: link emulation] in parallel/link.py
                    return self.link.isend(tensor, dst, tag)
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
        if self.link is not None:  # deliver what the emulated links still hold, then stop their thread
            if clean:
                with contextlib.suppress(Exception):
                    self.link.flush(timeout_s=60.0)
            self.link.close()
            self.link = None
        if clean:
            with contextlib.suppress(Exception):  # a peer is gone: nothing left to agree on
                dist.barrier()
        dist.destroy_process_group()


def _interface_towards(addr: str) -> str | None:
    """[Note: gloo's interface]
    gloo binds a rank to the address its host name resolves to, and tells the other ranks that address. Where the
    host name resolves to a loopback address (Debian's "127.0.1.1 host" in /etc/hosts, or any host inside a
    network namespace) the other machines are told 127.0.x.x and the job hangs at its first message. So when the
    rendezvous is not on loopback and GLOO_SOCKET_IFNAME is unset, a rank binds gloo to the interface its routes
    use to reach the rendezvous address: the one the other machines can reach it by. None where that is loopback
    or cannot be found (gloo then chooses as before)."""
    import fcntl
    import socket
    import struct

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((addr, 9))  # no packet is sent: this only asks the routing table
            local = s.getsockname()[0]
            if local.startswith("127."):
                return None
            for _, name in socket.if_nameindex():
                with contextlib.suppress(OSError):
                    packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))  # SIOCGIFADDR
                    if socket.inet_ntoa(packed[20:24]) == local:
                        return name
    except (OSError, ValueError):
        return None
    return None


def _short(e: BaseException, limit: int = 160) -> str:
    """`e` in one line for a message: without C++ source locations ("[/path/pair.cc:553] "), its first sentence,
    at most `limit` characters, cut between words."""
    text = re.sub(r"\[[^\]\s]*\.(?:cc|cpp|c|h|hpp):\d+\]\s*", "", " ".join(str(e).split()))
    text = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0].rstrip(".")
    if len(text) > limit:
        cut = text.rfind(" ", 0, limit)
        text = text[: cut if cut > limit // 2 else limit].rstrip(" ,;:") + " …"
    return f"{type(e).__name__}: {text}"
