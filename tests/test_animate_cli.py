"""`sample --animate FILE.gif` in both CLIs: one frame per solver step, checked before work."""

import os

import pytest
from PIL import Image

from fm_numpy.cli import main as numpy_main
from fm_torch.cli import main as torch_main


def _n_frames(path):
    with Image.open(path) as im:
        return im.n_frames


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("animate")
    made = {}
    assert numpy_main(["train", "--data", "moons", "--steps", "20", "--hidden", "16",
                       "--depth", "2", "--out", str(root / "np2d")]) == 0
    made["numpy 2d"] = str(root / "np2d" / "model.npz")
    assert numpy_main(["train", "--data", "mnist", "--steps", "2", "--batch", "8",
                       "--n-train", "64", "--hidden", "8", "--warmup", "0",
                       "--out", str(root / "npmnist")]) == 0
    made["numpy mnist"] = str(root / "npmnist" / "model.npz")
    assert torch_main(["train", "--data", "moons", "--steps", "10", "--hidden", "16",
                       "--depth", "2", "--out", str(root / "th2d")]) == 0
    made["torch 2d"] = str(root / "th2d" / "ckpt.pt")
    assert torch_main(["train", "--data", "mnist", "--steps", "2", "--batch", "8",
                       "--n-train", "64", "--base", "8", "--mults", "1,2",
                       "--sample-every", "100", "--out", str(root / "thmnist")]) == 0
    made["torch mnist"] = str(root / "thmnist" / "ckpt.pt")
    return root, made


@pytest.mark.parametrize("which", ["numpy 2d", "numpy mnist", "torch 2d", "torch mnist"])
def test_animate_writes_a_frame_per_step(runs, which):
    root, made = runs
    gif = str(root / f"{which.replace(' ', '_')}.gif")
    steps = 4
    if which.startswith("numpy"):
        out = str(root / f"{which.replace(' ', '_')}.npz")
        rc = numpy_main(["sample", "--model", made[which], "--steps", str(steps), "-n", "50",
                         "--method", "euler", "--out", out, "--animate", gif])
    else:
        out = str(root / f"{which.replace(' ', '_')}.png")
        rc = torch_main(["sample", "--model", made[which], "--steps", str(steps), "-n", "50",
                         "--per-class", "1", "--method", "euler", "--out", out,
                         "--animate", gif])
    assert rc == 0
    assert os.path.exists(out)
    assert _n_frames(gif) == steps + 1  # t = 0, 1/4, ..., 1


@pytest.mark.parametrize("main, model, out", [
    (numpy_main, "numpy 2d", "s.npz"), (torch_main, "torch 2d", "s.png")])
def test_animate_needs_a_gif_and_says_so_before_sampling(runs, capsys, main, model, out):
    root, made = runs
    out = str(root / f"refused_{out}")
    assert main(["sample", "--model", made[model], "--out", out, "--animate",
                 str(root / "flow.mp4")]) == 2
    assert "--animate must name a .gif file" in capsys.readouterr().err
    assert not os.path.exists(out)  # refused before any work
