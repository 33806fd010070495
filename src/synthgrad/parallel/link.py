"""Link emulation: a one-way propagation delay and a bandwidth cap on the messages a stage sends (`--link-delay-ms`,
`--link-bandwidth`). This is an *emulation*, used only when asked; no real link is changed by it.

[Note: link emulation]
    A message sent at time t0 over a link of one-way delay d and bandwidth b (bytes/s) leaves the sender once the
    messages queued before it have left (the link serialises them, as a NIC does), takes n/b to leave, and is
    delivered d later:

        departs  = max(t0, end of the previous message's departure)
        left     = departs + n / b          the send completes here (the sender may reuse its buffer)
        delivers = left + d                 the real send is posted here; the receiver gets it after that

    One link per destination and direction (full duplex); messages on a link keep their order, so the receiver's
    channels, which are FIFOs in step order, see the same sequence. The real send (torch.distributed's isend) is
    posted by one thread per process at `delivers`, on a copy of the tensor, so the sender never waits for the
    delay and nothing it does later can change what arrives. A real network also costs the sender nothing for the
    delay: its send completes once the bytes have left.

    What is delayed: every point-to-point message of the decoupled and stale pipelines (activations up, targets
    down), of model-parallel backprop (activations and gradients), and of torch.distributed.pipelining's
    schedules (their sends go through `schedules._batch_p2p`, which `hook_torch_pipelining` wraps). What is not:
    collectives (evaluation, metric agreement, DDP's gradient all-reduce, barriers) and the rendezvous. A
    receiver waits for a delayed message exactly as for a late one, so its waiting time shows the delay.

    Precision: the thread wakes within about 0.1 ms of `delivers` when the process is otherwise idle; while the
    stage computes in Python code it may wait for the interpreter lock (at most the switch interval, lowered to
    1 ms while a link is emulated). Messages on one link are never reordered.

    Because the decoupled schedule consumes every message at a fixed step ([Note: bounded staleness] in
    schedule.py), a delay changes only when things happen, never the numbers (tests/test_slow_links.py).
"""

from __future__ import annotations

import heapq
import itertools
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def parse_bandwidth(text: str | None) -> float | None:
    """A bandwidth as tc writes it -> bits per second: '1gbit', '100mbit', '250kbit', '1e9' (bits/s), or with
    tc's 'bps' for bytes per second ('12.5mbps' = 100 Mbit/s); k, m, g, t are powers of 1000. None, '',
    'unlimited' -> None (no cap). Raises ValueError naming the accepted forms."""
    if text is None:
        return None
    t = text.strip().lower().replace(" ", "")
    if t in ("", "unlimited", "inf", "none"):
        return None
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[0-9]+)?)([kmgt]?)(bit|bps)?", t)
    if not m:
        raise ValueError(f"a bandwidth like 1gbit, 100mbit or 12.5mbps (bytes/s), or unlimited; got {text!r}")
    bits = float(m.group(1)) * _UNITS[m.group(2)] * (8 if m.group(3) == "bps" else 1)
    if not 0 < bits < float("inf"):
        raise ValueError(f"a bandwidth must be > 0, got {text!r}")
    return bits


def format_bandwidth(bits_per_s: float | None) -> str:
    if bits_per_s is None:
        return "unlimited"
    for unit, scale in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
        if bits_per_s >= scale:
            return f"{bits_per_s / scale:g}{unit}"
    return f"{bits_per_s:g}bit"


@dataclass(frozen=True)
class LinkSpec:
    """A link's one-way delay (seconds) and bandwidth (bits/s; None: unlimited)."""

    delay_s: float = 0.0
    bandwidth_bps: float | None = None

    @property
    def active(self) -> bool:
        return self.delay_s > 0 or self.bandwidth_bps is not None

    def transfer_s(self, nbytes: int) -> float:
        """Seconds for `nbytes` to leave the sender."""
        return 0.0 if self.bandwidth_bps is None else 8.0 * nbytes / self.bandwidth_bps

    def arrival_s(self, nbytes: int) -> float:
        """Seconds from an idle link's send to delivery."""
        return self.transfer_s(nbytes) + self.delay_s


class LinkLost(RuntimeError):
    """The real send behind an emulated message failed (the peer is gone)."""


class DelayedWork:
    """What `EmulatedLinks.isend` returns: `wait()` returns once the message has left the sender (its bytes
    serialised at the link's bandwidth), as a real send completes; it raises if the link has failed."""

    def __init__(self, links: EmulatedLinks, left_at: float) -> None:
        self.links, self.left_at = links, left_at

    def wait(self, timeout: object = None) -> bool:
        delay = self.left_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        self.links.raise_if_failed()
        return True

    def is_completed(self) -> bool:
        return time.perf_counter() >= self.left_at


class EmulatedLinks:
    """The links from this process to every peer, each with `spec` ([Note: link emulation]).

    Args:
        spec: delay and bandwidth, the same for every link of this process.
        post: `post(tensor, dst, tag)` performs the real send and returns a work object with `wait()`
            (default: torch.distributed.isend).
    """

    def __init__(self, spec: LinkSpec, post: Callable[[torch.Tensor, int, int], object] | None = None) -> None:
        self.spec = spec
        self._post = post or (lambda t, dst, tag: torch.distributed.isend(t, dst, tag=tag))
        self._free_at: dict[int, float] = {}  # per destination: when the link has sent its queue
        self._queue: list[tuple[float, int, Callable[[], object]]] = []  # (deliver at, order, post)
        self._order = itertools.count()
        self._posted: list[object] = []  # real works not yet known to be complete
        self._cv = threading.Condition()
        self._error: BaseException | None = None
        self._closed = False
        self.sent = 0  # messages and bytes through the links (for reports)
        self.bytes = 0
        self._switch = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch, 0.001))
        self._thread = threading.Thread(target=self._deliver, name="synthgrad-link", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ sending
    def isend(self, tensor: torch.Tensor, dst: int, tag: int) -> DelayedWork:
        """Send `tensor` to rank `dst` over the emulated link (a copy is sent; the caller may reuse `tensor`)."""
        copy = tensor.detach().clone(memory_format=torch.contiguous_format)
        return self.schedule(copy.numel() * copy.element_size(), dst, lambda: self._post(copy, dst, tag))

    def schedule(self, nbytes: int, dst: int, post: Callable[[], object]) -> DelayedWork:
        """Run `post()` (a real send of `nbytes` to `dst`) when the emulated link delivers it."""
        self.raise_if_failed()
        now = time.perf_counter()
        with self._cv:
            departs = max(now, self._free_at.get(dst, 0.0))
            left = departs + self.spec.transfer_s(nbytes)
            self._free_at[dst] = left
            heapq.heappush(self._queue, (left + self.spec.delay_s, next(self._order), post))
            self.sent, self.bytes = self.sent + 1, self.bytes + nbytes
            self._cv.notify()
        return DelayedWork(self, left)

    def _deliver(self) -> None:
        while True:
            with self._cv:
                while not self._closed and (not self._queue or self._queue[0][0] > time.perf_counter()):
                    timeout = None if not self._queue else max(0.0, self._queue[0][0] - time.perf_counter())
                    self._cv.wait(timeout)
                if self._closed and not self._queue:
                    return
                _, _, post = heapq.heappop(self._queue)
            try:
                work = post()
            except BaseException as e:  # the peer is gone: every later send fails too
                with self._cv:
                    self._error = self._error or e
                    self._queue.clear()
                    self._cv.notify_all()
                return
            with self._cv:
                self._posted = [w for w in self._posted if not _completed(w)]
                self._posted.append(work)
                self._cv.notify_all()

    def raise_if_failed(self) -> None:
        if self._error is not None:
            raise LinkLost(f"a delayed send failed ({type(self._error).__name__}: {self._error})")

    # ------------------------------------------------------------------ ending
    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every message has been posted and every real send has completed."""
        deadline = None if timeout_s is None else time.perf_counter() + timeout_s
        with self._cv:
            while self._queue and self._error is None:
                left = None if deadline is None else deadline - time.perf_counter()
                if left is not None and left <= 0:
                    raise TimeoutError("emulated links did not drain")
                self._cv.wait(left if left is not None else 0.05)
            posted, self._posted = self._posted, []
        self.raise_if_failed()
        for work in posted:
            work.wait()

    def close(self) -> None:
        """Stop the delivery thread (undelivered messages are dropped; call `flush` first for a clean end)."""
        with self._cv:
            self._closed = True
            self._queue.clear()
            self._cv.notify_all()
        self._thread.join(timeout=5)
        sys.setswitchinterval(self._switch)


def _completed(work: object) -> bool:
    check = getattr(work, "is_completed", None)
    try:
        return bool(check()) if check is not None else False
    except Exception:
        return False


# ---------------------------------------------------------------------- torch.distributed.pipelining
def hook_torch_pipelining(links: EmulatedLinks) -> Callable[[], None]:
    """Route the sends of torch.distributed.pipelining's schedules through `links`: every schedule issues its
    point-to-point operations through `schedules._batch_p2p` (torch 2.13); the wrapper posts the receives at once
    and hands each send to the emulated link. Returns a function that removes the hook."""
    import torch.distributed as dist
    from torch.distributed.pipelining import schedules

    original = getattr(schedules, "_batch_p2p", None)
    if original is None:  # pragma: no cover - a torch whose pipelining has no single point of p2p
        raise RuntimeError("this torch's pipelining has no schedules._batch_p2p to delay its messages through")

    def batch_p2p(p2p_ops: list, desc: str | None = None) -> list:
        sends = [op for op in p2p_ops if op.op is dist.isend]
        recvs = [op for op in p2p_ops if op.op is not dist.isend]
        works = list(original(recvs, desc)) if recvs else []
        for op in sends:
            copy = op.tensor.detach().clone(memory_format=torch.contiguous_format)
            nbytes = copy.numel() * copy.element_size()

            def post(op=op, copy=copy) -> object:
                return dist.isend(copy, group=op.group, tag=op.tag, group_dst=op.group_peer)

            works.append(links.schedule(nbytes, op.peer, post))
        return works

    schedules._batch_p2p = batch_p2p

    def unhook() -> None:
        schedules._batch_p2p = original

    return unhook


def link_label(link: LinkSpec) -> str:
    return f"{link.delay_s * 1e3:g} ms one way, {format_bandwidth(link.bandwidth_bps)}"
