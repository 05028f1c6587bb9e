"""The samplers that make a multi-process run see what one process sees."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from diffusionlab.data.samplers import EvalBatchSampler, ResumableSampler, eval_batch_sampler, global_batch_index


@pytest.mark.parametrize("world", [1, 2, 3])
def test_training_shards_partition_one_permutation(world):
    shards = [list(ResumableSampler(20, seed=5, rank=r, world_size=world)) for r in range(world)]
    assert all(len(s) == 20 // world for s in shards)
    seen = [i for s in shards for i in s]
    assert len(set(seen)) == len(seen)  # no item twice in an epoch
    single = list(ResumableSampler(20, seed=5))
    dealt = [single[k] for k in range(20 - 20 % world)]
    assert sorted(seen) == sorted(dealt)  # the same permutation, dealt out


def test_training_sampler_resumes_mid_epoch_and_reshuffles_next_epoch():
    full = list(ResumableSampler(12, seed=1))
    s = ResumableSampler(12, seed=1)
    s.resume_at(epoch=0, skip=5)
    assert list(s) == full[5:] and len(s) == 12  # the epoch's length: Lightning counts the consumed batches
    s.set_epoch(1)
    assert len(list(s)) == 12 and list(s) != full


@pytest.mark.parametrize(("n", "batch", "world"), [(10, 3, 1), (10, 3, 2), (10, 3, 3), (128, 64, 2), (5, 8, 2)])
def test_eval_batches_are_dealt_whole_and_map_back_to_the_single_process_order(n, batch, world):
    single = list(EvalBatchSampler(n, batch if world == 1 else EvalBatchSampler(n, batch, 0, world).batch_size))
    assert [i for b in single for i in b] == list(range(n))  # fixed order, every item once
    dealt = {}
    for rank in range(world):
        trainer = SimpleNamespace(global_rank=rank, world_size=world)
        batches = list(eval_batch_sampler(n, batch, trainer))
        assert batches, f"rank {rank} got no batch: it would hang the epoch-end reduction"
        for local, b in enumerate(batches):
            dealt[global_batch_index(local, trainer)] = b
    assert [dealt[i] for i in range(len(single))] == single  # each batch once, by the rank the index names


def test_eval_batches_shrink_so_every_rank_gets_one_and_refuse_too_few_items():
    assert EvalBatchSampler(5, 8, 0, 2).batch_size == 3  # 2 batches (3 + 2 items) for 2 ranks
    assert EvalBatchSampler(5, 4, 0, 2).batch_size == 4  # already 2 batches (4 + 1)
    assert EvalBatchSampler(5, 8, 0, 1).batch_size == 8  # one process keeps its batch size
    with pytest.raises(ValueError, match="3 ranks"):
        EvalBatchSampler(2, 4, 0, 3)
