"""fm_numpy.optim against torch.optim.Adam / AdamW on the same gradient sequence (float64)."""

import numpy as np
import pytest

from fm_numpy.optim import Adam, AdamW, clip_grad_norm

torch = pytest.importorskip("torch")

SHAPES = {"W0": (3, 4), "b0": (4,), "E": (2, 3)}


def _run_both(n_steps, numpy_opt, torch_opt, max_grad_norm=None, seed=0):
    rng = np.random.default_rng(seed)
    params = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    tparams = {k: torch.tensor(p.copy(), requires_grad=True) for k, p in params.items()}
    opt = numpy_opt(params)
    topt = torch_opt(list(tparams.values()))
    for _ in range(n_steps):
        grads = {k: rng.standard_normal(s) * 3 for k, s in SHAPES.items()}
        for k, p in tparams.items():
            p.grad = torch.tensor(grads[k].copy())
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(list(tparams.values()), max_grad_norm)
        topt.step()
        opt.step(grads)
    return params, tparams, opt


@pytest.mark.parametrize("case", ["adam", "adam_l2", "adamw", "adamw_clip", "betas_eps"])
def test_matches_torch(case):
    kw = dict(lr=0.01)
    if case == "adam":
        make, tmake = (lambda p: Adam(p, **kw)), (lambda p: torch.optim.Adam(p, **kw))
    elif case == "adam_l2":
        make = lambda p: Adam(p, weight_decay=0.1, **kw)  # noqa: E731
        tmake = lambda p: torch.optim.Adam(p, weight_decay=0.1, **kw)  # noqa: E731
    elif case == "adamw":
        make = lambda p: AdamW(p, weight_decay=0.3, **kw)  # noqa: E731
        tmake = lambda p: torch.optim.AdamW(p, weight_decay=0.3, **kw)  # noqa: E731
    elif case == "adamw_clip":
        make = lambda p: AdamW(p, max_grad_norm=0.5, **kw)  # noqa: E731
        tmake = lambda p: torch.optim.AdamW(p, **kw)  # noqa: E731
    else:
        make = lambda p: Adam(p, lr=0.003, betas=(0.5, 0.9), eps=1e-3)  # noqa: E731
        tmake = lambda p: torch.optim.Adam(p, lr=0.003, betas=(0.5, 0.9), eps=1e-3)  # noqa: E731
    clip = 0.5 if case == "adamw_clip" else None
    params, tparams, _ = _run_both(50, make, tmake, max_grad_norm=clip)
    for k in SHAPES:
        np.testing.assert_allclose(params[k], tparams[k].detach().numpy(), rtol=1e-12, atol=1e-12)


def test_moments_match_torch_state():
    rng = np.random.default_rng(5)
    params = {"w": rng.standard_normal(6)}
    tw = torch.tensor(params["w"].copy(), requires_grad=True)
    opt, topt = Adam(params, lr=0.02), torch.optim.Adam([tw], lr=0.02)
    for _ in range(7):
        g = rng.standard_normal(6)
        tw.grad = torch.tensor(g.copy())
        topt.step()
        opt.step({"w": g})
    tstate = topt.state[tw]
    state = opt.state_dict()
    assert int(state["step"]) == int(tstate["step"]) == 7
    np.testing.assert_allclose(state["m.w"], tstate["exp_avg"].numpy(), rtol=1e-13)
    np.testing.assert_allclose(state["s.w"], tstate["exp_avg_sq"].numpy(), rtol=1e-13)


def test_state_dict_resume_is_exact():
    rng = np.random.default_rng(3)
    p_a = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    p_b = {k: v.copy() for k, v in p_a.items()}
    grads = [{k: rng.standard_normal(s) for k, s in SHAPES.items()} for _ in range(10)]
    opt_a = AdamW(p_a, lr=0.05)
    for g in grads:
        opt_a.step({k: v.copy() for k, v in g.items()})
    opt_b = AdamW(p_b, lr=0.05)
    for g in grads[:4]:
        opt_b.step({k: v.copy() for k, v in g.items()})
    state = opt_b.state_dict()
    p_c = {k: v.copy() for k, v in p_b.items()}
    opt_c = AdamW(p_c, lr=0.05)
    opt_c.load_state_dict(state)
    for g in grads[4:]:
        opt_c.step({k: v.copy() for k, v in g.items()})
    for k in SHAPES:
        np.testing.assert_array_equal(p_c[k], p_a[k])


def test_clip_grad_norm_scales_to_max_norm():
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}
    total = clip_grad_norm(grads, 1.0)
    assert total == pytest.approx(5.0)
    assert np.sqrt(sum(np.sum(g**2) for g in grads.values())) == pytest.approx(1.0, rel=1e-5)


def test_bad_hyperparameters_raise():
    with pytest.raises(ValueError):
        Adam({"w": np.zeros(2)}, lr=-1)
    with pytest.raises(ValueError):
        Adam({"w": np.zeros(2)}, betas=(1.0, 0.9))
