"""The PyTorch peers and PyTorch's matmul rate (needs `pip install 'netalchemy[bench]'`).

  torch_eager    `nn.Sequential`, `torch.optim.Adam(fused=True)` (foreach where fused is
                 unsupported), minibatches by `torch.randint`; one seed.
  torch_compile  the same loop with `torch.compile(model)` (the optimizer step stays eager).
  torch_func     an ensemble: `torch.func.stack_module_state` + `functional_call` + `vmap`
                 over seeds, one fused Adam over the stacked parameters (Adam is elementwise,
                 so this equals an independent Adam per seed).
  matmul         one n×n float32 `torch.mm`.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from .settings import WORKLOADS
from .worker import Runner


def _setup(spec: dict) -> None:
    """Threads as the settings ask (0: PyTorch's default), a fixed seed."""
    if spec["torch_threads"]:
        torch.set_num_threads(spec["torch_threads"])
    torch.manual_seed(0)


def mlp(widths) -> nn.Sequential:
    """Linear layers with ReLU between them."""
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def adam(params, lr: float) -> tuple[torch.optim.Optimizer, str]:
    """Adam(fused=True) where this PyTorch supports it on CPU, else Adam(foreach=True)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True), "fused"
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.Adam(params, lr=lr, foreach=True), "foreach"


def _loop_runner(spec: dict, data: dict, *, compiled: bool) -> Runner:
    _setup(spec)
    w = WORKLOADS[spec["workload"]]
    model = mlp(w.widths)
    opt, kind = adam(model.parameters(), w.lr)
    forward = torch.compile(model) if compiled else model
    x, y = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"]).long()

    def run():
        loss = None
        for _ in range(spec["steps"]):
            idx = torch.randint(0, len(x), (w.batch,))
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(forward(x[idx]), y[idx])
            loss.backward()
            opt.step()
        return loss.item()

    return Runner(run, info=lambda: {"adam": kind, "threads": torch.get_num_threads()})


def eager_runner(spec: dict, data: dict) -> Runner:
    """One seed, eager PyTorch."""
    return _loop_runner(spec, data, compiled=False)


def compiled_runner(spec: dict, data: dict) -> Runner:
    """One seed, the model through `torch.compile`."""
    return _loop_runner(spec, data, compiled=True)


def ensemble_runner(spec: dict, data: dict) -> Runner:
    """`spec["seeds"]` seeds at once through `torch.func.vmap`, one Adam over the stacked params."""
    _setup(spec)
    w = WORKLOADS[spec["workload"]]
    n, batch, classes = spec["seeds"], w.batch, w.widths[-1]
    models = [mlp(w.widths) for _ in range(n)]
    params, buffers = stack_module_state(models)  # name -> (seeds, ...) leaf tensors
    base = copy.deepcopy(models[0]).to("meta")
    del models
    opt, kind = adam(params.values(), w.lr)
    x, y = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"]).long()

    def one(p, b, xb):
        return functional_call(base, (p, b), (xb,))

    def run():
        loss = None
        for _ in range(spec["steps"]):
            idx = torch.randint(0, len(x), (n, batch))
            logits = vmap(one)(params, buffers, x[idx])  # (seeds, batch, classes)
            per_seed = F.cross_entropy(logits.reshape(-1, classes), y[idx].reshape(-1), reduction="none")
            loss = per_seed.view(n, batch).mean(1).sum()  # seeds are independent: sum of their losses
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return loss.item()

    return Runner(run, info=lambda: {"adam": kind, "threads": torch.get_num_threads()})


def matmul_runner(spec: dict, data: dict) -> Runner:
    """One `spec["matmul_size"]`² float32 `torch.mm` per call."""
    _setup(spec)
    size = spec["matmul_size"]
    rng = np.random.default_rng(0)
    a, b = (torch.from_numpy(rng.standard_normal((size, size), dtype=np.float32)) for _ in range(2))
    out = torch.empty_like(a)
    return Runner(lambda: torch.mm(a, b, out=out), info=lambda: {"threads": torch.get_num_threads()})
