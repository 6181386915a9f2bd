"""DDP: v̂ is a function of the (synchronised) weights, so it needs no communication."""
import gc
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from convnorm import ConvNorm2d


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(
        ConvNorm2d(3, 8, 3, padding=1, affine_init="random", track_running_spectrum=True),
        nn.ReLU(),
        ConvNorm2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        ConvNorm2d(8, 4, 1),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5),
    ).double()


def make_batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 5, (8,), generator=g)


STEPS = 3


def train_steps(model, x, y, steps):
    """SGD steps on a fixed batch; every forward updates the running spectrum of the first layer."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = nn.parallel.DistributedDataParallel(make_model())
    x, y = make_batch()
    shard = slice(rank * 4, rank * 4 + 4)
    nn.functional.cross_entropy(model(x[shard]), y[shard]).backward()
    grads = {k: p.grad.clone() for k, p in model.module.named_parameters()}
    torch.save(grads, os.path.join(out_dir, f"grads{rank}.pt"))
    train_steps(model, x[shard], y[shard], STEPS)
    torch.save(model.module.state_dict(), os.path.join(out_dir, f"state{rank}.pt"))
    # Both ranks finish their collectives, and DDP's reducer (which holds gloo work objects) is
    # gone, before the group is torn down: otherwise gloo's threads can abort the process.
    dist.barrier()
    del model
    gc.collect()
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_gradients_equal_full_batch_gradients():
    model = make_model()
    x, y = make_batch()
    nn.functional.cross_entropy(model(x), y).backward()
    expected = {k: p.grad for k, p in model.named_parameters()}
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        for rank in range(2):
            got = torch.load(os.path.join(tmp, f"grads{rank}.pt"))
            assert set(got) == set(expected)
            for k in expected:
                assert torch.allclose(got[k], expected[k], atol=1e-12), k
        states = [torch.load(os.path.join(tmp, f"state{rank}.pt")) for rank in range(2)]
    # The running spectrum needs no communication: it follows the synchronised weights, so both
    # ranks hold the same buffers, and those of one process trained on the whole batch.
    model.zero_grad()
    train_steps(model, x, y, STEPS)
    single = model.state_dict()
    assert int(states[0]["0.num_batches_tracked"]) == 1 + STEPS
    for key in ("0.running_spectrum", "0.running_grid", "0.num_batches_tracked"):
        assert torch.equal(states[0][key], states[1][key]), key
        assert torch.allclose(states[0][key].double(), single[key].double(), rtol=1e-12, atol=0), key
