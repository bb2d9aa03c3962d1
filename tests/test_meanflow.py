"""MeanFlow: the MLP JVP in (x, r, t), the loss and its gradients in both packages."""

import numpy as np
import pytest
import torch

import fm_numpy.meanflow as npm
import fm_numpy.paths as np_paths
import fm_torch.meanflow as thm
import fm_torch.paths as th_paths
from fm_numpy.models.mlp import MLP as NumpyMLP
from fm_torch.models.mlp import MLP as TorchMLP


def _batch(seed, B=9, D=3, classes=None):
    rng = np.random.default_rng(seed)
    x0, x1 = rng.standard_normal((B, D)), rng.standard_normal((B, D)) + 1
    r, t = npm.sample_r_t(rng, B, ratio=0.6, dtype=np.float64)
    y = None if classes is None else rng.integers(0, classes + 1, B)
    return x0, x1, y, r, t


@pytest.mark.parametrize("classes", [None, 4])
def test_jvp_in_x_r_t_matches_central_differences(classes):
    rng = np.random.default_rng(0)
    model = NumpyMLP(3, 16, 2, 8, classes, seed=1, dtype=np.float64, mean_flow=True)
    B = 7
    x = rng.standard_normal((B, 3))
    r = rng.uniform(0.1, 0.4, B)
    t = rng.uniform(0.5, 0.9, B)
    y = None if classes is None else rng.integers(0, classes, B)
    dx, dr, dt = rng.standard_normal((B, 3)), rng.standard_normal(B), rng.standard_normal(B)
    v, dv = model.jvp(x, t, dx, y, r=r, dr=dr, dt=dt)
    np.testing.assert_allclose(v, model(x, t, y, r=r), rtol=1e-14)
    h = 1e-7  # the time features oscillate at 1000 t freqs: a small step
    up = model(x + h * dx, t + h * dt, y, r=r + h * dr)
    down = model(x - h * dx, t - h * dt, y, r=r - h * dr)
    fd = (up - down) / (2 * h)
    np.testing.assert_allclose(dv, fd, rtol=1e-6, atol=1e-6 * np.abs(fd).max())
    # each tangent alone (and r=None, where the time of x is t)
    for tangents in ((dx, 0.0, 0.0), (0 * dx, dr, 0.0), (0 * dx, 0.0, dt)):
        _, part = model.jvp(x, t, tangents[0], y, r=r, dr=tangents[1], dt=tangents[2])
        fd = (model(x + h * tangents[0], t + h * tangents[2], y, r=r + h * tangents[1])
              - model(x - h * tangents[0], t - h * tangents[2], y, r=r - h * tangents[1])) / (2 * h)
        np.testing.assert_allclose(part, fd, rtol=1e-6, atol=1e-6 * max(np.abs(fd).max(), 1e-3))
    _, part = model.jvp(x, t, dx, y, dt=dt)
    fd = (model(x + h * dx, t + h * dt, y) - model(x - h * dx, t - h * dt, y)) / (2 * h)
    np.testing.assert_allclose(part, fd, rtol=1e-6, atol=1e-6 * np.abs(fd).max())


def test_plain_mlp_jvp_in_t_and_r_refused():
    model = NumpyMLP(2, 8, 1, 4, seed=0, dtype=np.float64)
    x, dx = np.ones((3, 2)), np.ones((3, 2))
    h = 1e-6
    _, dv = model.jvp(x, 0.5, dx, dt=1.0)
    fd = (model(x + h * dx, 0.5 + h) - model(x - h * dx, 0.5 - h)) / (2 * h)
    np.testing.assert_allclose(dv, fd, rtol=1e-6)
    with pytest.raises(ValueError, match="mean-flow models only"):
        model(x, 0.5, r=0.2)
    mf = NumpyMLP(2, 8, 1, 4, seed=0, dtype=np.float64, mean_flow=True)
    with pytest.raises(ValueError, match="must not exceed t"):
        mf(x, 0.2, r=0.5)
    with pytest.raises(ValueError, match="mean-flow models only"):
        TorchMLP(2, 8, 1, 4, dtype=torch.float64)(torch.ones(3, 2), 0.5, r=0.2)


def _grads_numpy(model, path, x0, x1, y, r, t, p):
    mse, grad = npm.meanflow_loss(model, path, x0, x1, y, r, t, norm_p=p)
    return mse, {k: g.copy() for k, g in model.backward(grad).items()}


@pytest.mark.parametrize("classes,p", [(None, 1.0), (5, 0.5), (None, 0.0)])
def test_loss_and_every_gradient_agree_between_packages(classes, p, tmp_path):
    x0, x1, y, r, t = _batch(3, classes=classes)
    np_model = NumpyMLP(3, 12, 2, 8, classes, seed=2, dtype=np.float64, mean_flow=True)
    np_model.save_npz(tmp_path / "m.npz")
    th_model = TorchMLP.from_npz(tmp_path / "m.npz")
    assert th_model.mean_flow and th_model.dtype == torch.float64
    mse, grads = _grads_numpy(np_model, np_paths.AffinePath(), x0, x1, y, r, t, p)
    T = torch.from_numpy
    L, th_mse = thm.meanflow_loss(th_model, th_paths.AffinePath(), T(x1),
                                  None if y is None else T(y), T(x0), T(r), T(t), norm_p=p)
    L.backward()
    assert abs(float(th_mse) - mse) <= 1e-10 * mse
    m = None
    for name, g in grads.items():
        th_g = getattr(th_model, name).grad.numpy()
        scale = np.abs(g).max() + 1e-300
        np.testing.assert_allclose(th_g, g, rtol=0, atol=1e-10 * scale, err_msg=name)
        m = name
    assert m is not None


def test_with_r_equal_t_meanflow_is_flow_matching():
    x0, x1, _, r, _ = _batch(4)
    model = NumpyMLP(3, 12, 2, 8, seed=5, dtype=np.float64, mean_flow=True)
    path = np_paths.AffinePath()
    mse, grad = npm.meanflow_loss(model, path, x0, x1, None, r, r, norm_p=0.0)
    g_mf = {k: g.copy() for k, g in model.backward(grad).items()}
    xt, ut = path.sample(x0, x1, r)
    v = model(xt, r)
    diff = v - ut
    assert mse == pytest.approx(float(np.mean(diff * diff)), rel=1e-13)
    g_fm = model.backward(2 * diff / diff.size)
    for k in g_fm:
        np.testing.assert_allclose(g_mf[k], g_fm[k], rtol=1e-12, atol=1e-15)


def test_r_t_sampling_fraction_and_order():
    rng = np.random.default_rng(0)
    r, t = npm.sample_r_t(rng, 20000, ratio=0.25, dtype=np.float64)
    assert np.all(r <= t) and np.all((r > 0) & (t < 1))
    assert abs(np.mean(r != t) - 0.25) < 0.02
    g = torch.Generator().manual_seed(0)
    rt, tt = thm.sample_r_t(g, 20000, ratio=0.25, dtype=torch.float64)
    assert bool((rt <= tt).all()) and abs(float((rt != tt).double().mean()) - 0.25) < 0.02


def test_k_step_sampler_both_packages(tmp_path):
    model = NumpyMLP(2, 8, 2, 4, seed=0, dtype=np.float64, mean_flow=True)
    model.save_npz(tmp_path / "m.npz")
    th_model = TorchMLP.from_npz(tmp_path / "m.npz")
    x0 = np.random.default_rng(1).standard_normal((5, 2))
    xs = npm.sample(model, x0, steps=1)
    np.testing.assert_allclose(xs[-1], x0 + model(x0, 1.0, r=0.0), rtol=1e-15)
    xs4 = npm.sample(model, x0, steps=4)
    th4 = thm.sample(th_model, torch.from_numpy(x0), steps=4).numpy()
    assert xs4.shape == (5, 5, 2)
    np.testing.assert_allclose(th4, xs4, rtol=1e-12, atol=1e-12)


def test_old_files_load_as_plain_models(tmp_path):
    plain = NumpyMLP(2, 8, 1, 4, seed=0)
    plain.save_npz(tmp_path / "old.npz")
    assert "mean_flow" not in plain.config
    assert not NumpyMLP.from_npz(tmp_path / "old.npz").mean_flow
    assert not TorchMLP.from_npz(tmp_path / "old.npz").mean_flow
    NumpyMLP(2, 8, 1, 4, seed=0, mean_flow=True).save_npz(tmp_path / "mf.npz")
    with pytest.raises(ValueError, match="holds an MLP"):
        NumpyMLP(2, 8, 1, 4).load_npz(tmp_path / "mf.npz")
    assert NumpyMLP.from_npz(tmp_path / "mf.npz").mean_flow


def test_unet_mean_flow_jvp_matches_differences_and_old_weights_load():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from fm_torch.models.unet import UNet

    torch.manual_seed(0)
    plain = UNet(1, 8, (1, 2), 1, 8, 10)
    assert not any(k.startswith("interval_mlp") for k in plain.state_dict())
    UNet(1, 8, (1, 2), 1, 8, 10).load_state_dict(plain.state_dict())  # old checkpoints load
    model = UNet(1, 8, (1, 2), 1, 8, 10, mean_flow=True).double()
    torch.nn.init.normal_(model.conv_out.weight, std=0.1)  # not the zero start: u depends on all
    g = torch.Generator().manual_seed(1)
    x = torch.randn((2, 1, 28, 28), generator=g, dtype=torch.float64)
    v = torch.randn((2, 1, 28, 28), generator=g, dtype=torch.float64)
    r = torch.tensor([0.1, 0.3], dtype=torch.float64)
    t = torch.tensor([0.6, 0.3], dtype=torch.float64)
    y = torch.tensor([3, 10])

    def u(z, r, t):
        return model(z, t, y, r=r)

    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        _, du = torch.func.jvp(u, (x, r, t), (v, torch.ones_like(r), torch.zeros_like(t)))
        h = 1e-6
        fd = (u(x + h * v, r + h, t) - u(x - h * v, r - h, t)) / (2 * h)
    assert float((du - fd).abs().max()) < 1e-6 * float(fd.abs().max())
    with torch.no_grad():  # r = t: the instantaneous velocity is the r=None call
        assert torch.equal(model(x, t, y, r=t), model(x, t, y))


def test_train_sample_takes_average_velocity_steps_for_euler(tmp_path):
    """fm_torch.train.sample (what `evaluate` and `sample` call): a MeanFlow model with
    method euler takes K steps x_{k+1} = x_k + h u(x_k, t_k, t_{k+1}), computed here by
    hand; any other method integrates the instantaneous field u(x, t, t) = v."""
    from fm_torch.train import sample

    NumpyMLP(2, 8, 2, 4, 3, seed=0, dtype=np.float64, mean_flow=True).save_npz(tmp_path / "m.npz")
    model = TorchMLP.from_npz(tmp_path / "m.npz")
    x0 = torch.from_numpy(np.random.default_rng(2).standard_normal((6, 2)))
    y = torch.arange(6) % 3
    xs, nfe = sample(model, x0, y, guidance=2.0, method="euler", steps=2, return_nfe=True)
    x = x0
    with torch.no_grad():
        for r, t in ((0.0, 0.5), (0.5, 1.0)):
            u_c, u_n = model(x, t, y, r=r), model(x, t, None, r=r)
            x = x + (t - r) * (u_n + 2.0 * (u_c - u_n))
    assert nfe == 2 and xs.shape == (3, 6, 2)
    torch.testing.assert_close(xs[-1], x, rtol=1e-12, atol=1e-12)
    mid = sample(model, x0, None, method="midpoint", steps=2)[-1]
    with torch.no_grad():
        x = x0
        for t0 in (0.0, 0.5):
            x_half = x + 0.25 * model(x, t0, None)
            x = x + 0.5 * model(x_half, t0 + 0.25, None)
    torch.testing.assert_close(mid, x, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- the exact average velocity
# Target N(m, diag(s^2)) in D = 3 dimensions, CondOT (x_t = t x1 + (1 - t) x0). The flow of
# the marginal field is psi_t(x0) = t m + k(t) x0, k(t) = sqrt(t^2 s^2 + (1 - t)^2), so the
# average velocity over [r, t] is u(z, r, t) = (psi_t(psi_r^{-1}(z)) - z) / (t - r)
#   = (t m + (k(t) / k(r)) (z - r m) - z) / (t - r).
M = np.array([1.5, -0.5, 0.25])
S = np.array([0.5, 2.0, 1.0])


def _k(t):
    return np.sqrt(t * t * S * S + (1 - t) ** 2)  # (B, D) for t (B, 1)


def _marginal_velocity(z, t):
    """v(z, t) = E[x1 - x0 | x_t = z] by Gaussian conditioning (not from psi):
    E[x1 | z] = m + t s^2 (z - t m) / k^2,  E[x0 | z] = (1 - t) (z - t m) / k^2."""
    t = t[:, None]
    return M + (t * S * S - (1 - t)) * (z - t * M) / (t * t * S * S + (1 - t) ** 2)


class ExactAverageVelocity:
    """The closed-form u(z, r, t) with the numpy MLP's forward/jvp interface (r < t)."""

    def __call__(self, z, t, y=None, r=None):
        return self.jvp(z, t, 0 * z, y, r=r)[0]

    def jvp(self, z, t, dz, y=None, r=None, dr=0.0, dt=0.0):
        r, t = np.asarray(r, float)[:, None], np.asarray(t, float)[:, None]  # (B, 1)
        dr = np.broadcast_to(dr, r.shape[:1])[:, None]  # (B, 1)
        dt = np.broadcast_to(dt, t.shape[:1])[:, None]  # (B, 1)
        kr, kt = _k(r), _k(t)  # (B, D)
        dkr, dkt = (r * S * S - (1 - r)) / kr, (t * S * S - (1 - t)) / kt  # k'(r), k'(t)
        h = t - r  # (B, 1)
        n = t * M + kt / kr * (z - r * M) - z  # (B, D) (t - r) u
        u = n / h
        du_dz = (kt / kr - 1) / h  # (B, D) diagonal Jacobian
        du_dr = (-kt * dkr / kr**2 * (z - r * M) - kt / kr * M) / h + n / h**2
        du_dt = (M + dkt / kr * (z - r * M)) / h - n / h**2
        return u, du_dz * dz + du_dr * dr + du_dt * dt


def _exact_batch():
    rng = np.random.default_rng(31)
    B = 6
    r = rng.uniform(0.05, 0.6, B)
    t = r + rng.uniform(0.1, 0.35, B)  # (B,) t - r >= 0.1
    z = rng.standard_normal((B, 3)) * 1.5  # (B, D) points z_r
    v = _marginal_velocity(z, r)  # (B, D) the marginal velocity at (z, r)
    # the pair whose conditional velocity is the marginal one: r x1 + (1 - r) x0 = z,
    # x1 - x0 = v (so the MeanFlow target meets the marginal field, not a noisy draw of it)
    x1, x0 = z + (1 - r)[:, None] * v, z - r[:, None] * v
    return x0, x1, z, v, r, t


def test_exact_average_velocity_is_the_flow_of_the_marginal_field():
    """The closed form above against the ODE dz/ds = v(z, s) integrated from r to t."""
    from scipy.integrate import solve_ivp

    _, _, z, _, r, t = _exact_batch()
    u = ExactAverageVelocity()(z, t, r=r)
    for b in range(len(z)):
        sol = solve_ivp(lambda s, x: _marginal_velocity(x[None], np.array([s]))[0],
                        (r[b], t[b]), z[b], method="DOP853", rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose((sol.y[:, -1] - z[b]) / (t[b] - r[b]), u[b], rtol=1e-10)


def test_meanflow_target_is_the_exact_average_velocity_numpy():
    """fm_numpy.meanflow_loss with the exact u as the network and the marginal velocity as v:
    target = v + (t - r) (d_z u v + d_r u) must be u itself (the identity of docs/math.md
    section 14.3, the '+' of our convention); with the opposite sign it is far off."""
    x0, x1, z, v, r, t = _exact_batch()
    model = ExactAverageVelocity()
    u = model(z, t, r=r)
    _, grad = npm.meanflow_loss(model, np_paths.AffinePath(), x0, x1, None, r, t, norm_p=0.0)
    delta = grad * (grad.size / 2.0)  # dL/du = 2 delta / (B D) at weight 1
    target = u - delta
    np.testing.assert_allclose(target, u, rtol=0, atol=1e-10 * np.abs(u).max())
    _, du = model.jvp(z, t, v, r=r, dr=1.0)
    assert np.abs(v - (t - r)[:, None] * du - u).max() > 0.1  # the other sign: not the identity


def test_meanflow_target_is_the_exact_average_velocity_torch():
    """The same through fm_torch.meanflow_loss (torch.func.jvp of the closed form)."""
    x0, x1, z, v, r, t = _exact_batch()
    m, s = torch.from_numpy(M), torch.from_numpy(S)

    def k(t):
        return torch.sqrt(t * t * s * s + (1 - t) ** 2)

    def exact(z, t, y=None, r=None):
        r, t = r[:, None], t[:, None]
        return (t * m + k(t) / k(r) * (z - r * m) - z) / (t - r)  # (B, D)

    T = torch.from_numpy
    L, mse = thm.meanflow_loss(exact, th_paths.AffinePath(), T(x1), None, T(x0), T(r), T(t),
                               norm_p=0.0)
    u = ExactAverageVelocity()(z, t, r=r)
    assert float(mse) <= (1e-10 * np.abs(u).max()) ** 2
    assert float(L) == float(mse)
    # and the closed form in torch is the numpy one (so the 0 above is about the same u)
    np.testing.assert_allclose(exact(T(z), T(t), r=T(r)).numpy(), u, rtol=1e-13)


# ---------------------------------------------------------------- one time scale (finding 4)
def _swap_time_rows(model, T):
    """The same MLP with W0's rows of phi(time of x) and phi(t - r) exchanged."""
    D = model.dim
    W0 = model.params["W0"]
    time_rows, interval_rows = W0[D:D + T].copy(), W0[-T:].copy()
    W0[D:D + T], W0[-T:] = interval_rows, time_rows
    return model


@pytest.mark.parametrize("scale", [100.0, 1.0])
def test_meanflow_mlp_runs_both_time_inputs_at_one_rate(scale, tmp_path):
    """u(x, r, t) = f(W_time phi(r) + W_int phi(t - r)): with the two row blocks of W0
    exchanged, the network at (r' = t - r, t) must give the same u, which holds only when
    phi(r) and phi(t - r) are one function (one rate). Also the JVP in r and t against
    differences at this scale, and the torch twin."""
    rng = np.random.default_rng(4)
    B, T = 5, 8
    model = NumpyMLP(3, 16, 2, T, 4, seed=1, dtype=np.float64, mean_flow=True, time_scale=scale)
    assert model.config["interval_scale"] == scale
    x, y = rng.standard_normal((B, 3)), rng.integers(0, 5, B)
    r = rng.uniform(0.1, 0.4, B)
    t = r + rng.uniform(0.05, 0.5, B)
    u = model(x, t, y, r=r)
    model.save_npz(tmp_path / "m.npz")
    swapped = _swap_time_rows(NumpyMLP.from_npz(tmp_path / "m.npz"), T)
    np.testing.assert_allclose(swapped(x, t, y, r=t - r), u, rtol=1e-12, atol=1e-14)
    th_model = TorchMLP.from_npz(tmp_path / "m.npz")
    assert th_model.interval_scale == scale
    with torch.no_grad():
        th_u = th_model(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y),
                        r=torch.from_numpy(r)).numpy()
    np.testing.assert_allclose(th_u, u, rtol=1e-12, atol=1e-14)
    dr, dt, h = rng.standard_normal(B), rng.standard_normal(B), 1e-6
    _, du = model.jvp(x, t, 0 * x, y, r=r, dr=dr, dt=dt)
    fd = (model(x, t + h * dt, y, r=r + h * dr) - model(x, t - h * dt, y, r=r - h * dr)) / (2 * h)
    np.testing.assert_allclose(du, fd, rtol=1e-6, atol=1e-7 * np.abs(fd).max())


def test_meanflow_file_from_before_interval_scale_loads_at_1000(tmp_path):
    """A mean-flow file written before the interval_scale key (config without it) ran
    phi(t - r) at 1000 whatever its time_scale: both packages load it so."""
    import json

    from fm_numpy.io import load_npz, save_npz

    model = NumpyMLP(2, 8, 2, 4, seed=0, dtype=np.float64, mean_flow=True, time_scale=100.0,
                     interval_scale=1000.0)  # what the code before the key computed
    model.save_npz(tmp_path / "new.npz")
    arrays = load_npz(tmp_path / "new.npz")
    config = json.loads(str(arrays["config"]))
    del config["interval_scale"]  # as written before the key existed
    save_npz(tmp_path / "old.npz", **{**arrays, "config": np.array(json.dumps(config))})
    x = np.random.default_rng(0).standard_normal((3, 2))
    old = NumpyMLP.from_npz(tmp_path / "old.npz")
    assert old.interval_scale == 1000.0 and old.time_scale == 100.0
    np.testing.assert_array_equal(old(x, 0.9, r=0.2), model(x, 0.9, r=0.2))
    assert TorchMLP.from_npz(tmp_path / "old.npz").interval_scale == 1000.0
    # a new model at time_scale 100 runs phi(t - r) at 100: not the old file's network
    with pytest.raises(ValueError, match="interval_scale"):
        NumpyMLP(2, 8, 2, 4, seed=0, dtype=np.float64, mean_flow=True,
                 time_scale=100.0).load_npz(tmp_path / "old.npz")
    with pytest.raises(ValueError, match="mean-flow models only"):
        NumpyMLP(2, 8, 2, 4, interval_scale=10.0)
