"""Bad data files, one per problem, for tests/test_datafiles.py and tests/test_fuzz.py:
each maps to (path, read_data keyword arguments, words its one-line error must contain)."""

import os

import numpy as np

from fm_numpy.png import encode_png

__all__ = ["bad_cases", "BAD_NAMES"]


def bad_cases(tmp):
    """name -> (path, read_data kwargs, expected words, split fraction or None)."""
    cases = {}

    def add(name, filename, content, words, **kw):
        path = os.path.join(tmp, name, filename)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if isinstance(content, np.ndarray):
            np.save(path, content)
        elif isinstance(content, dict):
            np.savez(path, **content)
        elif isinstance(content, bytes):
            with open(path, "wb") as f:
                f.write(content)
        elif content is not None:
            with open(path, "w") as f:
                f.write(content)
        cases[name] = (path, kw, words)

    add("nan_npy", "x.npy", np.array([[1.0, np.nan], [0, 0]]), "row 0 holds NaN or Inf")
    add("inf_npz", "d.npz", {"x": np.array([[1.0], [np.inf]])}, "row 1 holds NaN or Inf")
    add("nan_csv", "t.csv", "a,b\n1,2\n3,inf\n", "line 3 holds NaN or Inf")
    add("ragged_csv", "t.csv", "a,b\n1,2\n3\n", "line 3 has 1 columns")
    add("text_csv", "t.csv", "1,2\n3,four\n", "'four' is not a number")
    add("label_csv", "t.csv", "a,y\n1,2\n3,1.5\n", "not an integer", label_column="y")
    add("label_name", "t.csv", "a,y\n1,2\n", "no label column 'z'", label_column="z")
    add("float_y", "d.npz", {"x": np.zeros((3, 2)), "y": np.array([0.5, 1, 2])},
        "must be integers")
    add("no_x", "d.npz", {"data": np.zeros((3, 2))}, "needs an array named x")
    add("png_as_npy", "x.npy", encode_png(np.zeros((2, 2), np.uint8)),
        "is not a .npy file (it starts like a .png file)")
    add("npy_as_csv", "t.csv", b"\x93NUMPY\x01\x00junk", "is not a CSV text file")
    add("zip_junk", "d.npz", b"PK\x03\x04 torn", "is not a readable .npz")
    add("one_d", "x.npy", np.zeros(5), "expected vectors (N, D)")
    add("strings", "d.npz", {"x": np.array([["a", "b"]])}, "must be numbers")
    add("suffix", "d.txt", "1,2\n", "unknown data file type '.txt'")
    add("empty_folder", "", None, "holds no PNG or JPEG images")
    add("empty_class", os.path.join("cat", ""), None, "class folder cat/ holds no PNG")
    for name, images, words in [
        ("mixed_sizes", [np.zeros((4, 4), np.uint8), np.zeros((5, 4), np.uint8)],
         "is 4x5 gray but"),
        ("mixed_modes", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.uint8)],
         "is 4x4 RGB but"),
        ("transparent", [np.zeros((4, 4, 4), np.uint8)], "has transparent pixels")]:
        for i, im in enumerate(images):
            add(name, f"{i}.png", encode_png(im), words)
        cases[name] = (os.path.dirname(cases[name][0]), {}, words)
    for key in ("empty_folder", "empty_class"):
        cases[key] = (os.path.join(tmp, key), {}, cases[key][2])
    add("jpeg_as_png", "a.png", b"\xff\xd8\xff\xe0 not really", "is not a PNG file")
    for key in ("jpeg_as_png",):
        cases[key] = (os.path.dirname(cases[key][0]), {}, cases[key][2])
    return cases


BAD_NAMES = ["nan_npy", "inf_npz", "nan_csv", "ragged_csv", "text_csv", "label_csv",
             "label_name", "float_y", "no_x", "png_as_npy", "npy_as_csv", "zip_junk", "one_d",
             "strings", "suffix", "empty_folder", "empty_class", "mixed_sizes", "mixed_modes",
             "transparent", "jpeg_as_png"]
