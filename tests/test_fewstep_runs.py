"""Few-step runs: couplings and MeanFlow in the training loops, reflow, --resume, CLI errors."""

import json

import numpy as np
import pytest
import torch

import fm_numpy.cli as np_cli
import fm_torch.cli as th_cli
from fm_numpy.models.mlp import MLP
from fm_numpy.reflow import generate_pairs, load_pairs, reflow
from fm_numpy.train import train

TINY = dict(data="8gaussians", batch=64, hidden=16, depth=1, time_features=8, ckpt_every=10)


def _params(model):
    return {k: v.copy() for k, v in model.params.items()}


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("extra", [{"objective": "meanflow"}, {"coupling": "ot"},
                                   {"coupling": "sinkhorn", "coupling_block": 32}])
def test_numpy_runs_resume_to_the_same_weights(tmp_path, extra):
    whole, _ = train(tmp_path / "a", progress=False, steps=30, **TINY, **extra)
    train(tmp_path / "b", progress=False, steps=10, **TINY, **extra)
    resumed, losses = train(tmp_path / "b", resume=True, progress=False, steps=30, **TINY, **extra)
    _same(_params(whole), _params(resumed))
    assert [s for s, _ in losses] == list(range(1, 31))
    timing = json.loads((tmp_path / "b" / "timing.json").read_text())
    if "coupling" in extra:
        assert 0 < timing["coupling_share"] < 1 and timing["steps_timed"] == 20
        # the coupling changed the run: an independent run of the same seed ends elsewhere
        # (each step's pairing is checked in tests/test_couplings_in_loops.py)
        independent, _ = train(tmp_path / "i", progress=False, steps=30, **TINY)
        assert any(not np.array_equal(p, independent.params[k]) for k, p in whole.params.items())
    if "objective" in extra:
        assert MLP.from_npz(tmp_path / "a" / "model.npz").mean_flow


def test_numpy_reflow_is_bit_reproducible_and_resumes(tmp_path):
    train(tmp_path / "teacher", progress=False, steps=20, **TINY)
    # the teacher reflow reads: model.npz (the EMA weights of the 2-D default, not the raw
    # weights train returns)
    teacher = MLP.from_npz(tmp_path / "teacher" / "model.npz")
    x0a, x1a, _ = generate_pairs(teacher, 300, seed=4, method="rk4", steps=4)
    x0b, x1b, _ = generate_pairs(teacher, 300, seed=4, method="rk4", steps=4)
    np.testing.assert_array_equal(x0a, x0b)
    np.testing.assert_array_equal(x1a, x1b)
    student = {k: v for k, v in TINY.items() if k != "data"}
    path = tmp_path / "teacher" / "model.npz"
    a, _ = reflow(path, 300, tmp_path / "a", seed=4, solver_steps=4, progress=False, steps=30,
                  **student)
    reflow(path, 300, tmp_path / "b", seed=4, solver_steps=4, progress=False, steps=10, **student)
    b, _ = reflow(path, 300, tmp_path / "b", seed=4, solver_steps=4, progress=False, steps=30,
                  resume=True, **student)
    _same(_params(a), _params(b))
    x0, x1, y, meta = load_pairs(tmp_path / "a" / "pairs.npz")
    np.testing.assert_array_equal(x0, x0a)
    np.testing.assert_array_equal(x1, x1a)
    assert y is None and meta["steps"] == 4
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["pairs"].endswith("pairs.npz") and config["data"] == "8gaussians"
    with pytest.raises(ValueError, match="was made with"):  # other pairs in that folder
        reflow(path, 200, tmp_path / "a", seed=4, solver_steps=4, progress=False, steps=30,
               resume=True, **student)


def test_distilled_student_trains_at_t_zero(tmp_path):
    teacher, _ = train(tmp_path / "teacher", progress=False, steps=20, **TINY)
    student = {k: v for k, v in TINY.items() if k != "data"}
    _, losses = reflow(tmp_path / "teacher" / "model.npz", 500, tmp_path / "d", seed=0,
                       solver_steps=4, progress=False, steps=60, distill=True, lr=1e-2, **student)
    # x1 - x0 at t = 0 is learnable: the loss falls (means of 10 steps, not one noisy value;
    # that every t is 0 is checked in tests/test_couplings_in_loops.py)
    first, last = np.mean([v for _, v in losses[:10]]), np.mean([v for _, v in losses[-10:]])
    assert last < 0.1 * first, (first, last)  # measured: 0.0023 -> 1.7e-5
    assert json.loads((tmp_path / "d" / "config.json").read_text())["distill"] is True


def test_torch_runs_meanflow_and_reflow_resume(tmp_path):
    from fm_torch.reflow import reflow as th_reflow
    from fm_torch.train import train as th_train

    tiny = dict(TINY, sample_every=1000)
    a, _ = th_train(tmp_path / "a", progress=False, device="cpu", steps=20,
                    objective="meanflow", **tiny)
    th_train(tmp_path / "b", progress=False, device="cpu", steps=10, objective="meanflow", **tiny)
    b, _ = th_train(tmp_path / "b", resume=True, progress=False, device="cpu", steps=20,
                    objective="meanflow", **tiny)
    for (k, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(p, q), k
    student = {k: v for k, v in tiny.items() if k != "data"}
    teacher = tmp_path / "a" / "ckpt.pt"
    r1, _ = th_reflow(teacher, 200, tmp_path / "r1", seed=1, solver_steps=3, progress=False,
                      device="cpu", steps=20, **student)
    th_reflow(teacher, 200, tmp_path / "r2", seed=1, solver_steps=3, progress=False,
              device="cpu", steps=10, **student)
    r2, _ = th_reflow(teacher, 200, tmp_path / "r2", seed=1, solver_steps=3, progress=False,
                      device="cpu", steps=20, resume=True, **student)
    for (k, p), (_, q) in zip(r1.state_dict().items(), r2.state_dict().items(), strict=True):
        assert torch.equal(p, q), k
    p1, p2 = load_pairs(tmp_path / "r1" / "pairs.npz"), load_pairs(tmp_path / "r2" / "pairs.npz")
    np.testing.assert_array_equal(p1[1], p2[1])


def test_reflow_student_takes_the_teachers_network_unless_told(tmp_path):
    from fm_torch.reflow import reflow as th_reflow
    from fm_torch.train import train as th_train

    tiny = dict(TINY, hidden=12, time_features=6, time_scale=7.0)
    train(tmp_path / "t", progress=False, steps=5, **tiny)
    th_train(tmp_path / "tt", progress=False, device="cpu", steps=5, sample_every=1000, **tiny)
    run = dict(pairs=50, seed=0, solver_steps=2, progress=False, steps=3, ckpt_every=10)
    np_student, _ = reflow(tmp_path / "t" / "model.npz", out=tmp_path / "s", **run)
    th_student, _ = th_reflow(tmp_path / "tt" / "ckpt.pt", out=tmp_path / "ts", device="cpu",
                              **run)
    told, _ = reflow(tmp_path / "t" / "model.npz", out=tmp_path / "s2", hidden=10, depth=None,
                     **run)
    for config in (np_student.config, th_student.config):
        assert (config["hidden"], config["depth"], config["time_features"]) == (12, 1, 6)
        assert config["time_scale"] == 7.0
    assert (told.config["hidden"], told.config["depth"]) == (10, 1)  # None: the teacher's


@pytest.mark.parametrize("main,argv,message", [
    (np_cli.main, ["train", "--coupling", "emd"], "invalid choice"),
    (np_cli.main, ["train", "--objective", "x"], "invalid choice"),
    (np_cli.main, ["train", "--coupling-block", "0", "--steps", "1"], "coupling_block must"),
    (np_cli.main, ["train", "--meanflow-ratio", "2", "--steps", "1"], "meanflow_ratio"),
    (np_cli.main, ["reflow", "--teacher", "nothere.npz", "--pairs", "5", "--out", "o"],
     "nothere.npz"),
    (np_cli.main, ["reflow", "--teacher", "t.npz", "--pairs", "0", "--out", "o"], "--pairs"),
    (th_cli.main, ["train", "--coupling", "emd"], "invalid choice"),
    (th_cli.main, ["reflow", "--teacher", "nothere.pt", "--pairs", "5", "--out", "o"],
     "nothere.pt"),
])
def test_cli_bad_input_is_one_line_exit_2(main, argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(argv + ["--no-progress"] if argv[0] == "train" else argv))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
