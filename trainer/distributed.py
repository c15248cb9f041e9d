"""Training across processes: torchrun's environment, the process group, and the parts of data
parallelism this trainer needs beyond DistributedDataParallel.

`erc-train fit` runs in one process, or under torchrun with one process per CPU slot or GPU:

* **Process group.** torchrun sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
  ``MASTER_PORT``; ``setup`` joins the group with gloo on CPU and NCCL on CUDA (one GPU per
  local rank). Without those variables it is one process and nothing here talks to anyone.
* **Batches.** Every rank builds the same length-sorted global batches from the same seed;
  ``shard_batches`` gives each rank a contiguous share of each one. Concatenating the shares in
  rank order gives back the global batch, so a run on N processes sees the very batches of a
  run on one process with the same ``batch_size`` (the global batch).
* **SupCon over the global batch.** The contrastive loss must compare every utterance with every
  other one in the global batch. ``gather_rows`` all-gathers the representations with PyTorch's
  own differentiable all-gather; its backward is a reduce-scatter (sum), so every rank computes
  the same global loss and, after DDP averages the gradients, the update equals the
  one-process update.
* **Waiting.** Rank 0 evaluates, checkpoints and publishes; the other ranks wait at ``barrier``,
  which runs on a CPU (gloo) group with the run's timeout even when training uses NCCL, so a
  long evaluation does not trip the NCCL watchdog.
* **Failure.** Under torchrun a rank that raises exits non-zero and torchrun's agent stops the
  others. Without the agent, a rank blocked in a collective gets an error when its peer's
  connection closes, or at the timeout at the latest: no rank waits forever. ``shutdown``
  destroys the process group on the way out, whatever happened.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from erc_stream.errors import ConfigError, ErcError

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "BatchShard",
    "DistContext",
    "any_rank",
    "barrier",
    "broadcast_object",
    "check_same",
    "distributed",
    "gather_rows",
    "seed_rank",
    "setup",
    "shard_batch",
    "shard_batches",
    "shutdown",
    "under_torchrun",
]

log = logging.getLogger(__name__)

# Collectives and barriers give up after this long. It bounds how long the other ranks wait for
# rank 0's dev evaluation and publish, so it is generous; a dead peer is noticed much sooner
# (gloo sees the closed connection, torchrun's agent stops the group).
DEFAULT_TIMEOUT_S = 1800.0

_TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the run. ``world_size == 1``: one process, no group."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None  # "gloo", "nccl" or None (one process)
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def single(cls, device: torch.device) -> DistContext:
        return cls(rank=0, local_rank=0, world_size=1, device=device, backend=None)


def under_torchrun() -> bool:
    """True when torchrun (or another launcher speaking its protocol) started this process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _env_int(name: str) -> int:
    raw = os.environ.get(name)
    try:
        return int(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        missing = [v for v in _TORCHRUN_VARS if v not in os.environ]
        raise ConfigError(
            f"environment variable {name}={raw!r} is not an integer; start multi-process training with "
            f"`erc-train fit --nproc-per-node N` or torchrun, which set {', '.join(_TORCHRUN_VARS)} "
            f"(missing here: {', '.join(missing) or 'none'})"
        ) from None


def setup(device: str = "auto", *, timeout_s: float = DEFAULT_TIMEOUT_S) -> DistContext:
    """Join torchrun's process group (gloo on CPU, NCCL on CUDA), or return a one-process context.

    ``device``: ``auto`` (CUDA when visible), ``cpu`` or ``cuda``. On CUDA, local rank ``i`` uses
    GPU ``i``: start at most as many processes per node as there are GPUs.
    """
    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but no CUDA GPU is visible; use --device cpu or auto")
    if not under_torchrun():
        return DistContext.single(torch.device("cuda" if want_cuda else "cpu"))

    rank, local_rank, world = _env_int("RANK"), _env_int("LOCAL_RANK"), _env_int("WORLD_SIZE")
    if want_cuda:
        gpus = torch.cuda.device_count()
        if local_rank >= gpus:
            raise ConfigError(
                f"local rank {local_rank} has no GPU: this node sees {gpus}; "
                f"start at most {gpus} processes per node (--nproc-per-node), or train on CPU with --device cpu"
            )
        torch.cuda.set_device(local_rank)
        dev, backend = torch.device("cuda", local_rank), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    timeout = timedelta(seconds=timeout_s)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timeout, device_id=dev if backend == "nccl" else None)
    ctx = DistContext(rank, local_rank, world, dev, backend, timeout_s)
    _control_group(ctx)  # created now, by every rank, in the same order
    log.info("rank %d/%d (local %d) joined the %s group on %s", rank, world, local_rank, backend, dev)
    return ctx


_CONTROL: dict[str, dist.ProcessGroup] = {}


def _control_group(ctx: DistContext) -> dist.ProcessGroup | None:
    """The group for barriers and small Python objects: gloo (CPU), even when training uses NCCL."""
    if not ctx.enabled:
        return None
    if ctx.backend == "gloo":
        return dist.group.WORLD
    if "gloo" not in _CONTROL:
        _CONTROL["gloo"] = dist.new_group(backend="gloo", timeout=timedelta(seconds=ctx.timeout_s))
    return _CONTROL["gloo"]


def shutdown() -> None:
    """Leave the process group; safe to call twice and when there never was one."""
    _CONTROL.clear()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def distributed(device: str = "auto", *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[DistContext]:
    """``setup`` on entry, ``shutdown`` on exit; an error is logged with the rank and re-raised.

    Re-raising ends this process with an error, which is what lets torchrun stop the others.
    """
    ctx = setup(device, timeout_s=timeout_s)
    try:
        yield ctx
    except BaseException as exc:
        if ctx.enabled:
            log.error("rank %d/%d stops on %s: %s", ctx.rank, ctx.world_size, type(exc).__name__, exc)
        raise
    finally:
        shutdown()


def seed_rank(seed: int, ctx: DistContext) -> int:
    """Seed Python, NumPy and torch with ``seed + rank``; returns that seed.

    Each rank draws its own dropout masks; rank 0 draws exactly what a one-process run draws.
    The batch order does not come from these streams: it comes from a ``random.Random(seed)``
    of its own, the same on every rank.
    """
    s = seed + ctx.rank
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)
    return s


@dataclass(frozen=True)
class BatchShard:
    """One rank's share of one global batch.

    ``indices`` are the examples this rank runs through the model: its own share, then, when its
    share is shorter than the longest one, repeats of the batch's first example as filler (every
    rank must run a forward pass of the same size so that gradients are all-reduced in step, and
    all-gather needs equal shapes). ``gather_rows`` drops the filler rows again.
    """

    rank: int
    batch: tuple[int, ...]  # the global batch, in the order gathered rows come back
    sizes: tuple[int, ...]  # real rows of every rank's share, in rank order
    indices: tuple[int, ...]  # rows this rank runs: its share, then filler

    @property
    def real(self) -> int:
        """How many of ``indices`` are this rank's share (the rest is filler)."""
        return self.sizes[self.rank]


def shard_batch(batch: Sequence[int], rank: int, world_size: int) -> BatchShard:
    """Split ``batch`` into ``world_size`` contiguous shares whose sizes differ by at most one."""
    if not batch:
        raise ValueError("cannot shard an empty batch")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    base, extra = divmod(len(batch), world_size)
    sizes = tuple(base + (r < extra) for r in range(world_size))
    start = sum(sizes[:rank])
    own = tuple(batch[start : start + sizes[rank]])
    filler = (batch[0],) * (max(sizes) - sizes[rank])
    return BatchShard(rank=rank, batch=tuple(batch), sizes=sizes, indices=own + filler)


def shard_batches(batches: Sequence[Sequence[int]], ctx: DistContext) -> list[BatchShard]:
    """This rank's shares of the epoch's global batches (the distributed batch sampler)."""
    return [shard_batch(b, ctx.rank, ctx.world_size) for b in batches]


def _all_gather_autograd(t: torch.Tensor) -> torch.Tensor:
    """(k, ...) on every rank -> (world * k, ...) in rank order; the backward sums over ranks.

    torch 2.13 routes this through ``_c10d_functional.all_gather_into_tensor``, whose registered
    backward is a reduce-scatter; ``torch.distributed.nn.functional.all_gather`` (deprecated in
    2.13 in its favour) is the fallback for older releases.
    """
    try:
        from torch.distributed._functional_collectives import all_gather_single_autograd
    except ImportError:  # pragma: no cover - torch < 2.6
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(t.contiguous()), dim=0)
    world = dist.group.WORLD
    assert world is not None  # set once the process group exists
    out = all_gather_single_autograd(t.contiguous(), 0, world)
    return out.wait() if hasattr(out, "wait") else out


def gather_rows(local: torch.Tensor, shard: BatchShard, ctx: DistContext) -> torch.Tensor:
    """Every rank's real rows of ``local``, in global-batch order, with gradients.

    ``local`` is (len(shard.indices), ...), the output for ``shard.indices``; the result is
    (len(shard.batch), ...). Gradients of a loss on the result flow back to the rank that owns
    each row: when every rank computes the same loss on the same gathered rows, DDP's average
    of the gradients equals the gradient of that loss in one process.
    """
    if not ctx.enabled:
        return local[: shard.real]
    k = len(shard.indices)
    everyone = _all_gather_autograd(local)  # (W * k, ...)
    parts = [everyone[r * k : r * k + n] for r, n in enumerate(shard.sizes)]
    return torch.cat(parts, dim=0)  # (len(batch), ...)


def barrier(ctx: DistContext, what: str) -> None:
    """Wait until every rank gets here (no-op in one process); ``what`` names the wait in errors.

    Runs on the CPU group with the run's timeout; on timeout the error names the ranks that
    never arrived.
    """
    if not ctx.enabled:
        return
    try:
        dist.monitored_barrier(group=_control_group(ctx), timeout=timedelta(seconds=ctx.timeout_s), wait_all_ranks=True)
    except RuntimeError as exc:
        raise ErcError(
            f"rank {ctx.rank}: gave up waiting for the other ranks at {what!r} after at most {ctx.timeout_s:.0f} s: "
            f"{exc}; look at the other ranks' logs for the first error"
        ) from exc


def broadcast_object(obj: object, ctx: DistContext, src: int = 0) -> object:
    """``obj`` as rank ``src`` has it, on every rank (pickled on the CPU group; keep it small)."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=_control_group(ctx))
    return box[0]


def check_same(value: object, ctx: DistContext, what: str) -> None:
    """Raise on every rank unless every rank holds the same ``value`` (compared by a JSON hash).

    Cheap insurance that the ranks shard the same global batches: a rank that read other data
    or drew another order would otherwise train on a silently wrong global batch.
    """
    if not ctx.enabled:
        return
    digest = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]
    digests: list[str | None] = [None] * ctx.world_size
    dist.all_gather_object(digests, digest, group=_control_group(ctx))
    if len(set(digests)) != 1:
        odd = [r for r, d in enumerate(digests) if d != digests[0]]
        raise ErcError(
            f"ranks disagree on {what}: ranks {odd} differ from rank 0; every rank must read the same "
            "data with the same settings and seed (same files, same --max-*-conversations, same --seed)"
        )


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank when ``flag`` is true on at least one (e.g. a stop request seen by one rank)."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control_group(ctx))
    return bool(t.item())
