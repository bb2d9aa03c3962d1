"""Deliberately broken implementations, one per bug class the kit knows, each diagnosed.

Every test asserts the diagnosis code (and a word of its message), not just
`passed is False`. The correct versions pass in tests/test_conformance.py.
"""

import numpy as np
import pytest

from fm_numpy import conformance as C
from fm_numpy.analytic import eight_gaussians_mixture
from fm_numpy.diffusion import DiffusionToFlow
from fm_numpy.likelihood import hutchinson_divergence, log_likelihood, standard_normal_log_prob
from fm_numpy.paths import AffinePath, Cosine, Polynomial, SigmaMinOT
from fm_numpy.solvers import odeint


def col(t):
    """t as a column (B, 1) when it is per sample."""
    return np.reshape(t, (-1, 1)) if np.ndim(t) else t


def diagnosed(report, code, word):
    assert not report.passed, report.table()
    assert code in report.codes, report.table()
    text = next(f for f in report.findings if f.startswith(code + ":"))
    assert word in text, text
    return text


# ------------------------------------------------------------------ paths
def affine(scheduler, flip=1.0, swap=False, t_map=lambda t: t):
    def sample(x0, x1, t):
        a, s, da, ds = (col(c) for c in scheduler(np.asarray(t_map(np.asarray(t)))))
        if swap:
            x0, x1 = x1, x0
        return a * x1 + s * x0, flip * (da * x1 + ds * x0)
    return sample


def test_sign_flipped_velocity():
    diagnosed(C.check_path(affine(SigmaMinOT(0.0), flip=-1.0)), "sign-flipped", "wrong sign")


def test_x0_x1_swapped():
    text = diagnosed(C.check_path(affine(Polynomial(2.0), swap=True), "polynomial", n=2.0),
                     "swapped-x0-x1", "swapped")
    assert "same bug" not in text  # for Polynomial(2) swap and reversed time differ


def test_condot_swap_is_reversed_time_too():
    text = diagnosed(C.check_path(affine(SigmaMinOT(0.0), swap=True)), "swapped-x0-x1", "swapped")
    assert "same bug" in text


def test_reversed_time():
    def reversed_sample(x0, x1, t):  # t = 0 is data in this code
        a, s, da, ds = (col(c) for c in Polynomial(2.0)(1 - np.asarray(t)))
        return a * x1 + s * x0, -(da * x1 + ds * x0)
    diagnosed(C.check_path(reversed_sample, "polynomial", n=2.0), "reversed-time", "reversed")


@pytest.mark.parametrize("scheduler, word", [(Cosine(), "Cosine()"),
                                             (SigmaMinOT(1e-3), "sigma_min=0.001"),
                                             (Polynomial(3.0), "n=3")])
def test_wrong_scheduler_recognised_by_name(scheduler, word):
    diagnosed(C.check_path(affine(scheduler), "condot"), "wrong-scheduler", word)


def test_scalar_t_mixup_first_time_for_all():
    def first_t(x0, x1, t):
        t0 = float(np.ravel(t)[0])  # treats t as a scalar
        return t0 * x1 + (1 - t0) * x0, x1 - x0
    diagnosed(C.check_path(first_t), "per-sample-t", "t[0]")


def test_t_broadcast_along_the_data_axis():
    def broadcast(x0, x1, t):  # t of shape (B,) multiplies the columns (B == D silently)
        return t * x1 + (1 - t) * x0, x1 - x0
    diagnosed(C.check_path(broadcast), "per-sample-t", "data axis")


def test_per_sample_t_refused():
    def scalar_only(x0, x1, t):
        t = float(t)  # TypeError for t of shape (B,)
        return t * x1 + (1 - t) * x0, x1 - x0
    diagnosed(C.check_path(scalar_only), "per-sample-t", "not for a scalar t")


def test_path_returning_one_array():
    diagnosed(C.check_path(lambda x0, x1, t: x0), "shape", "(xt, ut)")


def test_scalar_t_refused():
    def only_arrays(x0, x1, t):
        t = np.asarray(t)[:, None]  # fails on a 0-d t
        return t * x1 + (1 - t) * x0, x1 - x0
    diagnosed(C.check_path(only_arrays), "scalar-t", "scalar")


def test_float32_precision_loss():
    def float32_t(x0, x1, t):
        t = col(np.asarray(t, dtype=np.float32)).astype(np.float64)
        return t * x1 + (1 - t) * x0, x1 - x0
    diagnosed(C.check_path(float32_t), "precision", "float32")


def test_wrong_regression_target():
    def data_target(x0, x1, t):  # regresses onto x1 (CellFlow PR#305 style)
        return AffinePath().sample(x0, x1, t)[0], x1
    diagnosed(C.check_path(data_target), "wrong-target", "x1")


def test_target_valid_only_for_standard_normal_source():
    rng = np.random.default_rng(0)

    def own_noise(x0, x1, t):  # torchcfm#156: ignores x0, draws eps ~ N(0, I)
        eps = rng.standard_normal(x1.shape)
        return col(t) * x1 + (1 - col(t)) * eps, x1 - eps
    diagnosed(C.check_path(own_noise), "ignores-x0", "standard normal source")


# ------------------------------------------------------------------ solvers
def test_step_one_over_steps_minus_one():
    def bad_step(v, x0, grid):  # rectified-flow-pytorch#14
        n = len(grid) - 1
        h = 1.0 / (n - 1)
        xs = [x0]
        for k in range(n):
            xs.append(xs[-1] + h * v(xs[-1], k * h))
        return np.stack(xs)
    diagnosed(C.check_solver(bad_step, "euler"), "step-size", "1/(steps - 1)")


def test_evaluations_outside_the_grid():
    def overshoot(v, x0, grid):  # midpoint whose second stage looks a full step ahead
        xs = [x0]
        for t, t_next in zip(grid[:-1], grid[1:], strict=True):
            h = t_next - t
            k1 = v(xs[-1], t)
            k2 = v(xs[-1] + h * k1, t + 1.5 * h)
            xs.append(xs[-1] + 0.5 * h * (k1 + k2))
        return np.stack(xs)
    diagnosed(C.check_solver(overshoot, "heun"), "outside-grid", "outside")


def test_silently_one_step():
    def one_step(v, x0, grid):  # flow_matching#67: time_grid=[0, 1], no step_size
        x1 = x0 + (grid[-1] - grid[0]) * v(x0, grid[0])
        w = (grid - grid[0]) / (grid[-1] - grid[0])
        return x0[None] + w[:, None, None] * (x1 - x0)[None]
    diagnosed(C.check_solver(one_step, "euler"), "one-step", "one step")


def test_wrong_order_of_accuracy():
    def midpoint_wrong_time(v, x0, grid):  # second stage at t_n, not t_n + h/2
        xs = [x0]
        for t, t_next in zip(grid[:-1], grid[1:], strict=True):
            h = t_next - t
            xs.append(xs[-1] + h * v(xs[-1] + 0.5 * h * v(xs[-1], t), t))
        return np.stack(xs)
    text = diagnosed(C.check_solver(midpoint_wrong_time, "midpoint"), "order", "order")
    assert "midpoint has order 2" in text


def test_extra_evaluations_per_step():
    def wasteful(v, x0, grid):
        xs = [x0]
        for t, t_next in zip(grid[:-1], grid[1:], strict=True):
            v(xs[-1], t)  # an evaluation thrown away
            xs.append(xs[-1] + (t_next - t) * v(xs[-1], t))
        return np.stack(xs)
    diagnosed(C.check_solver(wasteful, "euler"), "nfe", "2 evaluations per step")


def test_backward_integration_runs_forward():
    def forward_only(v, x0, grid):  # |h|: a decreasing grid still steps forward from t = 0
        ts = np.sort(grid)
        return odeint(v, x0, ts, "rk4")
    diagnosed(C.check_solver(forward_only, "rk4"), "backward", "forward")


# ------------------------------------------------------------------ likelihood
def test_hutchinson_summed_instead_of_averaged():
    def summed(v, x1):  # bayesflow#772: sum over 3 probes
        from fm_numpy.likelihood import draw_probes
        probes = draw_probes(x1.shape, n_probes=3, seed=0)
        B, D = x1.shape[0], int(np.prod(x1.shape[1:]))

        def aug(s, t):
            x = s[:, :D].reshape(x1.shape)
            vx, est = hutchinson_divergence(v, x, t, probes)
            return np.concatenate([np.asarray(vx).reshape(B, D), est.sum(0)[:, None]], 1)
        s0 = np.concatenate([x1.reshape(B, D), np.zeros((B, 1))], 1)
        s = odeint(aug, s0, np.linspace(1, 0, 41), "rk4")[-1]
        return standard_normal_log_prob(s[:, :D]) + s[:, D]
    text = diagnosed(C.check_likelihood(summed, "hutchinson"), "hutchinson-sum", "averaged")
    assert "3 Hutchinson probes" in text


def test_likelihood_divergence_sign():
    def minus(v, x1):
        log_p, x0 = log_likelihood(v, x1, steps=40, return_x0=True)
        return 2 * standard_normal_log_prob(x0) - log_p  # log p0 - delta
    diagnosed(C.check_likelihood(minus), "sign", "wrong sign")


def test_likelihood_wrong_direction():
    def forward(v, x1):  # integrates from t = 0 to 1 starting at the data
        B, D = x1.shape

        def aug(s, t):
            vx = v(s[:, :D], t)
            h = 1e-5
            div = sum((v(s[:, :D] + h * e, t)[:, i] - v(s[:, :D] - h * e, t)[:, i]) / (2 * h)
                      for i, e in enumerate(np.eye(D)))
            return np.concatenate([vx, div[:, None]], 1)
        s = odeint(aug, np.concatenate([x1, np.zeros((B, 1))], 1), np.linspace(0, 1, 41),
                   "rk4")[-1]
        return standard_normal_log_prob(s[:, :D]) - s[:, D]
    diagnosed(C.check_likelihood(forward), "direction", "t = 1")


def test_likelihood_fails_on_image_shaped_input():
    def per_channel(v, x1):  # Meta's exact divergence indexes x[:, i] instead of the flat axis
        if x1.ndim > 2:
            x1[:, x1.shape[1]]  # IndexError, as ut[:, i] does on (B, C, H, W)
        return log_likelihood(v, x1, steps=40)
    diagnosed(C.check_likelihood(per_channel), "image-shape", "IndexError")


# ------------------------------------------------------------------ guidance, diffusion
def test_cfg_convention():
    def one_plus_w(model, x, t, y, w):
        return (1 + w) * model(x, t, y) - w * model(x, t, None)
    diagnosed(C.check_guidance(one_plus_w), "cfg-convention", "w - 1")


def test_diffusion_wrong_prediction_type():
    def as_x0(model, abar, prediction):  # reads an epsilon model's output as x0 (clean) prediction
        return DiffusionToFlow(model, abar, "x0")
    diagnosed(C.check_diffusion_to_flow(as_x0, "epsilon"), "wrong-prediction", "x0-prediction")


def test_diffusion_missing_scale():
    from fm_numpy.conformance.diffusion_to_flow import _NoScale
    diagnosed(C.check_diffusion_to_flow(_NoScale, "v"), "missing-scale", "x_dm = s x")


# ------------------------------------------------------------------ trained velocity
def test_velocity_sign_and_reversed_time():
    u = eight_gaussians_mixture()
    diagnosed(C.check_velocity(lambda x, t: -u(x, t)), "sign-flipped", "x0 - x1")
    diagnosed(C.check_velocity(lambda x, t: u(x, 1 - t)), "reversed-time", "1 - t")
    noisy = C.check_velocity(lambda x, t: u(x, t) + 0.1 * np.sin(7 * x))  # a decent model passes
    assert noisy.passed, noisy.table()


# ------------------------------------------------------------------ training-step kinds (issue 22)
def test_solver_stage_times_k_over_n_minus_1():
    """Evaluated on linspace(0, 1, N), stepped by 1/N: exact on v = const, still order 1."""
    def euler(v, x0, grid):
        n, xs = len(grid) - 1, [x0]
        for t in np.linspace(0.0, 1.0, n):
            xs.append(xs[-1] + v(xs[-1], t) / n)
        return np.stack(xs)
    diagnosed(C.check_solver(euler, "euler"), "stage-times", "linspace")


def test_solver_midpoint_stage_at_the_wrong_time():
    def midpoint(v, x0, grid):
        xs = [x0]
        for a, b in zip(grid[:-1], grid[1:], strict=True):
            h = b - a
            xs.append(xs[-1] + h * v(xs[-1] + 0.5 * h * v(xs[-1], a), a + 0.25 * h))
        return np.stack(xs)
    diagnosed(C.check_solver(midpoint, "midpoint"), "stage-times", "stage time")


def test_time_sampler_randn():
    diagnosed(C.check_time_sampling(lambda n, rng: rng.standard_normal(n)), "time-range",
              "randn")


def test_meanflow_pairs_in_the_wrong_order_and_ratio():
    def pairs(n, rng):
        s = np.sort(rng.random((n, 2)), axis=1)
        keep = rng.random(n) < 0.75  # the fraction with r = t taken for the one with r != t
        return s[:, 1], np.where(keep, s[:, 0], s[:, 1])
    report = C.check_time_sampling(pairs, ratio=0.25)
    diagnosed(report, "r-after-t", "r > t")
    diagnosed(report, "pair-ratio", "inverted")


def test_stochastic_step_ignores_its_generator():
    def step(v, x, rng):
        return x + 0.1 * v(x, 0.0) + 0.1 * np.random.standard_normal(x.shape)
    diagnosed(C.check_seeded(step), "ignores-generator", "global")


def test_x1_prediction_with_the_wrong_formula():
    diagnosed(C.check_prediction(lambda xt, v, t: col(t) * v), "wrong-formula", "closed form")
    diagnosed(C.check_prediction(lambda xt, v, t: xt - col(t) * v, "x1"), "wrong-end", "x0")


def test_training_step_reversed_path_with_data_minus_noise_target():
    """rectified-flow-pytorch 0.2.14: x_t = t noise + (1 - t) data, target data - noise."""
    rng = np.random.default_rng(0)

    def loss(model, x1, y):
        t = rng.random(len(x1))
        x0 = rng.standard_normal(x1.shape)
        xt = col(t) * x0 + (1 - col(t)) * x1
        d = model(xt, t) - (x1 - x0)
        return float(np.mean(d * d)), 2 * d / d.size
    report = C.check_training_step(loss)
    diagnosed(report, "reversed-time", "data at t = 0")
    diagnosed(report, "target-mismatch", "disagree")


def test_training_step_null_label_is_class_zero():
    """rectified-flow-pytorch UAFlow 0.9.14: dropped labels become class 0."""
    rng = np.random.default_rng(0)
    path = AffinePath()

    def loss(model, x1, y, x0):
        t = rng.random(len(x1))
        xt, ut = path.sample(x0, x1, t)
        d = model(xt, t, np.where(rng.random(len(y)) < 0.1, 0, y)) - ut
        return float(np.mean(d * d)), 2 * d / d.size
    diagnosed(C.check_training_step(loss, num_classes=10), "null-class", "real class")
