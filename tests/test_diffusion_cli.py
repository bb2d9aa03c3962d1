"""`fm-torch train-diffusion`, `sample --as-flow / --sampler ddim`, `train --init-from
[--diff2flow]` end to end on a tiny U-Net, and their one-line errors (exit 2, nothing
written)."""

import numpy as np
import pytest
import torch

from fm_numpy.io import load_npz
from fm_torch.cli import main
from fm_torch.diffusion import ddim_sample
from fm_torch.io import load_checkpoint
from fm_torch.train import load_model
from fm_torch.train_diffusion import DiffusionVelocity, GuidedDiffusionModel

# constant lr: these runs resume to more steps, which a decaying schedule (MNIST's default)
# refuses
TINY = ["--base", "8", "--mults", "1,2", "--batch", "8", "--n-train", "64", "--no-progress",
        "--sample-every", "1000", "--threads", "1", "--lr-schedule", "constant"]


@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddpm") / "ddpm"
    rc = main(["train-diffusion", "--data", "mnist", "--prediction", "v", "--schedule",
               "scaled_linear", "--steps", "3", "--out", str(out), *TINY])
    assert rc == 0
    return out


def test_train_diffusion_records_what_it_trained(ddpm_run):
    checkpoint = load_checkpoint(ddpm_run / "ckpt.pt")
    assert checkpoint["step"] == 3
    assert checkpoint["config"]["diffusion"] == {
        "mode": "ddpm", "prediction": "v", "schedule": "scaled_linear", "num_train_steps": 1000}
    model, _ = load_model(ddpm_run / "ckpt.pt")
    assert isinstance(model, DiffusionVelocity) and model.prediction == "v"


def test_train_diffusion_resumes(ddpm_run, capsys):
    rc = main(["train-diffusion", "--data", "mnist", "--prediction", "v", "--schedule",
               "scaled_linear", "--steps", "4", "--resume", "--out", str(ddpm_run), *TINY])
    assert rc == 0 and "trained to step 4" in capsys.readouterr().out
    # resuming with another prediction type is another run: refused
    rc = main(["train-diffusion", "--data", "mnist", "--prediction", "epsilon", "--schedule",
               "scaled_linear", "--steps", "5", "--resume", "--out", str(ddpm_run), *TINY])
    assert rc == 2 and "cannot resume" in capsys.readouterr().err


def test_sample_as_flow_and_ddim(ddpm_run, tmp_path, capsys):
    ckpt = str(ddpm_run / "ckpt.pt")
    flow_npz, ddim_npz = tmp_path / "flow.npz", tmp_path / "ddim.npz"
    assert main(["sample", "--model", ckpt, "--as-flow", "--method", "euler", "--steps", "4",
                 "--guidance", "1", "--per-class", "1", "--out", str(tmp_path / "flow.png"),
                 "--npz", str(flow_npz)]) == 0
    assert main(["sample", "--model", ckpt, "--sampler", "ddim", "--steps", "4", "--guidance",
                 "1", "--per-class", "1", "--out", str(tmp_path / "ddim.png"),
                 "--npz", str(ddim_npz)]) == 0
    assert "NFE 4" in capsys.readouterr().out
    assert (tmp_path / "ddim_trajectory.png").stat().st_size > 0
    # --sampler ddim is ddim_sample of the EMA network, same noise as the CLI draws
    v, _ = load_model(ckpt)
    y = torch.arange(10)
    x_T = torch.randn((10, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    x1 = ddim_sample(GuidedDiffusionModel(v.timestep_model, y, 1.0), x_T, v.alphas_cumprod, 4,
                     "v", y)
    expected = ((x1[:, 0].clamp(-1, 1) + 1) / 2).numpy()
    np.testing.assert_allclose(load_npz(ddim_npz)["images"], expected, atol=1e-6)
    # the flow ODE (Euler, uniform grid) is another sampler: other images, same shape
    flow = load_npz(flow_npz)["images"]
    assert flow.shape == expected.shape and not np.allclose(flow, expected, atol=1e-3)


def test_sample_of_a_ddpm_needs_a_choice(ddpm_run, tmp_path, capsys):
    out = tmp_path / "x.png"
    assert main(["sample", "--model", str(ddpm_run / "ckpt.pt"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "DDPM checkpoint" in err and "--as-flow" in err and err.count("\n") == 1
    assert main(["sample", "--model", str(ddpm_run / "ckpt.pt"), "--as-flow", "--sampler",
                 "ddim", "--out", str(out)]) == 2
    assert "choose one" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("diff2flow", [True, False], ids=["diff2flow", "naive"])
def test_fine_tune_starts_from_the_ddpm_weights(ddpm_run, tmp_path, diff2flow):
    out = tmp_path / "ft"
    argv = ["train", "--data", "mnist", "--init-from", str(ddpm_run / "ckpt.pt"), "--steps", "1",
            "--lr", "1e-30", "--out", str(out), *TINY]
    assert main(argv + (["--diff2flow"] if diff2flow else [])) == 0
    source = load_checkpoint(ddpm_run / "ckpt.pt")["ema"]["model"]
    tuned = load_checkpoint(out / "ckpt.pt")
    config = tuned["config"]
    assert config["init_from"] == str(ddpm_run / "ckpt.pt") and config["base"] == 8
    for name, p in tuned["model"].items():  # one step at lr 1e-30: still the DDPM's weights
        torch.testing.assert_close(p, source[name])
    model, _ = load_model(out / "ckpt.pt")
    if diff2flow:
        assert config["diffusion"]["mode"] == "diff2flow"
        assert isinstance(model, DiffusionVelocity) and model.prediction == "v"
    else:
        assert config["diffusion"] is None and not isinstance(model, DiffusionVelocity)


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("flow") / "flow"
    assert main(["train", "--data", "mnist", "--steps", "1", "--out", str(out), *TINY]) == 0
    return out


def test_bad_input_exits_2_and_writes_nothing(ddpm_run, flow_run, tmp_path, capsys,
                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    ddpm, flow = str(ddpm_run / "ckpt.pt"), str(flow_run / "ckpt.pt")
    cases = [
        (["train-diffusion", "--prediction", "score"], "unknown prediction 'score'"),
        (["train-diffusion", "--schedule", "cosine"], "unknown diffusion schedule"),
        (["train-diffusion", "--num-train-steps", "1"], "num_train_steps"),
        (["train-diffusion", "--scheduler", "cosine", "--steps", "0"], "steps must be"),
        (["train-diffusion", "--init-from", ddpm], "fine-tune with `train --init-from`"),
        (["train", "--data", "mnist", "--diff2flow"], "give --init-from"),
        (["train", "--data", "mnist", "--init-from", flow, "--diff2flow"], "needs a diffusion"),
        (["train", "--data", "mnist", "--init-from", ddpm, "--base", "16"], "has base 8"),
        (["train", "--data", "moons", "--init-from", ddpm], "has data 'mnist'"),
        (["train", "--init-from", str(tmp_path / "none.pt")], "no such checkpoint"),
        (["sample", "--model", flow, "--as-flow", "--out", "a.png"], "flow-matching checkpoint"),
        (["sample", "--model", flow, "--sampler", "ddim", "--out", "a.png"],
         "flow-matching checkpoint"),
        (["sample", "--model", ddpm, "--sampler", "dpm", "--out", "a.png"], "invalid choice"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            raise SystemExit(main(argv + ["--no-progress"] * (argv[0] != "sample")))
        err = capsys.readouterr().err
        assert exc.value.code == 2, (argv, err)
        assert err.startswith("fm-torch: error: ") and err.count("\n") == 1, err
        assert message in err, (argv, err)
    assert list(tmp_path.iterdir()) == []  # no run folder, no PNG
