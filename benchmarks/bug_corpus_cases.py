"""Shared helpers and the torchcfm, diffusers and flow_matching adapters of bench_bug_corpus.

Each case is `fn(version) -> Report`, run in a child process whose sys.path starts with
runs/peers/<package>-<version> (and runs/peers/_deps: einops, einx, frozendict,
ema-pytorch). rectified-flow-pytorch's package __init__ imports its whole zoo (torchvision,
accelerate, hyper-connections); the child loads single modules instead (`rfp`) and stubs
the imports a case never calls (`stub_missing`). Conventions are translated here, never in
the kit: lucidrains' MeanFlow runs from data (t = 0) to noise (t = 1) and feeds the network
(z, tau, tau - r_tau); diffusers' sigma = 1 is noise. Labels go in as the `cond` argument.
"""

import importlib
import importlib.util
import os
import sys
import types

import numpy as np

D_IMAGE = (2, 8, 8)  # the kit's 128 features as images, for networks that want (B, C, H, W)


class _Meta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Dummy


class _Dummy(metaclass=_Meta):
    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Dummy()

    def __getattr__(self, name):
        return _Dummy()


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Dummy


def stub_missing(names):
    """Register a stub module for each name that cannot be imported (and its parents)."""
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 -- missing or broken: a stub stands in
            parts = name.split(".")
            for k in range(1, len(parts) + 1):
                sub = ".".join(parts[:k])
                if sub not in sys.modules or not isinstance(sys.modules[sub], _StubModule):
                    sys.modules[sub] = _StubModule(sub)


def rfp(module):
    """rectified_flow_pytorch.<module> without running the package's __init__."""
    stub_missing(["torchvision", "torchvision.utils", "torchvision.models",
                  "torchvision.transforms", "accelerate", "hyper_connections",
                  "hyper_connections.hyper_connections_channel_first", "lpips", "x_unet"])
    if "rectified_flow_pytorch" not in sys.modules:
        spec = importlib.util.find_spec("rectified_flow_pytorch")
        pkg = types.ModuleType("rectified_flow_pytorch")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["rectified_flow_pytorch"] = pkg
    for _ in range(12):  # later releases import more of lucidrains' zoo (x_unet, x_transformers)
        try:
            return importlib.import_module(f"rectified_flow_pytorch.{module}")
        except ModuleNotFoundError as e:
            if not e.name or e.name.split(".")[0] in ("torch", "numpy", "einops", "einx",
                                                      "rectified_flow_pytorch"):
                raise
            for name in list(sys.modules):
                if name.startswith("rectified_flow_pytorch."):
                    del sys.modules[name]
            stub_missing([e.name])
    raise ModuleNotFoundError(f"rectified_flow_pytorch.{module}: too many missing imports")


def _net(forward):
    """An nn.Module whose forward is `forward(module, *args, **kwargs)`, with one parameter."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def forward(self, *args, **kwargs):
            return forward(*args, **kwargs)
    return Net()


# ---------------------------------------------------------------- torchcfm
def _cfm_loss(make, with_x0):
    import torch

    def step(model, x1, y, x0=None):
        x0 = torch.randn_like(x1) if x0 is None else x0
        t, xt, ut = make().sample_location_and_conditional_flow(x0, x1)
        return torch.mean((model(xt, t) - ut) ** 2)

    if with_x0:
        return lambda model, x1, y, x0: step(model, x1, y, x0)
    return lambda model, x1, y: step(model, x1, y)


def torchcfm_training(version, cls="ConditionalFlowMatcher", scheduler="condot"):
    """The README's step: t, xt, ut = FM.sample_location_and_conditional_flow(x0, x1);
    loss = mean((v(xt, t) - ut)^2). Target draws its own noise (torchcfm#156): no x0."""
    import torchcfm.conditional_flow_matching as cfm

    from fm_torch.conformance import check_training_step

    make = getattr(cfm, cls)
    with_x0 = cls not in ("TargetConditionalFlowMatcher",
                          "ExactOptimalTransportConditionalFlowMatcher")
    return check_training_step(_cfm_loss(lambda: make(sigma=0.0), with_x0), scheduler)


# ---------------------------------------------------------------- diffusers
def diffusers_seeded(version):
    """FlowMatchEulerDiscreteScheduler(stochastic_sampling=True), 4 steps, generator given."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from fm_torch.conformance import check_seeded

    def sampler(v, x0, generator):
        sched = FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)
        sched.set_timesteps(4)
        x = x0
        for ts in sched.timesteps:
            sigma = float(ts) / sched.config.num_train_timesteps
            x = sched.step(-v(x, 1.0 - sigma), ts, x, generator=generator).prev_sample
        return x
    return check_seeded(sampler)


def diffusers_solver(version, cls="FlowMatchEulerDiscreteScheduler", method="euler"):
    """A flow-match scheduler as odeint on our grid: sigmas = 1 - t_grid (sigma = 1 noise),
    model output dx/dsigma = -v(x, 1 - sigma)."""
    import diffusers

    from fm_torch.conformance import check_solver

    def odeint(v, x0, t_grid):
        sched = getattr(diffusers, cls)(shift=1.0)
        sigmas = (1.0 - t_grid[:-1]).tolist()
        sched.set_timesteps(sigmas=sigmas) if "sigmas" in _params(sched.set_timesteps) \
            else sched.set_timesteps(len(sigmas))
        x = x0
        for ts in sched.timesteps:
            sigma = float(sched.sigmas[sched.step_index or 0]) if sched.step_index is not None \
                else float(ts) / sched.config.num_train_timesteps
            x = sched.step(-v(x, 1.0 - sigma), ts, x).prev_sample
        return x
    return check_solver(odeint, method, states="last", backward=False)


def _params(fn):
    import inspect

    return inspect.signature(fn).parameters


# ---------------------------------------------------------------- Meta's flow_matching
def meta_training(version, scheduler="condot"):
    """The README's step with AffineProbPath: path.sample(t=rand(B), x_0, x_1); MSE on dx_t."""
    import torch
    from flow_matching.path import AffineProbPath
    from flow_matching.path.scheduler import CondOTScheduler, CosineScheduler

    from fm_torch.conformance import check_training_step

    path = AffineProbPath({"condot": CondOTScheduler, "cosine": CosineScheduler}[scheduler]())

    def loss(model, x1, y, x0):
        t = torch.rand(len(x1), dtype=x1.dtype)
        s = path.sample(t=t, x_0=x0, x_1=x1)
        return torch.pow(model(s.x_t, s.t) - s.dx_t, 2).mean()
    return check_training_step(loss, scheduler)


def meta_prediction(version, scheduler="cosine", target="x1"):
    """AffineProbPath.velocity_to_target / velocity_to_epsilon: x1 (x0) from v."""
    from flow_matching.path import AffineProbPath
    from flow_matching.path.scheduler import CondOTScheduler, CosineScheduler

    from fm_torch.conformance import check_prediction

    path = AffineProbPath({"condot": CondOTScheduler, "cosine": CosineScheduler}[scheduler]())
    fn = path.velocity_to_target if target == "x1" else path.velocity_to_epsilon
    return check_prediction(lambda xt, v, t: fn(v, xt, t[:, None]), target, scheduler)


def peer_folder(package, version):
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "runs",
                        "peers", f"{package}-{version}")


def versions_note():
    return f"numpy {np.__version__}"
