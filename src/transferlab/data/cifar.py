"""Reading CIFAR-10 and CIFAR-100 from the official python archives (or their extracted folders).

The official files (https://www.cs.toronto.edu/~kriz/cifar.html) are Python 2 pickles of dicts
holding a (N, 3072) uint8 array and lists of labels. Pickles can run arbitrary code when loaded,
so they are read with an unpickler that resolves only numpy's array reconstruction and plain
builtin containers; anything else is refused by name. Archives are read member by member
straight from the tar file, never extracted to disk.
"""

from __future__ import annotations

import io
import pickle
import re
import tarfile
import zlib
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..errors import TransferlabError
from .types import ImageRef, ImageSet, Source

LABEL_SETS = ("fine", "coarse")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")

CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = "test_batch"
CIFAR10_META = "batches.meta"
CIFAR10_FILES = (*CIFAR10_TRAIN, CIFAR10_TEST, CIFAR10_META)
CIFAR100_FILES = ("train", "test", "meta")

_CIFAR10_MEMBER = re.compile(r"^(data_batch_\d+|test_batch|batches\.meta)$")
_SIDE = 32
_ROW = 3 * _SIDE * _SIDE
_READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)


# ---------------------------------------------------------------- detection


def is_cifar(path: Path) -> bool:
    """True for a cifar-10-python.tar.gz / cifar-100-python.tar.gz style archive (.tar.gz/.tgz/.tar
    whose members include data_batch_1+batches.meta, or train+test+meta under one top folder), or
    an extracted folder containing data_batch_1..5, test_batch and batches.meta (CIFAR-10) or
    train, test and meta (CIFAR-100). Cheap: for an archive, read the member names only."""
    path = Path(path)
    try:
        if path.is_dir():
            names = {p.name for p in path.iterdir() if p.is_file()}
            return set(CIFAR10_FILES) <= names or set(CIFAR100_FILES) <= names
        if not (path.is_file() and _is_archive_name(path)):
            return False
    except OSError:
        return False
    seen: set[tuple[str, str]] = set()
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:  # reads headers only, skipping over the members' contents
                if member.isfile():
                    seen.add(_split_member(member.name))
                    if _archive_layout(seen):
                        return True
    except _READ_ERRORS:
        # A damaged download of the official archive still counts, so that load_cifar can say
        # what is wrong with it instead of the file being treated as some other kind of data.
        return bool(_archive_layout(seen)) or path.name.lower().startswith("cifar-")
    return False


def _is_archive_name(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _split_member(name: str) -> tuple[str, str]:
    folder, _, base = name.strip("/").rpartition("/")
    return folder, base


def _archive_layout(seen: set[tuple[str, str]]) -> str | None:
    """'cifar10' or 'cifar100' when the (folder, file) names seen so far make a CIFAR archive."""
    folders: dict[str, set[str]] = {}
    for folder, base in seen:
        folders.setdefault(folder, set()).add(base)
    for names in folders.values():
        if {"data_batch_1", CIFAR10_META} <= names:
            return "cifar10"
    for folder, names in folders.items():
        if set(CIFAR100_FILES) <= names and "/" not in folder:
            return "cifar100"
    return None


# ---------------------------------------------------------------- loading


def load_cifar(path: Path, labels: str = "fine") -> Source:
    """Return a Source: images as ImageRef.from_array(pixels HxWx3 uint8 (32x32x3), name) where name
    is f"{archive or folder name}:{split}[{index}]" (e.g. "cifar-10-python.tar.gz:train[17]");
    labels; classes = the label names from the meta file (CIFAR-10 'label_names'; CIFAR-100
    'fine_label_names' or 'coarse_label_names' per `labels`), in the file's order (never
    sorted: index i is the name of label i); splits = "train" for data_batch_*/train, "test" for
    test_batch/test; root = str(path); Source.images.name = "cifar10" or "cifar100"."""
    if labels not in LABEL_SETS:
        raise TransferlabError(
            f"--cifar-labels '{labels}' is not one of {', '.join(LABEL_SETS)}: use fine (the 100 "
            "CIFAR-100 classes) or coarse (its 20 superclasses)")
    path = Path(path)
    if path.is_dir():
        files, kind, where = _folder_files(path, labels)
    elif path.is_file():
        files, kind, where = _archive_files(path, labels)
    else:
        raise TransferlabError(
            f"CIFAR data '{path}' does not exist: pass cifar-10-python.tar.gz, "
            "cifar-100-python.tar.gz or the folder they extract to")
    if kind == "cifar10":
        return _build(path, "cifar10", files, where, CIFAR10_TRAIN, (CIFAR10_TEST,), CIFAR10_META,
                      b"labels", b"label_names")
    return _build(path, "cifar100", files, where, ("train",), ("test",), "meta",
                  f"{labels}_labels".encode(), f"{labels}_label_names".encode())


def _coarse_on_cifar10(path: Path) -> TransferlabError:
    return TransferlabError(
        f"'{path}' is CIFAR-10, which has only one label set: drop --cifar-labels coarse "
        "(fine and coarse labels exist only in CIFAR-100)")


def _missing(path: Path, kind: str, needed: Iterable[str], have: set[str], prefix: str = "") -> None:
    missing = [n for n in needed if n not in have]
    if missing:
        label = "CIFAR-10" if kind == "cifar10" else "CIFAR-100"
        raise TransferlabError(
            f"'{path}' looks like {label} but lacks {', '.join(prefix + m for m in missing)}: "
            "download the archive again from https://www.cs.toronto.edu/~kriz/cifar.html")


def _folder_files(path: Path, labels: str) -> tuple[dict[str, bytes], str, Callable[[str], str]]:
    names = {p.name for p in path.iterdir() if p.is_file()}
    if any(_CIFAR10_MEMBER.match(n) for n in names):
        kind, needed = "cifar10", CIFAR10_FILES
        if labels == "coarse":
            raise _coarse_on_cifar10(path)
    elif names & set(CIFAR100_FILES):
        kind, needed = "cifar100", CIFAR100_FILES
    else:
        raise TransferlabError(
            f"'{path}' is not a CIFAR folder: it has neither data_batch_1..5, test_batch and "
            "batches.meta (CIFAR-10) nor train, test and meta (CIFAR-100)")
    _missing(path, kind, needed, names)
    files = {}
    for name in needed:
        try:
            files[name] = (path / name).read_bytes()
        except OSError as exc:
            raise TransferlabError(f"cannot read '{path / name}': {exc.strerror or exc}") from None
    return files, kind, lambda name: str(path / name)


def _archive_files(path: Path, labels: str) -> tuple[dict[str, bytes], str, Callable[[str], str]]:
    """Read the CIFAR members' bytes in one pass over the archive, in the order they are stored."""
    if not _is_archive_name(path):
        raise TransferlabError(
            f"'{path}' is not a CIFAR archive: pass cifar-10-python.tar.gz, "
            "cifar-100-python.tar.gz (.tar.gz, .tgz or .tar) or the folder they extract to")
    wanted = set(CIFAR10_FILES) | set(CIFAR100_FILES)
    found: dict[tuple[str, str], bytes] = {}
    try:
        with tarfile.open(path, "r|*") as tar:  # stream: one pass, no seeking back in the gzip
            for member in tar:
                if not member.isfile():
                    continue
                folder, base = _split_member(member.name)
                if base not in wanted:
                    continue
                if labels == "coarse" and _CIFAR10_MEMBER.match(base):
                    raise _coarse_on_cifar10(path)
                fh = tar.extractfile(member)
                found[(folder, base)] = fh.read() if fh is not None else b""
    except _READ_ERRORS as exc:
        raise TransferlabError(
            f"'{path}' is not a readable tar archive ({_reason(exc)}): the download is probably "
            "truncated or damaged; download it again") from None
    kind = _archive_layout(set(found))
    if kind is None:
        # Name what is missing from the folder that got closest to a CIFAR layout.
        c10 = {f for f, b in found if b in CIFAR10_FILES}
        c100 = {f for f, b in found if b in CIFAR100_FILES and "/" not in f}
        if c10:
            kind, folder = "cifar10", sorted(c10)[0]
        elif c100:
            kind, folder = "cifar100", sorted(c100)[0]
        else:
            raise TransferlabError(
                f"'{path}' is not a CIFAR archive: it has neither data_batch_1..5, test_batch and "
                "batches.meta (CIFAR-10) nor train, test and meta (CIFAR-100) inside")
    else:
        needed_any = {"data_batch_1", CIFAR10_META} if kind == "cifar10" else set(CIFAR100_FILES)
        folders = sorted(f for f in {f for f, _ in found}
                         if needed_any <= {b for g, b in found if g == f})
        if len(folders) > 1:
            raise TransferlabError(
                f"'{path}' holds more than one copy of {kind.upper()} (in {', '.join(folders)}): "
                "keep one")
        folder = folders[0]
    prefix = f"{folder}/" if folder else ""
    needed = CIFAR10_FILES if kind == "cifar10" else CIFAR100_FILES
    files = {b: data for (f, b), data in found.items() if f == folder and b in needed}
    _missing(path, kind, needed, set(files), prefix)
    return files, kind, lambda name: f"{path}:{prefix}{name}"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text and text[0] else type(exc).__name__


def _build(path: Path, kind: str, files: dict[str, bytes], where: Callable[[str], str],
           train: tuple[str, ...], test: tuple[str, ...], meta: str, label_key: bytes,
           names_key: bytes) -> Source:
    meta_dict = _unpickle(files.pop(meta), where(meta))
    classes = _label_names(meta_dict, names_key, where(meta))
    images: list[ImageRef] = []
    all_labels: list[np.ndarray] = []
    splits: list[str] = []
    for split, members in (("train", train), ("test", test)):
        index = 0
        for member in members:
            pixels, member_labels = _batch(files.pop(member), where(member), label_key, len(classes))
            for picture in pixels:
                images.append(ImageRef.from_array(picture, f"{path.name}:{split}[{index}]"))
                index += 1
            all_labels.append(member_labels)
            splits.extend([split] * len(pixels))
    return Source(ImageSet(images, np.concatenate(all_labels), classes, kind), splits, str(path))


def _label_names(meta: dict, key: bytes, where: str) -> list[str]:
    names = meta.get(key)
    if not isinstance(names, (list, tuple)) or not names:
        raise TransferlabError(
            f"'{where}' has no {key.decode()} list: it is not an official CIFAR meta file; "
            "download the archive again")
    out = []
    for name in names:
        if isinstance(name, bytes):
            name = name.decode("utf-8", errors="replace")
        if not isinstance(name, str):
            raise TransferlabError(
                f"'{where}' has a non-text entry in {key.decode()}: it is not an official CIFAR "
                "meta file; download the archive again")
        out.append(name)
    return out


def _batch(raw: bytes, where: str, label_key: bytes, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 32, 3) uint8 pixels and (N,) labels from one CIFAR batch file."""
    batch = _unpickle(raw, where)
    data = batch.get(b"data")
    if not isinstance(data, np.ndarray):
        raise TransferlabError(
            f"'{where}' has no data array: it is not an official CIFAR batch file; download the "
            "archive again")
    if data.ndim != 2 or data.shape[1] != _ROW:
        raise TransferlabError(
            f"'{where}' holds data of shape {data.shape}, not (N, {_ROW}) rows of 32x32 RGB "
            "pixels: it is not an official CIFAR batch file; download the archive again")
    if data.dtype != np.uint8:
        if data.dtype.kind not in "iu" or (data.size and (data.min() < 0 or data.max() > 255)):
            raise TransferlabError(
                f"'{where}' holds {data.dtype} data, not bytes 0..255: it is not an official "
                "CIFAR batch file; download the archive again")
        data = data.astype(np.uint8)
    labels = batch.get(label_key)
    if labels is None:
        raise TransferlabError(
            f"'{where}' has no {label_key.decode()} list: it is not an official CIFAR batch "
            "file; download the archive again")
    try:
        labels = np.asarray(labels)
        ok = labels.shape == (len(data),) and (labels.size == 0 or labels.dtype.kind in "iu")
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise TransferlabError(
            f"'{where}' has {label_key.decode()} that are not one integer per image "
            f"({len(data)} images): it is not an official CIFAR batch file; download it again")
    labels = labels.astype(np.int64)
    outside = labels[(labels < 0) | (labels >= n_classes)]
    if outside.size:
        raise TransferlabError(
            f"'{where}' has label {int(outside[0])}, outside the {n_classes} classes of its meta "
            "file: the files do not belong together; download the archive again")
    # Channel planes (R, G, B), each row-major 32x32 -> height, width, channel; one contiguous
    # read-only block, so each image is a contiguous view whose bytes cannot change under its key.
    pixels = np.ascontiguousarray(data.reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1))
    pixels.setflags(write=False)
    return pixels, labels


# ---------------------------------------------------------------- restricted unpickling


class _Refused(Exception):
    """Raised inside the unpickler; turned into a TransferlabError naming the file."""


def _latin1_encode(text, encoding="utf-8"):
    """What Python 3 writes for bytes at pickle protocol <= 2: _codecs.encode(text, 'latin1').

    Only that use is honoured: other codecs are looked up by name, which can import modules."""
    if not isinstance(text, str) or str(encoding).lower().replace("_", "-") not in (
            "latin1", "latin-1", "iso-8859-1"):
        raise _Refused(f"_codecs.encode to {encoding}")
    return text.encode("latin-1")


def _numpy_globals() -> dict[tuple[str, str], object]:
    probe = np.empty(1, dtype=np.uint8)
    reconstruct = probe.__reduce__()[0]  # numpy.core.multiarray._reconstruct in any numpy version
    frombuffer = probe.__reduce_ex__(5)[0]  # what pickle protocol 5 uses for contiguous arrays
    allowed: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray,
                                              ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        if getattr(frombuffer, "__name__", "") == "_frombuffer":
            allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


def _from_bytes(kind: type) -> Callable:
    """bytes/bytearray as pickles build them (from nothing or from bytes), never from a codec name."""
    def build(*args):
        if len(args) > 1 or (args and not isinstance(args[0], (bytes, bytearray))):
            raise _Refused(f"builtins.{kind.__name__} with arguments other than bytes")
        return kind(*args)
    return build


_CONTAINERS = {"list": list, "tuple": tuple, "dict": dict, "set": set, "frozenset": frozenset,
               "bytes": _from_bytes(bytes), "bytearray": _from_bytes(bytearray)}
_ALLOWED: dict[tuple[str, str], object] = {
    # Protocol <= 2 pickles name builtins '__builtin__' (Python 2) or 'builtins'.
    **{(module, name): obj for module in ("builtins", "__builtin__")
       for name, obj in _CONTAINERS.items()},
    ("_codecs", "encode"): _latin1_encode,
    **_numpy_globals(),
}


class _CifarUnpickler(pickle.Unpickler):
    """Resolves only numpy array reconstruction and builtin containers; refuses everything else."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise _Refused(f"{module}.{name}") from None

    def persistent_load(self, pid):
        raise _Refused(f"persistent id {pid!r}")


def _unpickle(raw: bytes, where: str) -> dict:
    try:
        obj = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _Refused as exc:
        raise TransferlabError(
            f"'{where}' is not a plain CIFAR file: transferlab refuses to unpickle '{exc}' from it "
            "(only numpy arrays, lists, dicts and strings are allowed, since loading anything else "
            "can run code); use the official archive from https://www.cs.toronto.edu/~kriz/cifar.html"
        ) from None
    except Exception as exc:  # any malformed pickle: truncated, wrong opcodes, bad numpy state
        raise TransferlabError(
            f"'{where}' is not a readable CIFAR pickle ({_reason(exc)}): the file is damaged or not "
            "from the official archive; download it again") from None
    if not isinstance(obj, dict):
        raise TransferlabError(
            f"'{where}' holds a {type(obj).__name__}, not the dict of a CIFAR file: it is not from "
            "the official archive; download it again")
    # Python 2 pickles load with bytes keys; a file re-saved by Python 3 may have str keys.
    return {k.encode("latin-1") if isinstance(k, str) else k: v for k, v in obj.items()}
