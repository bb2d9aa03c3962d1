"""The user's own data files: every format, labels and class order, scalings, the split, the
hand PNG decoder against Pillow, and each bad-data case failing in one line that names it."""

import io
import os
import struct
import zlib

import numpy as np
import pytest
from datafile_cases import BAD_NAMES, bad_cases  # tests/datafile_cases.py

from fm_numpy.datafiles import RowView, read_data, split_indices
from fm_numpy.png import decode_png, encode_png, read_png, write_png
from fm_numpy.scaling import Identity, MinMax, Standardize, scaling_from_json

Image = pytest.importorskip("PIL.Image")  # Pillow comes with matplotlib (the plot extra)
RNG = np.random.default_rng(0)


def _pil_png(array, mode=None, **kw):
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG", **kw)
    return buf.getvalue()


# ------------------------------------------------------------------------------ PNG decoder
@pytest.mark.parametrize("shape", [(7, 5), (6, 9, 2), (9, 4, 3), (3, 11, 4)])
@pytest.mark.parametrize("filter_type", range(5))
def test_png_every_filter_against_pillow(shape, filter_type):
    """Our encoder writes each filter type; Pillow and our decoder both give the image back."""
    image = RNG.integers(0, 256, shape, dtype=np.uint8)
    image[2:4] = image[1]  # repeated rows: Up and Paeth predict exactly there
    blob = encode_png(image, filter_type)
    (length,) = struct.unpack(">I", blob[33:37])  # the IDAT chunk follows IHDR
    rows = zlib.decompress(blob[41:41 + length])  # filter byte + row, per row
    row_bytes = 1 + int(np.prod(shape[1:]))
    assert set(rows[::row_bytes]) == {filter_type}  # every row really uses this filter
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(blob))), image)
    assert np.array_equal(decode_png(blob), image)


@pytest.mark.parametrize("alpha,beta", [(5, -10), (-10, 5), (7, -7)])
def test_png_paeth_ties(alpha, beta):
    """image = alpha i + beta j: left - upleft = alpha, up - upleft = beta, so Paeth's
    distances tie (|beta| = |alpha + beta| etc.) and its tie order decides every byte."""
    i, j = np.indices((12, 10))
    image = ((alpha * i + beta * j) % 256).astype(np.uint8)
    blob = encode_png(image, filter_type=4)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(blob))), image)
    assert np.array_equal(decode_png(blob), image)


@pytest.mark.parametrize("mode,channels", [("L", None), ("LA", 2), ("RGB", 3), ("RGBA", 4)])
def test_png_written_by_pillow(mode, channels):
    shape = (13, 17) if channels is None else (13, 17, channels)
    image = RNG.integers(0, 256, shape, dtype=np.uint8)
    blob = _pil_png(image, mode)  # Pillow picks its own (adaptive) filters
    assert np.array_equal(decode_png(blob), np.asarray(Image.open(io.BytesIO(blob))))


@pytest.mark.parametrize("colors,bits", [(2, 1), (4, 2), (16, 4), (200, 8)])
@pytest.mark.parametrize("transparent", [False, True])
def test_png_palette_against_pillow(colors, bits, transparent):
    rgb = RNG.integers(0, 256, (11, 19, 3), dtype=np.uint8)
    buf = io.BytesIO()
    kw = {"transparency": 0} if transparent else {}
    Image.fromarray(rgb).quantize(colors).save(buf, format="PNG", bits=bits, **kw)
    blob = buf.getvalue()
    assert blob[24] == bits and blob[25] == 3  # really a palette PNG of that bit depth
    want = np.asarray(Image.open(io.BytesIO(blob)).convert("RGBA" if transparent else "RGB"))
    assert np.array_equal(decode_png(blob), want)


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_png_low_bit_gray_against_pillow(bits):
    image = Image.fromarray(RNG.integers(0, 256, (6, 13), dtype=np.uint8))
    buf = io.BytesIO()
    (image.convert("1") if bits == 1 else image).save(buf, format="PNG", bits=bits)
    blob = buf.getvalue()
    assert blob[24] == bits
    assert np.array_equal(decode_png(blob), np.asarray(Image.open(io.BytesIO(blob)).convert("L")))


def test_png_written_by_matplotlib(tmp_path):
    import matplotlib.pyplot as plt

    path = tmp_path / "m.png"
    plt.imsave(path, RNG.random((10, 12)), cmap="viridis")
    assert np.array_equal(read_png(path), np.asarray(Image.open(path)))


def _patch_ihdr(blob, offset, value):
    head = bytearray(blob[:33])
    head[16 + offset] = value
    head[29:33] = struct.pack(">I", zlib.crc32(bytes(head[12:29])))
    return bytes(head) + blob[33:]


@pytest.mark.parametrize("case,message", [
    ("interlaced", "interlaced PNGs are not supported"),
    ("16-bit", "16-bit PNGs are not supported"),
    ("crc", "fails its CRC check"),
    ("truncated", "truncated"),
    ("signature", "not a PNG file"),
])
def test_png_refusals_are_one_line(case, message):
    blob = encode_png(RNG.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    if case == "interlaced":
        blob = _patch_ihdr(blob, 12, 1)
    elif case == "16-bit":
        blob = _pil_png(np.zeros((4, 4), np.uint16) + 300)
        assert blob[24] == 16
    elif case == "crc":
        blob = blob[:20] + bytes([blob[20] ^ 1]) + blob[21:]
    elif case == "truncated":
        blob = blob[:-20]
    else:
        blob = b"GIF89a" + blob[6:]
    with pytest.raises(ValueError, match=message) as e:
        decode_png(blob)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------ arrays
def test_npy_vectors_are_memory_mapped(tmp_path):
    x = RNG.standard_normal((50, 3)).astype(np.float32)
    np.save(tmp_path / "v.npy", x)
    rec = read_data(tmp_path / "v.npy")
    assert isinstance(rec.x, np.memmap)  # rows are read where indexed, never loaded whole
    assert rec.kind == "vectors" and rec.shape == (3,) and rec.y is None
    assert np.array_equal(rec.x[[4, 2]], x[[4, 2]])


def test_npz_labels_become_sorted_class_indices(tmp_path):
    x = RNG.standard_normal((6, 2))
    y = np.array([7, -1, 7, 3, 3, -1])
    np.savez(tmp_path / "d.npz", x=x, y=y)
    rec = read_data(tmp_path / "d.npz")
    assert rec.label_values == [-1, 3, 7] and rec.class_names == ["-1", "3", "7"]
    assert rec.y.tolist() == [2, 0, 2, 1, 1, 0]
    assert np.array_equal(np.asarray(rec.label_values)[rec.y], y)  # back to the data's own


@pytest.mark.parametrize("header", [True, False])
def test_csv_with_and_without_header(tmp_path, header):
    text = ("a,lab,b\n" if header else "") + "1.5,2,3\n\n-4,0,5e-1\n6,2,7\n"
    (tmp_path / "t.csv").write_text(text)
    rec = read_data(tmp_path / "t.csv", label_column="lab" if header else "1")
    assert np.array_equal(rec.x, [[1.5, 3], [-4, 0.5], [6, 7]])
    assert rec.y.tolist() == [1, 0, 1] and rec.label_values == [0, 2]
    unlabelled = read_data(tmp_path / "t.csv")
    assert unlabelled.x.shape == (3, 3) and unlabelled.y is None


@pytest.mark.parametrize("layout,shape,model_shape", [
    ("NHW", (5, 7, 9), (1, 7, 9)), ("NHWC", (5, 7, 9, 3), (3, 7, 9)),
    ("NCHW", (5, 3, 7, 9), (3, 7, 9)), ("NHWC", (5, 8, 8, 1), (1, 8, 8))])
def test_image_arrays_layouts_and_8bit_round_trip(tmp_path, layout, shape, model_shape):
    x = RNG.integers(0, 256, shape, dtype=np.uint8)
    np.save(tmp_path / "im.npy", x)
    rec = read_data(tmp_path / "im.npy")
    assert rec.kind == "images" and rec.layout == layout and rec.shape == model_shape
    scaling = MinMax.fit(RowView(rec.x), rec.shape, rec.layout)
    z = scaling.encode(rec.x[:3])  # (3, C, H, W)
    assert z.shape == (3, *model_shape) and z.min() >= -1 and z.max() <= 1
    channels_first = x[:3, None] if layout == "NHW" else (
        x[:3].transpose(0, 3, 1, 2) if layout == "NHWC" else x[:3])  # written out per layout
    np.testing.assert_allclose(z, channels_first / 127.5 - 1, rtol=1e-6, atol=1e-7)
    back = scaling.decode(z.reshape(3, -1))  # flat model rows are accepted too
    want = x[:3] if layout != "NCHW" else x[:3].transpose(0, 2, 3, 1)
    assert back.dtype == np.uint8 and np.array_equal(back, want)
    nudged = want.astype(int) + (want < 255)  # +0.6 of a level rounds up, 255 stays
    assert np.array_equal(scaling.decode(z + 0.6 / 127.5), nudged)
    assert scaling.decode(np.full_like(z, 3.0)).max() == 255  # clipped, not wrapped
    assert np.array_equal(scaling.encode(back), z)  # sample's files encode again (evaluate)


def test_float_images_range():
    x = RNG.random((4, 6, 6)).astype(np.float32)
    s = MinMax.fit(x, (1, 6, 6), "NHW")
    assert (s.lo, s.hi, s.eight_bit) == (0.0, 1.0, False)
    np.testing.assert_allclose(s.decode(s.encode(x, np.float64)), x, rtol=1e-6)
    wide = MinMax.fit(x * 40 - 3, (1, 6, 6), "NHW")
    assert wide.lo == pytest.approx(float((x * 40 - 3).min()))


def test_standardize_fit_in_chunks_matches_numpy():
    x = RNG.standard_normal((10_000, 3)) * [1, 1e-3, 5] + [1e6, 0, -2]  # > one chunk
    x[:, 1] = 4.0  # a constant feature keeps std 1
    s = Standardize.fit(x)
    np.testing.assert_allclose(s.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(s.std[[0, 2]], x.std(0)[[0, 2]], rtol=1e-9)
    assert s.std[1] == 1.0
    z = s.encode(x, np.float64)
    np.testing.assert_allclose(z[:, [0, 2]].mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(s.decode(z), x, rtol=1e-12)


def test_scalings_json_round_trip_in_both_packages():
    import torch

    from fm_torch.scaling import scaling_from_json as torch_from_json

    x = RNG.integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
    for s, raw in [(Standardize([1.0, 2.0], [3.0, 0.5], "float32"), RNG.random((4, 2))),
                   (MinMax(0, 255, (3, 4, 5), "NHWC", True), x), (Identity(), RNG.random((2, 2)))]:
        again = scaling_from_json(s.to_json())
        assert again.to_json() == s.to_json()
        z = s.encode(raw, np.float32)  # fm_torch's default dtype
        assert np.array_equal(again.encode(raw, np.float32), z)
        t = torch_from_json(s.to_json())
        zt = t.encode(raw)
        assert isinstance(zt, torch.Tensor) and np.array_equal(zt.numpy(), z)
        assert np.array_equal(t.decode(zt), s.decode(z))


# ------------------------------------------------------------------------------ folders
def _folder(root, classes, shape=(6, 5, 3), n=3, seed=0):
    rng = np.random.default_rng(seed)
    images = {}
    for c in classes:
        d = os.path.join(root, c) if c else root
        os.makedirs(d, exist_ok=True)
        for i in range(n):
            images[(c, i)] = rng.integers(0, 256, shape, dtype=np.uint8)
            write_png(os.path.join(d, f"img{i}.png"), images[(c, i)], filter_type=i % 5)
    return images


def test_image_folder_classes_in_sorted_order(tmp_path):
    images = _folder(str(tmp_path / "d"), ["zebra", "ant", "Moth"])
    (tmp_path / "d" / ".hidden").mkdir()  # hidden entries are skipped
    rec = read_data(tmp_path / "d", cache_dir=False)
    assert rec.class_names == ["Moth", "ant", "zebra"]  # sorted names, as ImageFolder
    assert rec.y.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    assert rec.kind == "images" and rec.layout == "NHWC" and rec.shape == (3, 6, 5)
    assert np.array_equal(rec.x[3], images[("ant", 0)])


def test_image_folder_flat_gray_palette_alpha_and_jpeg(tmp_path):
    d = tmp_path / "flat"
    d.mkdir()
    gray = RNG.integers(0, 256, (8, 8), dtype=np.uint8)
    write_png(d / "a.png", gray)
    (d / "b.png").write_bytes(_pil_png(np.dstack([gray, np.full_like(gray, 255)]), "LA"))
    (d / "notes.txt").write_text("skipped")
    rec = read_data(d, cache_dir=False)
    assert rec.y is None and rec.layout == "NHW" and rec.shape == (1, 8, 8)
    assert np.array_equal(rec.x[1], gray)  # an opaque alpha channel is dropped
    rgb = RNG.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    e = tmp_path / "rgb"
    e.mkdir()
    buf = io.BytesIO()
    Image.fromarray(rgb).quantize(16).save(buf, format="PNG")
    (e / "p.png").write_bytes(buf.getvalue())
    Image.fromarray(rgb).save(e / "q.jpg", quality=90)
    rec = read_data(e, cache_dir=False)
    assert rec.x.shape == (2, 9, 7, 3)
    assert np.array_equal(rec.x[0], np.asarray(Image.open(e / "p.png").convert("RGB")))
    assert np.array_equal(rec.x[1], np.asarray(Image.open(e / "q.jpg")))


def test_image_folder_cache_is_used_and_refreshed(tmp_path):
    _folder(str(tmp_path / "d"), [""], n=2)
    rec = read_data(tmp_path / "d", cache_dir=tmp_path / "cache")
    cache = rec.extra["cache"]
    assert os.path.isfile(cache)
    np.savez(cache, x=np.zeros_like(rec.x))  # a cache hit is visible as zeros
    assert read_data(tmp_path / "d", cache_dir=tmp_path / "cache").x.max() == 0
    write_png(tmp_path / "d" / "img1.png", np.full((6, 5, 3), 9, np.uint8))  # edited
    again = read_data(tmp_path / "d", cache_dir=tmp_path / "cache")
    assert again.extra["cache"] != cache and again.x[1].max() == 9


# ------------------------------------------------------------------------------ split
def test_split_is_seeded_disjoint_and_complete():
    train, val = split_indices(101, 0.2, seed=3)
    assert len(val) == 20 and len(train) == 81
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(101))
    assert np.array_equal(split_indices(101, 0.2, seed=3)[1], val)
    assert not np.array_equal(split_indices(101, 0.2, seed=4)[1], val)
    assert len(split_indices(5, 0.0)[1]) == 0


def test_row_view_and_shards():
    from fm_torch.datafiles import shard_rows

    x = np.arange(40.0).reshape(20, 2)
    view = RowView(x, [3, 5, 6, 7, 19], release_every=1)
    assert np.array_equal(view[1:4], x[[5, 6, 7]]) and np.array_equal(view[[4, 0]], x[[19, 3]])
    shards = [shard_rows(view, r, 2) for r in range(2)]
    assert np.array_equal(shards[0][:], x[[3, 6, 19]]) and np.array_equal(shards[1][:],
                                                                           x[[5, 7]])


# ------------------------------------------------------------------------------ bad data
@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_data_one_line_naming_file_and_problem(tmp_path, name):
    path, kw, words = bad_cases(str(tmp_path))[name]
    with pytest.raises(ValueError) as e:
        read_data(path, cache_dir=False, **kw)
    message = str(e.value)
    assert "\n" not in message and words in message, message
    assert str(tmp_path) in message  # names the file or folder


def test_too_few_samples_for_the_split():
    with pytest.raises(ValueError, match="10 samples are too few for --val-fraction 0.1"):
        split_indices(10, 0.1)
    with pytest.raises(ValueError, match="must lie in"):
        split_indices(10, 1.0)


def test_missing_path_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such data file"):
        read_data(tmp_path / "nope.csv")


def test_row_view_reads_a_mapped_npy_by_offset(tmp_path):
    """np.load's memory map of an .npy is read with pread at the rows' offsets (no mapped
    pages in this process); every kind of index gives x's rows."""
    x = np.random.default_rng(1).standard_normal((500, 3, 2)).astype(">f4")  # big-endian
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    view = RowView(mapped, np.arange(3, 480))
    assert view._file is not None
    for key in (slice(10, 60), [5, 400, 7, 7], np.sort(np.random.default_rng(2).choice(
            477, 200, replace=False)), slice(0, 477, 3)):
        assert np.array_equal(view[key], x[3:480][key])
    assert np.array_equal(view[4], x[7])
    assert RowView(mapped[1:]).__dict__["_file"] is None  # a view of the map: indexed as is


def test_a_strided_slice_is_a_view_that_reads_nothing(tmp_path):
    x = np.arange(60.0).reshape(30, 2)
    np.save(tmp_path / "x.npy", x)
    view = RowView(np.load(tmp_path / "x.npy", mmap_mode="r"), np.arange(2, 30))
    shard = view[1::3]  # rank 1 of 3
    assert isinstance(shard, RowView) and shard._fd is None  # no file opened yet
    assert np.array_equal(shard[:], x[2:30][1::3])


def test_each_rank_holds_only_its_shard_and_reads_only_its_rows(tmp_path):
    """Under torchrun a rank's source is rows rank, rank + world, ... of the training split,
    a RowView of the memory-mapped file: nothing is read until a batch asks for rows."""
    import torch

    from fm_torch.datafiles import open_user_data
    from fm_torch.draws import GeneratorDraws

    x = np.random.default_rng(3).standard_normal((103, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    train_idx, _ = split_indices(103, 0.1, seed=5)
    for rank in range(3):
        src = open_user_data(str(tmp_path / "x.npy"), val_fraction=0.1, seed=5, rank=rank,
                             world_size=3)
        assert isinstance(src.x, RowView) and src.x._fd is None  # nothing read yet
        assert np.array_equal(src.x.idx, train_idx[rank::3])
        x1, y, _ = src.batch(GeneratorDraws(torch.Generator().manual_seed(0), "cpu"), 8)
        assert x1.shape == (8, 4) and y is None
        rows = src.scaling.decode(x1.double().numpy())  # back to the file's rows
        mine = x[train_idx[rank::3]]
        assert all(np.abs(mine - r).max(axis=1).min() < 1e-5 for r in rows)
