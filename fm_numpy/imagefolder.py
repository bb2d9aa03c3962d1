"""A folder of PNG / JPEG images as one uint8 array, with labels from class subfolders.

Layouts (torchvision's ImageFolder convention):
- flat: folder/*.png -> unconditional, no labels;
- classes: folder/<class>/**.png -> label k = the k-th class folder in sorted name order.
Hidden entries (.name) and files of other types are skipped; images both at the top level
and in subfolders are refused (which were meant?). Every image must have one size and one
mode: gray -> (N, H, W), RGB -> (N, H, W, 3). A palette PNG is RGB; an alpha channel that is
fully opaque is dropped, one that is not is refused (the networks learn no transparency).

PNGs are decoded by fm_numpy.png; JPEGs need Pillow (it comes with matplotlib). The file's
magic bytes decide, so a JPEG named .png fails in one line.

Decoding thousands of PNGs in Python takes seconds, so the array is cached once, as
<cache_dir>/imagefolder-<fingerprint>.npz (default $FM_DUAL_CACHE or ~/.cache/fm-dual; the
fingerprint hashes every file's relative path, size and modification time, so an edited
folder is read again). cache_dir=False turns the cache off.
"""

import hashlib
import os

import numpy as np

from fm_numpy.io import save_npz
from fm_numpy.png import PNG_SIGNATURE, read_png

__all__ = ["read_image_folder", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_MODES = {2: "gray", 3: "RGB"}


def _images_in(folder, recursive):
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        out += [os.path.join(root, f) for f in sorted(files)
                if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES]
    return out


def _read_jpeg(path):
    try:
        from PIL import Image
    except ImportError:
        raise ValueError(f"{path}: JPEG images need Pillow (pip install fm-dual[plot])") \
            from None
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "RGB"):
                raise ValueError(f"{path}: JPEG mode {im.mode} is not supported (gray or RGB)")
            return np.asarray(im, dtype=np.uint8)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001  (a broken JPEG fails in many ways)
        raise ValueError(f"{path} is not a readable JPEG ({type(e).__name__})") from None


def _read_image(path):
    """uint8 (H, W) or (H, W, 3) of one file, alpha dropped when fully opaque."""
    with open(path, "rb") as f:
        head = f.read(8)
    suffix = os.path.splitext(path)[1].lower()
    if head.startswith(PNG_SIGNATURE):
        if suffix != ".png":
            raise ValueError(f"{path} is not a JPEG file (it starts like a .png file)")
        image = read_png(path)
    elif head.startswith(b"\xff\xd8\xff"):
        if suffix == ".png":
            raise ValueError(f"{path} is not a PNG file (it starts like a .jpg file)")
        image = _read_jpeg(path)
    else:
        raise ValueError(f"{path} is not a {suffix[1:].upper()} file (bad magic bytes)")
    if image.ndim == 3 and image.shape[2] in (2, 4):
        if np.any(image[..., -1] != 255):
            raise ValueError(f"{path} has transparent pixels: flatten the images onto a "
                             "background (an alpha channel is not learned)")
        image = image[..., 0] if image.shape[2] == 2 else image[..., :3]
    return image


def _fingerprint(folder, files):
    h = hashlib.sha256()
    for path in files:
        st = os.stat(path)
        h.update(f"{os.path.relpath(path, folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _cache_path(cache_dir, key):
    if cache_dir is False:
        return None
    if cache_dir is None:
        cache_dir = os.environ.get("FM_DUAL_CACHE") or os.path.join(
            os.path.expanduser("~"), ".cache", "fm-dual")
    return os.path.join(os.fspath(cache_dir), f"imagefolder-{key}.npz")


def read_image_folder(folder, cache_dir=None):
    """(x uint8 (N, H, W) or (N, H, W, 3), y (N,) int64 or None, class names or None, notes)."""
    folder = os.fspath(folder)
    entries = sorted(e for e in os.listdir(folder) if not e.startswith("."))
    classes = [e for e in entries if os.path.isdir(os.path.join(folder, e))]
    top = _images_in(folder, recursive=False)
    if classes and top:
        raise ValueError(f"{folder}: images both at the top level ({os.path.basename(top[0])}) "
                         f"and in subfolders ({classes[0]}/): put every image in its class "
                         "folder, or all at the top level")
    if classes:
        files, y = [], []
        for k, name in enumerate(classes):
            found = _images_in(os.path.join(folder, name), recursive=True)
            if not found:
                raise ValueError(f"{folder}: class folder {name}/ holds no PNG or JPEG images")
            files += found
            y += [k] * len(found)
        y = np.asarray(y, dtype=np.int64)  # (N,)
    else:
        files, y = top, None
        if not files:
            raise ValueError(f"{folder}: the folder holds no PNG or JPEG images")
    key = _fingerprint(folder, files)
    cache = _cache_path(cache_dir, key)
    notes = {"files": len(files), "fingerprint": key, "cache": cache}
    if cache is not None and os.path.isfile(cache):
        try:
            with np.load(cache, allow_pickle=False) as f:
                x = f["x"]
            if len(x) == len(files):
                return x, y, (classes or None), notes
        except Exception:  # noqa: BLE001,S110  (a torn cache is rebuilt below)
            pass
    first, images = None, []
    for path in files:
        image = _read_image(path)
        if first is None:
            first = (path, image.shape)
        elif image.shape != first[1]:
            def describe(s):
                return f"{s[1]}x{s[0]} {_MODES[len(s)]}"

            raise ValueError(f"{path} is {describe(image.shape)} but {first[0]} is "
                             f"{describe(first[1])}: all images need one size and mode")
        images.append(image)
    x = np.stack(images)  # (N, H, W) or (N, H, W, 3)
    if cache is not None:
        try:
            save_npz(cache, x=x)
        except OSError:
            notes["cache"] = None  # a read-only cache folder only costs the next read
    return x, y, (classes or None), notes
