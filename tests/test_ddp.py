"""Two-process CPU data parallelism (gloo): averaged gradients, and training under torchrun."""

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fm_torch.paths import AffinePath
from fm_torch.train import flow_matching_loss


def _model():
    from fm_torch.models.unet import UNet

    torch.manual_seed(0)
    model = UNet(base=8, mults=(1, 2), heads=2)
    with torch.no_grad():  # randomise the zero-initialised output layers so grads are rich
        for name, p in model.named_parameters():
            if name.startswith("conv_out") or ".conv2." in name:
                p.normal_(0, 0.1)
    return model


def _batch(B=8):
    g = torch.Generator().manual_seed(1)
    x1 = torch.rand((B, 1, 28, 28), generator=g) * 2 - 1
    y = torch.randint(0, 11, (B,), generator=g)
    x0 = torch.randn((B, 1, 28, 28), generator=g)
    t = torch.rand(B, generator=g)
    return x1, y, x0, t


def _worker(rank, world_size, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    try:
        net = torch.nn.parallel.DistributedDataParallel(_model())
        x1, y, x0, t = (a[rank::world_size] for a in _batch())  # this rank's shard
        flow_matching_loss(net, AffinePath(), x1, y, x0, t).backward()
        grads = {n: p.grad for n, p in net.module.named_parameters()}
        torch.save(grads, os.path.join(out_dir, f"grads{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_gradient_equals_single_process_gradient(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    model = _model()
    flow_matching_loss(model, AffinePath(), *_batch()).backward()
    for rank in range(2):
        grads = torch.load(tmp_path / f"grads{rank}.pt", weights_only=True)
        for name, p in model.named_parameters():
            # mean over the combined batch = average of the two shard means (equal sizes)
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
def test_torchrun_trains_and_resumes(tmp_path):
    """Two ranks under torchrun (--standalone: a free port of its own, so parallel runs do
    not collide); 3 steps, then a resume to 5, end with the weights, EMA and Adam state of
    an uninterrupted 5-step run bit for bit (gloo's two-rank sum and the CPU kernels are
    deterministic, and each rank's generator state is in the checkpoint)."""

    def torchrun(out, *extra):
        args = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2", "-m", "fm_torch.cli", "train", "--data", "mnist",
                "--base", "8", "--mults", "1,2", "--batch", "4", "--n-train", "64",
                "--ckpt-every", "3", "--sample-every", "1000", "--no-progress",
                "--threads", "1",
                "--lr-schedule", "constant",  # resumed to more steps: no decaying schedule
                "--out", str(out), *extra]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        return torch.load(out / "ckpt.pt", weights_only=True)

    ckpt = torchrun(tmp_path / "run", "--steps", "3")
    assert ckpt["step"] == 3 and ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert not torch.equal(ckpt["rng"][0], ckpt["rng"][1])  # each rank draws its own batch
    resumed = torchrun(tmp_path / "run", "--steps", "5", "--resume")
    whole = torchrun(tmp_path / "whole", "--steps", "5")
    assert resumed["step"] == whole["step"] == 5
    _assert_same_tensors(resumed["model"], whole["model"], "model")
    _assert_same_tensors(resumed["ema"], whole["ema"], "ema")
    _assert_same_tensors(resumed["optimizer"], whole["optimizer"], "optimizer")
    _assert_same_tensors(resumed["rng"], whole["rng"], "rng")


def _assert_same_tensors(a, b, where):
    """Nested dicts/lists of tensors and numbers, equal bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for k, (u, v) in enumerate(zip(a, b, strict=True)):
            _assert_same_tensors(u, v, f"{where}[{k}]")
    else:
        assert a == b, where
