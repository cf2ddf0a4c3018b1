"""Distributed training with customloss criteria: 2 CPU processes, gloo, loopback only.

A small two-head model is trained with a multitask objective (a regression task with a
DSL-defined loss, a classification task with the built-in ``bce_with_logits``) combined
by uncertainty weighting (learnable log-variances, Kendall et al. 2018) under
``DistributedDataParallel``: each of 2 processes sees half of the global batch.  The final
parameters (model and log-variances) must equal single-process training on the whole
batch: DDP averages the two half-batch gradients, which equals the full-batch gradient
because every task loss is a mean over equal halves and the objective is linear in them.
"""

from __future__ import annotations

import importlib
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import customloss as cl

WORLD = 2
GLOBAL_BATCH = 16
STEPS = 25
LR = 0.05
TIMEOUT_S = 120


def _objective() -> Any:
    """The multitask criterion as an ``nn.Module`` (its log-variances are parameters)."""
    multitask = importlib.import_module("customloss.multitask").multitask
    reg = cl.define(
        "pseudo_huber",
        "d**2 * (sqrt(1 + ((p - y)/d)**2) - 1)",
        inputs=("p", "y"),
        params={"d": 1.0},
    )
    mt = multitask({"reg": reg, "cls": cl.get("bce_with_logits")}, weighting="uncertainty")
    return mt.torch()


class Net(nn.Module):
    """Shared trunk, two heads, and the criterion (so DDP also syncs the log-variances)."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
        self.heads = nn.Linear(8, 2)
        self.criterion = _objective()

    def forward(self, x: torch.Tensor, reg: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        out = self.heads(self.trunk(x))
        return self.criterion({"reg": out[:, 0], "cls": out[:, 1]}, {"reg": reg, "cls": cls})


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(GLOBAL_BATCH, 4, generator=g, dtype=torch.float64)
    reg = x @ torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64) + 0.3 * torch.randn(
        GLOBAL_BATCH, generator=g, dtype=torch.float64
    )
    cls = (x[:, 0] + x[:, 1] > 0).to(torch.float64)
    return x, reg, cls


def _new_net() -> Net:
    torch.manual_seed(0)
    return Net().double()


def _train(net: nn.Module, x: torch.Tensor, reg: torch.Tensor, cls: torch.Tensor) -> list[float]:
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = net(x, reg, cls)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses


def _worker(rank: int, port: int, out: str) -> None:
    """One DDP process: trains on its half of the global batch, rank 0 saves the result."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        GLOO_SOCKET_IFNAME="lo",
        CUSTOMLOSS_COMPILE="0",
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        net = nn.parallel.DistributedDataParallel(_new_net())
        x, reg, cls = _data()
        part = slice(rank * GLOBAL_BATCH // WORLD, (rank + 1) * GLOBAL_BATCH // WORLD)
        losses = _train(net, x[part], reg[part], cls[part])
        if rank == 0:
            torch.save({"state": net.module.state_dict(), "losses": losses}, out)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_ddp(out: Path) -> None:
    ctx = mp.start_processes(
        _worker, args=(_free_port(), str(out)), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.terminate()
            raise AssertionError(f"distributed training did not finish in {TIMEOUT_S} s")


def test_ddp_two_processes_equals_single_process(tmp_path: Path) -> None:
    out = tmp_path / "ddp.pt"
    _run_ddp(out)
    ddp = torch.load(out, weights_only=True)

    single = _new_net()
    before = {k: v.clone() for k, v in single.state_dict().items()}
    losses = _train(single, *_data())

    ref = single.state_dict()
    assert ddp["state"].keys() == ref.keys()
    assert "criterion.log_vars.reg" in ref and "criterion.log_vars.cls" in ref
    for name, value in ref.items():
        torch.testing.assert_close(ddp["state"][name], value, rtol=1e-10, atol=1e-12, msg=name)
        # and training really moved every parameter (the comparison is not vacuous)
        assert not torch.equal(value, before[name]), f"{name} did not change"
    # without the gradient averaging, rank 0 would have trained on its half only: different
    half = _new_net()
    x, reg, cls = _data()
    _train(half, x[:8], reg[:8], cls[:8])
    assert not torch.allclose(half.state_dict()["heads.weight"], ref["heads.weight"], rtol=1e-6)
    # the learned log-variances moved away from their initial 0, differently per task
    s_reg, s_cls = float(ref["criterion.log_vars.reg"]), float(ref["criterion.log_vars.cls"])
    assert s_reg != s_cls
    assert losses[-1] < losses[0]
    # each process's objective is on its half batch; their mean is the full-batch one
    # at the first step (same initial parameters)
    net0 = _new_net()
    halves = [
        float(net0(x[i * 8 : (i + 1) * 8], reg[i * 8 : (i + 1) * 8], cls[i * 8 : (i + 1) * 8]))
        for i in range(2)
    ]
    assert abs(sum(halves) / 2 - losses[0]) < 1e-12
