"""Pure parts of multi-process training: batch sharding and the torchrun command line."""

from __future__ import annotations

import sys

import pytest
import torch

from trainer.distributed import DistContext, gather_rows, shard_batch, shard_batches
from trainer.launch import strip_nproc, torchrun_command


def test_shards_are_contiguous_near_equal_and_concatenate_to_the_batch():
    batch = [7, 3, 9, 1, 4]
    shards = [shard_batch(batch, r, 2) for r in range(2)]
    assert [s.sizes for s in shards] == [(3, 2), (3, 2)]
    assert shards[0].indices == (7, 3, 9)
    assert shards[1].indices == (1, 4, 7)  # own share, then the batch's first example as filler
    assert [s.real for s in shards] == [3, 2]
    assert [i for s in shards for i in s.indices[: s.real]] == batch
    assert all(s.batch == tuple(batch) for s in shards)


def test_a_batch_smaller_than_the_world_still_gives_every_rank_a_row():
    shards = [shard_batch([5], r, 3) for r in range(3)]
    assert [s.sizes for s in shards] == [(1, 0, 0)] * 3
    assert [s.indices for s in shards] == [(5,), (5,), (5,)]
    assert [s.real for s in shards] == [1, 0, 0]


def test_even_split_has_no_filler():
    shards = [shard_batch(list(range(8)), r, 4) for r in range(4)]
    assert [s.indices for s in shards] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert {s.sizes for s in shards} == {(2, 2, 2, 2)}


def test_shard_batches_uses_the_context_rank():
    ctx = DistContext(rank=1, local_rank=1, world_size=2, device=torch.device("cpu"), backend="gloo")
    assert [s.indices for s in shard_batches([[0, 1, 2, 3], [4, 5, 6]], ctx)] == [(2, 3), (6, 4)]


def test_shard_errors():
    with pytest.raises(ValueError, match="empty"):
        shard_batch([], 0, 2)
    with pytest.raises(ValueError, match="outside"):
        shard_batch([1, 2], 2, 2)


def test_gather_rows_in_one_process_drops_nothing_but_filler():
    ctx = DistContext.single(torch.device("cpu"))
    shard = shard_batch([4, 5, 6], 0, 1)
    x = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(gather_rows(x, shard, ctx), x)


def test_torchrun_command_strips_the_nproc_option():
    assert strip_nproc(["fit", "--nproc-per-node", "2", "--quick"]) == ["fit", "--quick"]
    assert strip_nproc(["fit", "--nproc-per-node=4", "--seed", "1"]) == ["fit", "--seed", "1"]
    cmd = torchrun_command(2, ["fit", "--nproc-per-node", "2", "--dataset", "meld"])
    assert cmd == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                   "-m", "trainer", "fit", "--dataset", "meld"]  # fmt: skip
    with pytest.raises(ValueError, match="nproc_per_node"):
        torchrun_command(0, ["fit"])
