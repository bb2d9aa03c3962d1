"""The rectified-flow-pytorch adapters of benchmarks/bench_bug_corpus.py (the shared
helpers, the module loader `rfp` and the stubs are in benchmarks/bug_corpus_cases.py).

lucidrains' MeanFlow runs from data (tau = 0) to noise (tau = 1) and feeds its network
(z, tau, tau - r_tau); the adapter translates that into our time. Labels go in as `cond`.
"""

from benchmarks.bug_corpus_cases import D_IMAGE, _net, rfp


# ---------------------------------------------------------------- rectified-flow-pytorch
def nanoflow_sampler(version):
    """NanoFlow.sample(steps=N) as odeint: its noise is the kit's x0, its net the kit's field."""
    import torch

    from fm_torch.conformance import check_solver

    NanoFlow = rfp("nano_flow").NanoFlow

    def odeint(v, x0, t_grid):
        nf = NanoFlow(_net(lambda x, times: v(x, times)), times_cond_kwarg="times")
        nf.data_shape = tuple(x0.shape[1:])
        real = torch.randn
        torch.randn = lambda *a, **k: x0.clone()
        try:
            return nf.sample(steps=len(t_grid) - 1, batch_size=x0.shape[0])
        finally:
            torch.randn = real
    return check_solver(odeint, "euler", states="last", backward=False)


def nanoflow_training(version):
    from fm_torch.conformance import check_training_step

    NanoFlow = rfp("nano_flow").NanoFlow

    def loss(model, x1, y):
        nf = NanoFlow(_net(lambda x, times: model(x, times)), times_cond_kwarg="times")
        return nf(x1)
    return check_training_step(loss)


def rectified_flow_training(version):
    """RectifiedFlow(net)(x1, noise=x0, cond=y): the labels should reach the network."""
    from fm_torch.conformance import check_training_step

    mod = rfp("rectified_flow")

    def loss(model, x1, y, x0):
        net = _net(lambda x, times, cond=None: model(x, times, cond))
        rf = mod.RectifiedFlow(net, time_cond_kwarg="times", data_normalize_fn=mod.identity,
                               data_unnormalize_fn=mod.identity)
        return rf(x1, noise=x0, cond=y)
    return check_training_step(loss, num_classes=10)


def uaflow_training(version):
    """UAFlow((images, labels)): drops the labels of a whole batch with probability 0.1; the
    network returns (mean, sigma), sigma = 1 here, so the loss is half a squared error."""
    import torch

    from fm_torch.conformance import check_training_step

    UAFlow = rfp("ua_flow").UAFlow

    def loss(model, x1, y, x0):
        def forward(x, times, cond=None):
            mean = model(x, times, cond)
            return mean, torch.ones_like(mean)
        ua = UAFlow(_net(forward), times_cond_kwarg="times")
        ua.train()
        images = x1.reshape(-1, *D_IMAGE)
        return ua((images, y), noise=x0.reshape(images.shape))
    return check_training_step(loss, num_classes=10, steps=64, reduction="any")


def meanflow_training(version):
    """MeanFlow (data at tau = 0, noise at tau = 1; net(z, tau, tau - r_tau)) in our time:
    z sits at r = 1 - tau, the pair's other end is t = 1 - r_tau, and u_ours = -u_theirs.
    Uniform times (use_logit_normal_sampler=False: where rectified-flow-pytorch#16 was)."""
    from fm_torch.conformance import check_training_step

    MeanFlow = rfp("mean_flow").MeanFlow

    def loss(model, x1, y, x0):
        def forward(z, tau, delta, *cond):
            return -model(z, 1 - tau + delta, None, r=1 - tau)
        mf = MeanFlow(_net(forward), use_logit_normal_sampler=False)
        return mf(x1, noise=x0)
    return check_training_step(loss, objective="meanflow", steps=64)


def rfp_data_prediction(version):
    """PseudoHuberLossWithLPIPS's predicted data from (noised, flow, times): the kit reads it
    off the LPIPS call (the VGG and the Huber term are replaced by recorders)."""
    import inspect

    import torch

    from fm_torch.conformance import check_prediction

    mod = rfp("rectified_flow")

    def convert(xt, v, t):
        loss = object.__new__(mod.PseudoHuberLossWithLPIPS)
        torch.nn.Module.__init__(loss)
        seen = {}

        def lpips(data, pred_data, reduction="none"):
            seen["x1"] = pred_data
            return torch.zeros(len(data), 1, dtype=xt.dtype)
        loss.lpips = lpips
        loss.pseudo_huber = lambda pred, target, reduction="none": torch.zeros_like(pred)
        kwargs = dict(times=t[:, None], data=xt)
        if "noised" in inspect.signature(loss.forward).parameters:
            kwargs["noised"] = xt
        loss.forward(v, v, **kwargs)
        return seen["x1"]
    return check_prediction(convert, "x1", "condot")


def rectified_flow_prediction(version):
    """RectifiedFlow.forward's predicted data (handed to its loss as pred_data): data = noise =
    xt makes its noised input xt at any t; torch.rand returns the kit's t; the net returns v."""
    import torch

    from fm_torch.conformance import check_prediction

    mod = rfp("rectified_flow")

    def convert(xt, v, t):
        seen = {}

        class Capture(torch.nn.Module):
            def forward(self, output, target, pred_data=None, **kwargs):
                seen["x1"] = pred_data
                return (output * 0).sum()
        rf = mod.RectifiedFlow(_net(lambda x, times: v), time_cond_kwarg="times",
                               loss_fn=Capture(), data_normalize_fn=mod.identity,
                               data_unnormalize_fn=mod.identity)
        real = torch.rand
        torch.rand = lambda *a, **k: t.clone()
        try:
            rf(xt, noise=xt)
        finally:
            torch.rand = real
        return seen["x1"]
    return check_prediction(convert, "x1", "condot")
