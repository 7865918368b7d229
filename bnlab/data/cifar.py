"""Finding, downloading (md5-checked, atomic) and parsing the official CIFAR-10 python release."""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from ..errors import BnlabError

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
TARBALL = "cifar-10-python.tar.gz"
TARBALL_MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
HOW_TO = (f"download {URL} yourself and pass --data-dir to the tarball or to the "
          f"{FOLDER} folder it unpacks to")


def cache_dir() -> Path:
    return Path(os.environ.get("BNLAB_DATA") or Path.home() / ".cache" / "bnlab")


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_folder(p: Path) -> bool:
    return p.is_dir() and (p / "data_batch_1").exists()


def _extract(tarball: Path, dest: Path) -> Path:
    """Check the tarball's md5 and unpack it under dest (atomically: tmp dir + rename)."""
    digest = md5sum(tarball)
    if digest != TARBALL_MD5:
        raise BnlabError(f"{tarball} has md5 {digest}, expected {TARBALL_MD5} (corrupt or not the "
                         f"official CIFAR-10 release); delete it and {HOW_TO}")
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest, prefix=".extract-"))
    try:
        with tarfile.open(tarball, "r:gz") as tf:
            tf.extractall(tmp, filter="data")
        if not _is_folder(tmp / FOLDER):
            raise BnlabError(f"{tarball} does not contain {FOLDER}/; {HOW_TO}")
        target = dest / FOLDER
        if not _is_folder(target):
            os.replace(tmp / FOLDER, target)
        return target
    except (tarfile.TarError, OSError, EOFError) as e:
        raise BnlabError(f"cannot unpack {tarball} ({e}); {HOW_TO}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download(dest: Path, url: str = URL) -> Path:
    """Download the tarball into dest (tmp file + md5 check + rename: never a partial file)."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / TARBALL
    fd, tmp = tempfile.mkstemp(dir=dest, prefix=".download-")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            shutil.copyfileobj(resp, out, 1 << 20)
        digest = md5sum(Path(tmp))
        if digest != TARBALL_MD5:
            raise BnlabError(f"downloaded {url} has md5 {digest}, expected {TARBALL_MD5}; try again or {HOW_TO}")
        os.replace(tmp, target)
        return target
    except OSError as e:
        raise BnlabError(f"CIFAR-10 not found in {dest} and downloading {url} failed ({e}); {HOW_TO}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def locate(data_dir: str | os.PathLike | None, url: str = URL) -> Path:
    """The `cifar-10-batches-py` folder to read, unpacking or downloading as needed.

    An explicit data_dir may be the folder itself, a folder holding it or the tarball, or the
    tarball itself; it is never downloaded into. Without one, the cache dir is used and the
    tarball downloaded there if missing.
    """
    if data_dir is not None:
        p = Path(data_dir).expanduser()
        if _is_folder(p):
            return p
        if _is_folder(p / FOLDER):
            return p / FOLDER
        if p.is_file():
            return _extract(p, p.parent)
        if (p / TARBALL).is_file():
            return _extract(p / TARBALL, p)
        raise BnlabError(f"no CIFAR-10 at --data-dir {p} (looked for {FOLDER}/ and {TARBALL}); {HOW_TO}")
    root = cache_dir()
    if _is_folder(root / FOLDER):
        return root / FOLDER
    tarball = root / TARBALL
    if not tarball.is_file():
        tarball = download(root, url)
    return _extract(tarball, root)



def input_paths(data_dir: str | os.PathLike | None) -> list[Path]:
    """What `locate(data_dir)` reads or unpacks into, found without touching anything: the paths an
    output must stay apart from (see `bnlab.rundir.check_apart`)."""
    if data_dir is None:
        root = cache_dir()
        return [root / FOLDER, root / TARBALL]
    p = Path(data_dir).expanduser()
    if _is_folder(p):
        return [p]
    if _is_folder(p / FOLDER):
        return [p / FOLDER]
    if p.is_file():
        return [p, p.parent / FOLDER]
    if (p / TARBALL).is_file():
        return [p / TARBALL, p / FOLDER]
    return [p]

# What the official batches (and faithful re-encodings of them) pickle: numpy arrays and their dtypes,
# and, for bytes written by Python 3 at protocol 2, codecs.encode. Anything else is refused before
# it runs: a crafted "data_batch_1" could otherwise execute code on load.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("__builtin__", "bytes"), ("builtins", "bytes"),  # an empty array's buffer: b""
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def load_pickle(path: Path) -> object:
    """Unpickle a CIFAR-10 batch file, admitting only plain containers and numpy arrays."""
    with open(path, "rb") as f:
        return _BatchUnpickler(f, encoding="latin1").load()


def _load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        d = load_pickle(path)
        if not isinstance(d, dict):
            raise BnlabError(f"{path} is not a CIFAR-10 batch (holds a {type(d).__name__}, not a dict); {HOW_TO}")
        d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
        x, y = np.asarray(d["data"]), np.asarray(d["labels"])
    except FileNotFoundError:
        raise BnlabError(f"missing CIFAR-10 file {path}; {HOW_TO}") from None
    except BnlabError:
        raise
    except pickle.UnpicklingError as e:
        if "refusing" in str(e):
            raise BnlabError(f"{path} is not a CIFAR-10 batch: it asks to load code ({e}); not loaded") from None
        raise BnlabError(f"cannot read CIFAR-10 file {path} (UnpicklingError: {e}); {HOW_TO}") from None
    except Exception as e:  # corrupt pickle of any kind
        raise BnlabError(f"cannot read CIFAR-10 file {path} ({type(e).__name__}: {e}); {HOW_TO}") from None
    bad = _malformed_batch(x, y)
    if bad:
        raise BnlabError(f"{path} is not a CIFAR-10 batch ({bad}); {HOW_TO}")
    return x.astype(np.uint8).reshape(-1, 3, 32, 32), y.astype(np.int64)


def _malformed_batch(x: np.ndarray, y: np.ndarray) -> str | None:
    """Why (data, labels) are not an official batch's uint8 (N, 3072) images and N labels 0..9, or None.
    Nothing is cast first: casting would wrap 300 to 44, truncate 3.7 to 3 and read floats as pixels."""
    if x.ndim != 2 or x.shape[1] != 3072:
        return f"data of shape {x.shape}, expected (N, 3072)"
    if len(x) == 0:
        return "no images: an empty batch"
    if x.dtype != np.uint8 and not (np.issubdtype(x.dtype, np.integer) and x.min() >= 0 and x.max() <= 255):
        return (f"data of dtype {x.dtype} with values from {x.min()} to {x.max()}, expected uint8 pixels 0..255"
                if np.issubdtype(x.dtype, np.number) else f"data of dtype {x.dtype}, expected uint8 pixels")
    if y.ndim != 1 or len(y) != len(x):
        return f"labels of shape {y.shape} for {len(x)} images, expected ({len(x)},)"
    if not np.issubdtype(y.dtype, np.integer):
        return f"labels of dtype {y.dtype}, expected integers 0..9"
    if y.min() < 0 or y.max() > 9:
        return f"labels from {y.min()} to {y.max()}, expected 0..9"
    return None


def read_folder(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_x, train_y, test_x, test_y) as uint8 NCHW / int64 arrays."""
    train = [_load_batch(folder / f) for f in TRAIN_FILES]
    test = [_load_batch(folder / f) for f in TEST_FILES]
    return (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]),
            np.concatenate([x for x, _ in test]), np.concatenate([y for _, y in test]))
