"""Image-classification input pipelines on grain, without TensorFlow.

Data comes from ``tfds.data_source`` (random access to prepared ArrayRecord
files; no ``tf.data``) or from the embedded ``digits`` default
(``sklearn.datasets.load_digits``, shipped with scikit-learn, upsampled and
padded to the model's input size) so every script runs anywhere.

The pipeline is a ``grain.MapDataset`` whose element ``k`` is this process's
part of global batch ``k = epoch * steps_per_epoch + step``:

* ``MapDataset.range(...)`` of batch positions ``k``; for training, a
  ``random_map`` gives batch ``k`` rows ``[s*B, (s+1)*B)`` of epoch ``e``'s
  order, grain's ``MapDataset.range(N).shuffle(seed)`` read at ``e*N + s*B + j``
  (a new permutation per epoch, computed per element in O(1) memory; ``S = N // B``
  full batches, the last ``N - S*B`` examples of each epoch dropped) and draws the random augmentation
  parameters of the *whole global batch* from grain's generator of element ``k``
  (vectorised: flips, crop boxes, lighting), so they do not depend on the number
  of processes or workers;
* the per-process ``map`` reads the records of rows ``[i*B/P, (i+1)*B/P)``
  (``i = jax.process_index()``, ``P = jax.process_count()``, the layout
  ``jax.make_array_from_process_local_data`` expects), cuts and resizes the crops
  and flips them, in ``uint8``.

So a batch depends only on its ``(epoch, step)`` position. ``ImageLoader.iterate``
runs that map in ``workers`` grain worker processes (``mp_prefetch``; element
``k`` goes to worker ``k % workers`` and the results are read back in order), and
keeps ``prefetch`` batches ahead on the device when given a ``put`` function. Its
state (``get_state``/``set_state``, the position of the next batch) is what the
orbax checkpoint stores (``gmpjax.train.checkpoint.Checkpointer(data_iterator=...)``).

Batches cross the process boundary as ``uint8``; the conversion to float, the
colour noise and the mean subtraction happen per batch in ``Preprocess.finish``,
with numpy on the host or inside the jitted train step (``xp=jax.numpy``).

Preprocessing (as the released code / the paper, see ``docs/imagenet.md``):

* ``imagenet32`` (``imagenet_resized/32x32``, VGG-6): ``x/255 - mean`` with the
  per-channel mean of the released code, random horizontal flip in training.
* ``imagenet`` (``imagenet2012``, ResNet-18): training = random resize of the
  shorter side to ``L ~ U[256, 480]`` (aspect ratio kept) + random 224 crop
  (``crop="scale"``, the paper), or an Inception-style random resized crop
  (``crop="inception"``), random horizontal flip, AlexNet PCA colour noise;
  evaluation = shorter side 256 + single centre crop 224; then ``x/255 - mean``.
  The crop box is computed in source coordinates and only that region is resized
  (Pillow ``resize(box=...)``: the same pixels as resizing the whole image, then
  cropping); JPEG bytes are decoded at a reduced DCT scale (Pillow draft mode)
  when the crop is shrunk by 2x or more.
* ``digits``: ``x/255 - mean`` of the digits training split, no augmentation
  (flipping would change the digits' meaning).

>>> src = load_source("digits", "train", image_size=32)
>>> pre = make_preprocess("digits", train=True)
>>> loader = ImageLoader(src, global_batch_size=8, preprocess=pre, process_index=0, process_count=1)
>>> b = loader.get_batch(0, 0)
>>> b["image"].shape, b["image"].dtype.name, b["label"].dtype.name, pre.finish(b).dtype.name
((8, 32, 32, 3), 'uint8', 'int32', 'float32')
"""

from __future__ import annotations

import collections
import dataclasses
import io
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol

import numpy as np

from gmpjax._optional import require
from gmpjax.data.paths import DataError

try:
    import grain

    _IteratorBase: Any = grain.DatasetIterator
except ImportError:  # pragma: no cover - grain comes with the `data` extra
    grain = None
    _IteratorBase = object

__all__ = [
    "IMAGENET32_MEAN",
    "IMAGENET_MEAN",
    "PCA_EIGVAL",
    "PCA_EIGVEC",
    "DATASETS",
    "ArraySource",
    "EncodedSource",
    "digits_source",
    "load_source",
    "flat_arrays",
    "visible_cores",
    "random_flip",
    "to_float",
    "resize_shorter",
    "random_scale_crop",
    "random_resized_crop",
    "center_crop",
    "pca_lighting",
    "Preprocess",
    "make_preprocess",
    "ImageLoader",
    "ImageIterator",
    "dataset_info",
    "image_loaders",
]

IMAGENET32_MEAN: tuple[float, float, float] = (0.481098, 0.45747134, 0.40785483)
"""Per-channel mean (RGB, pixels in [0, 1]) subtracted by the released ImageNet32 code."""
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""The usual ImageNet per-channel RGB mean (pixels in [0, 1])."""
PCA_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float32)
"""Eigenvalues of the ImageNet RGB pixel covariance (pixels in [0, 1]) for AlexNet-style lighting noise."""
PCA_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]], np.float32)
"""Matching eigenvectors (columns)."""

DATASETS: dict[str, dict[str, Any]] = {
    "digits": {"kind": "digits", "num_classes": 10, "train": "train", "eval": "test"},
    "imagenet_resized/32x32": {"kind": "imagenet32", "num_classes": 1000, "train": "train", "eval": "validation"},
    "imagenet2012": {"kind": "imagenet", "num_classes": 1000, "train": "train", "eval": "validation"},
}
"""Datasets the image experiments know: preprocessing kind, number of classes, split names."""

_INCEPTION_TRIES = 10
_ENDLESS = 2**62  # number of batch positions of an endless iterator


def _grain():
    """The grain module, or a clear ImportError."""
    if grain is None:  # pragma: no cover - grain comes with the `data` extra
        return require("grain", "data", "the image pipeline (gmpjax.data.images)")
    return grain


def visible_cores() -> int:
    """Number of CPU cores this process may run on (``os.sched_getaffinity``; ``os.cpu_count`` elsewhere)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


class Source(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> Mapping[str, Any]: ...


class ArraySource:
    """In-memory random-access source: ``src[i] = {"image": uint8 (H, W, C), "label": int}``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim != 4 or images.dtype != np.uint8:
            raise TypeError(f"images must be a uint8 array (N, H, W, C), got {images.dtype} {images.shape}.")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {labels.shape}.")
        self.images, self.labels = images, labels.astype(np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "label": self.labels[i]}

    def __getitems__(self, idx: Sequence[int]) -> list[dict[str, Any]]:
        rows = np.asarray(idx)
        return [{"image": im, "label": lb} for im, lb in zip(self.images[rows], self.labels[rows], strict=True)]


class EncodedSource:
    """In-memory random-access source of encoded images (JPEG/PNG bytes), the layout of tfds records read
    with ``SkipDecoding``: ``src[i] = {"image": bytes, "label": int}``. The pipeline decodes them in its
    workers (JPEG at a reduced scale where the crop allows)."""

    def __init__(self, images: Sequence[bytes], labels: Sequence[int] | np.ndarray):
        encoded, lab = list(images), np.asarray(labels)
        if not all(isinstance(b, bytes) for b in encoded):
            raise TypeError("images must be a sequence of encoded image bytes (e.g. JPEG files' contents).")
        if lab.shape != (len(encoded),):
            raise ValueError(f"labels must have shape ({len(encoded)},), got {lab.shape}.")
        self.images, self.labels = encoded, lab.astype(np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "label": self.labels[i]}


def _digits_split(target: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row indices of digits: a stratified split (by ``target``) keeping ``test_fraction``."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(target))
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=target)
    return tr, te


def digits_source(split: str, image_size: int = 32, *, test_fraction: float = 0.2, seed: int = 0) -> ArraySource:
    """sklearn's 8x8 digits as RGB uint8 images of ``image_size`` x ``image_size``.

    Each 8x8 image (values 0..16) is scaled to 0..255, upsampled by the integer
    factor ``image_size // 8`` (nearest neighbour), zero-padded to ``image_size``
    (centred) and repeated over 3 channels. A fixed stratified split (seed
    ``seed``) keeps ``test_fraction`` of the 1797 images for ``split="test"``
    (alias ``"validation"``).
    """
    require("sklearn", "data", "digits_source")
    from sklearn.datasets import load_digits

    if split not in ("train", "test", "validation"):
        raise ValueError(f"digits has splits 'train' and 'test' (alias 'validation'); got split={split!r}.")
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8 for digits (got {image_size!r}).")
    d = load_digits()
    imgs = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)
    tr, te = _digits_split(d.target, test_fraction, seed)
    idx = tr if split == "train" else te
    f = image_size // 8
    up = imgs[idx].repeat(f, axis=1).repeat(f, axis=2)
    pad = image_size - 8 * f
    up = np.pad(up, ((0, 0), (pad // 2, pad - pad // 2), (pad // 2, pad - pad // 2)))
    return ArraySource(np.repeat(up[..., None], 3, axis=-1), d.target[idx])


def load_source(dataset: str, split: str, *, image_size: int = 32, data_dir: str | None = None) -> Source:
    """Random-access source of ``dataset``/``split``.

    Args:
      dataset: ``"digits"`` (embedded) or a tfds name such as ``"imagenet_resized/32x32"`` or
        ``"imagenet2012"``, prepared in ArrayRecord format. For ``imagenet2012`` the records
        keep their JPEG bytes (``tfds.decode.SkipDecoding``) when the source allows it, so the
        pipeline can decode them at a reduced scale.
      split: split name (``"train"``, ``"validation"``, ...).
      image_size: output size of ``digits`` (ignored for tfds datasets).
      data_dir: tfds data directory (default: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).

    Raises:
      DataError: the tfds dataset is not prepared there (the message says how to prepare it).
    """
    if dataset == "digits":
        return digits_source(split, image_size)
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - tfds is a test dependency
        raise DataError(
            f"dataset={dataset!r} needs tensorflow-datasets (pip install 'gmpjax[data]'), or use --dataset digits."
        ) from e
    try:
        src = tfds.data_source(dataset, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises NotImplementedError/AssertionError/ValueError for missing data
        where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
        manual = (
            " ImageNet needs the ILSVRC2012 tar files in <data_dir>/downloads/manual first."
            if dataset.startswith("imagenet2012")
            else ""
        )
        raise DataError(
            f"tfds dataset {dataset!r} (split {split!r}) is not available in ArrayRecord format under "
            f"{where} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Prepare it with "
            f"`tfds build {dataset} --file_format=array_record --data_dir=DIR` and pass --tfds-data-dir DIR "
            f"(or set TFDS_DATA_DIR).{manual} Without the data, run with --dataset digits."
        ) from e
    if dataset.startswith("imagenet2012"):
        try:  # JPEG bytes instead of decoded arrays (not possible with every source, e.g. tfds mock data)
            raw = tfds.data_source(
                dataset, split=split, data_dir=data_dir, download=False, decoders={"image": tfds.decode.SkipDecoding()}
            )
            if isinstance(raw[0]["image"], bytes):
                return raw
        except Exception:  # noqa: BLE001 - fall back to the decoded source
            pass
    return src


def flat_arrays(
    dataset: str, *, seed: int = 0, data_dir: str | None = None, max_train: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A whole image-classification dataset as standardised flat feature vectors, for MLPs.

    ``digits``: the 64 raw pixel values (0..16) of sklearn's 8x8 digits, split 80/20 stratified
    (``random_state=seed``, the split of ``digits_source``: 1437 train / 360 test). Any other name:
    the tfds dataset's ``train`` and ``test`` splits read through ``load_source`` (prepared in
    ArrayRecord format under ``data_dir``), each image flattened to ``H * W * C`` values ``x / 255``.
    The training set is cut to its first ``max_train`` examples; then every feature is standardised
    with the training mean and standard deviation, ``(x - mean) / (sd + 1e-6)``.

    Args:
      dataset: ``"digits"`` or a tfds image dataset with ``train``/``test`` splits, e.g. ``"cifar10"``.
      seed: seed of the digits split (unused for tfds datasets).
      data_dir: tfds data directory (``load_source``).
      max_train: keep only the first ``max_train`` training examples (None: all).

    Returns:
      ``(x_train, y_train, x_test, y_test)``: float32 ``(N, D)``, int32 ``(N,)``, float32 ``(M, D)``, int32 ``(M,)``.

    Raises:
      DataError: a tfds dataset is not prepared (the message says how).
      ValueError: ``max_train`` is neither None nor a positive int.

    >>> xtr, ytr, xte, yte = flat_arrays("digits", seed=0)
    >>> xtr.shape, ytr.shape, xte.shape, yte.shape, xtr.dtype.name, ytr.dtype.name
    ((1437, 64), (1437,), (360, 64), (360,), 'float32', 'int32')
    """
    keep = None if max_train is None else _check_int("max_train", max_train, 1)  # None: all examples
    xtr, ytr, xte, yte = _digits_flat(seed) if dataset == "digits" else _tfds_flat(dataset, data_dir)
    xtr, ytr = xtr[:keep], ytr[:keep]
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    return (
        ((xtr - mu) / sd).astype(np.float32),
        ytr.astype(np.int32),
        ((xte - mu) / sd).astype(np.float32),
        yte.astype(np.int32),
    )


def _digits_flat(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    require("sklearn", "data", "flat_arrays")
    from sklearn.datasets import load_digits

    d = load_digits()
    tr, te = _digits_split(d.target, 0.2, seed)
    x = d.data.astype(np.float32)
    return x[tr], d.target[tr], x[te], d.target[te]


def _tfds_flat(dataset: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    def arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
        src = load_source(dataset, split, data_dir=data_dir)
        items = [src[i] for i in range(len(src))]
        x = np.stack([np.asarray(it["image"], np.float32).reshape(-1) / 255.0 for it in items])
        return x, np.asarray([int(it["label"]) for it in items])

    return (*arrays("train"), *arrays("test"))


# ----------------------------------------------------------------------------------------------
# Per-example transforms (numpy / Pillow, HWC uint8).


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Horizontal flip (reverse the width axis of an HWC image) with probability 1/2."""
    return image[:, ::-1] if rng.random() < 0.5 else image


def to_float(image: np.ndarray, mean: Sequence[float]) -> np.ndarray:
    """``image / 255 - mean`` as float32 (uint8 HWC in, mean per channel)."""
    return image.astype(np.float32) * np.float32(1.0 / 255.0) - np.asarray(mean, np.float32)


def _size_of(image: Any) -> tuple[int, int]:
    """``(height, width)`` of a decoded HWC array or of encoded image bytes (header only)."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        require("PIL", "data", "the image pipeline's crops")
        from PIL import Image

        w, h = Image.open(io.BytesIO(image)).size
        return h, w
    return int(image.shape[0]), int(image.shape[1])


def _resize_box(image: Any, box: tuple[float, float, float, float], height: int, width: int) -> np.ndarray:
    """Bilinear resize of the source region ``box = (left, top, right, bottom)`` to ``height`` x ``width``.

    Only that region is resampled (Pillow ``resize(box=...)``), on the same grid
    as resizing the whole image by ``width / (right - left)``, ``height / (bottom - top)``
    and cropping. Encoded bytes are decoded first, in JPEG draft mode (DCT
    scaling by 1/2, 1/4 or 1/8) when the region shrinks by at least that factor.
    """
    require("PIL", "data", "the image pipeline's crops")
    from PIL import Image

    bilinear = Image.Resampling.BILINEAR
    if isinstance(image, (bytes, bytearray, memoryview)):
        encoded = Image.open(io.BytesIO(image))
        w0, h0 = encoded.size
        shrink = min((box[2] - box[0]) / width, (box[3] - box[1]) / height)
        if encoded.format == "JPEG" and shrink >= 2:
            encoded.draft("RGB", (math.ceil(w0 / shrink), math.ceil(h0 / shrink)))
        pil = encoded.convert("RGB")
        if pil.size != (w0, h0):  # draft mode reduced the image: scale the box with it
            sx, sy = pil.size[0] / w0, pil.size[1] / h0
            box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
        return np.asarray(pil.resize((width, height), bilinear, box=box))
    arr = np.asarray(image)
    h0, w0 = arr.shape[:2]
    if box == (0, 0, w0, h0) and (h0, w0) == (height, width):
        return arr
    squeeze = arr.ndim == 3 and arr.shape[2] == 1
    out = np.asarray(Image.fromarray(arr[..., 0] if squeeze else arr).resize((width, height), bilinear, box=box))
    return out[..., None] if squeeze else out


def _shorter_side_dims(h: int, w: int, size: int) -> tuple[int, int]:
    s = size / min(h, w)
    return max(size, round(h * s)), max(size, round(w * s))


def _scaled_crop(image: Any, shorter: int, size: int, u_top: float, u_left: float) -> np.ndarray:
    """The ``size`` crop at fractional offsets ``u`` in [0, 1) of ``image`` resized to shorter side ``shorter``."""
    h, w = _size_of(image)
    rh, rw = _shorter_side_dims(h, w, shorter)
    top, left = int(u_top * (rh - size + 1)), int(u_left * (rw - size + 1))
    sy, sx = h / rh, w / rw
    return _resize_box(image, (left * sx, top * sy, (left + size) * sx, (top + size) * sy), size, size)


def resize_shorter(image: np.ndarray, size: int) -> np.ndarray:
    """Resize (bilinear) so the shorter side is ``size``, keeping the aspect ratio."""
    h, w = _size_of(image)
    rh, rw = _shorter_side_dims(h, w, size)
    return _resize_box(image, (0, 0, w, h), rh, rw)


def random_scale_crop(
    image: np.ndarray, rng: np.random.Generator, size: int = 224, scale: tuple[int, int] = (256, 480)
) -> np.ndarray:
    """Scale augmentation of ResNet (He et al.): shorter side to ``L ~ U[scale)``, random ``size`` crop.

    Only the crop's region of the source is resized (same pixels as resizing the whole image first).
    """
    shorter = int(rng.integers(scale[0], scale[1]))
    return _scaled_crop(image, shorter, size, float(rng.random()), float(rng.random()))


def _inception_box(
    h: int, w: int, area_frac: np.ndarray, log_ratio: np.ndarray, u_top: np.ndarray, u_left: np.ndarray
) -> tuple[int, int, int, int] | None:
    """First valid ``(top, left, ch, cw)`` of the candidate boxes (arrays of tries), or None."""
    a = h * w * area_frac
    r = np.exp(log_ratio)
    cw, ch = np.rint(np.sqrt(a * r)).astype(int), np.rint(np.sqrt(a / r)).astype(int)
    ok = np.flatnonzero((cw > 0) & (cw <= w) & (ch > 0) & (ch <= h))
    if not ok.size:
        return None
    j = ok[0]
    return int(u_top[j] * (h - ch[j] + 1)), int(u_left[j] * (w - cw[j] + 1)), int(ch[j]), int(cw[j])


def _inception_crop(image: Any, size: int, area_frac, log_ratio, u_top, u_left) -> np.ndarray:
    h, w = _size_of(image)
    box = _inception_box(h, w, np.asarray(area_frac), np.asarray(log_ratio), np.asarray(u_top), np.asarray(u_left))
    if box is None:
        return center_crop(image, size, resize=size)
    top, left, ch, cw = box
    return _resize_box(image, (left, top, left + cw, top + ch), size, size)


def random_resized_crop(
    image: np.ndarray,
    rng: np.random.Generator,
    size: int = 224,
    area: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> np.ndarray:
    """Inception-style crop: a random box of ``area`` fraction and aspect ``ratio``, resized to ``size``.

    Up to 10 candidate boxes; the first that fits is used, else the centre crop.
    """
    n = _INCEPTION_TRIES
    return _inception_crop(
        image,
        size,
        rng.uniform(*area, n),
        rng.uniform(math.log(ratio[0]), math.log(ratio[1]), n),
        rng.random(n),
        rng.random(n),
    )


def center_crop(image: np.ndarray, size: int = 224, resize: int = 256) -> np.ndarray:
    """Evaluation crop: shorter side to ``resize``, then the central ``size`` x ``size`` crop."""
    h, w = _size_of(image)
    rh, rw = _shorter_side_dims(h, w, resize)
    top, left = (rh - size) // 2, (rw - size) // 2
    sy, sx = h / rh, w / rw
    return _resize_box(image, (left * sx, top * sy, (left + size) * sx, (top + size) * sy), size, size)


def _lighting_offset(alpha, xp=np):
    """RGB offsets ``PCA_EIGVEC @ (alpha * PCA_EIGVAL)`` for ``alpha`` of shape ``(..., 3)``."""
    return (alpha * xp.asarray(PCA_EIGVAL)) @ xp.asarray(PCA_EIGVEC).T


def pca_lighting(image01: np.ndarray, rng: np.random.Generator, std: float = 0.1) -> np.ndarray:
    """AlexNet colour augmentation: add ``PCA_EIGVEC @ (alpha * PCA_EIGVAL)``, ``alpha ~ N(0, std^2)``, clip to [0, 1].

    ``image01``: float HWC RGB in [0, 1].
    """
    alpha = rng.normal(0.0, std, 3).astype(np.float32)
    return np.clip(image01 + _lighting_offset(alpha), 0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Preprocessing: vectorised random draws, per-example uint8 work, per-batch float finish.


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """The preprocessing of one kind of data, split where it runs.

    * ``draw(rng, n)``: the random parameters of ``n`` examples at once (flip bits,
      crop boxes as uniforms, lighting ``alpha``), ``dict`` of arrays with leading axis ``n``;
    * ``example(image, params)``: crop / resize / flip one image (uint8 HWC, or encoded bytes
      for ``imagenet``) with its row of parameters -> uint8 ``(size, size, C)``;
    * ``finish(batch, xp=np)``: float32 ``image / 255`` (+ lighting ``PCA_EIGVEC @ (alpha *
      PCA_EIGVAL)``, clipped to [0, 1]) ``- mean`` of a whole batch; ``xp=jax.numpy`` runs it
      inside a jitted step on the device.

    ``pre(image, rng)`` applies all three to one image (float32 result). Build with ``make_preprocess``.
    """

    kind: str
    train: bool
    mean: tuple[float, ...]
    image_size: int | None = None
    crop: str = "scale"
    scale: tuple[int, int] = (256, 480)
    eval_resize: int = 256
    lighting_std: float = 0.1

    @property
    def flips(self) -> bool:
        return self.train and self.kind in ("imagenet32", "imagenet")

    @property
    def lighting(self) -> bool:
        return self.train and self.kind == "imagenet" and self.lighting_std > 0

    def draw(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        """Random parameters of ``n`` examples (an empty dict for deterministic preprocessing)."""
        out: dict[str, np.ndarray] = {}
        if self.flips:
            out["flip"] = rng.random(n) < 0.5
        if self.kind == "imagenet" and self.train:
            if self.crop == "scale":
                out["shorter"] = rng.integers(self.scale[0], self.scale[1], n)
                out["u_crop"] = rng.random((n, 2))
            else:
                t = _INCEPTION_TRIES
                out["area"] = rng.uniform(0.08, 1.0, (n, t))
                out["log_ratio"] = rng.uniform(math.log(3 / 4), math.log(4 / 3), (n, t))
                out["u_crop"] = rng.random((n, 2, t))
        if self.lighting:
            out["alpha"] = rng.normal(0.0, self.lighting_std, (n, 3)).astype(np.float32)
        return out

    def example(self, image: Any, params: Mapping[str, Any]) -> np.ndarray:
        """uint8 crop / resize / flip of one image with its parameters (a row of ``draw``)."""
        if self.kind == "imagenet":
            size = self.image_size or 224
            if not self.train:
                img = center_crop(image, size, self.eval_resize)
            elif self.crop == "scale":
                u = params["u_crop"]
                img = _scaled_crop(image, int(params["shorter"]), size, float(u[0]), float(u[1]))
            else:
                u = params["u_crop"]
                img = _inception_crop(image, size, params["area"], params["log_ratio"], u[0], u[1])
        else:
            img = np.asarray(image)
        if self.flips and params["flip"]:
            img = img[:, ::-1]
        return img

    def batch(self, images: Sequence[Any], params: Mapping[str, np.ndarray]) -> np.ndarray:
        """``example`` over a batch -> uint8 ``(n, H, W, C)`` (fixed-size images are flipped vectorised)."""
        if self.kind != "imagenet":
            out = images.copy() if isinstance(images, np.ndarray) else np.stack([np.asarray(im) for im in images])
            if self.flips:
                f = np.asarray(params["flip"], bool)
                out[f] = out[f, :, ::-1]
            return out
        return np.stack([self.example(im, {k: v[j] for k, v in params.items()}) for j, im in enumerate(images)])

    def finish(self, batch: Mapping[str, Any] | Any, alpha: Any = None, xp: Any = np) -> Any:
        """float32 images of a batch: ``batch["image"] / 255`` (+ lighting from ``batch["alpha"]``) ``- mean``.

        ``batch``: a batch dict (or the uint8 images, then ``alpha`` separately); ``xp``: numpy or jax.numpy.
        """
        image = batch["image"] if isinstance(batch, Mapping) else batch
        if isinstance(batch, Mapping) and alpha is None:
            alpha = batch.get("alpha")
        x = image.astype(xp.float32) * xp.float32(1.0 / 255.0)
        if self.lighting and alpha is not None:
            x = xp.clip(x + _lighting_offset(alpha, xp)[:, None, None, :], 0.0, 1.0)
        return x - xp.asarray(self.mean, xp.float32)

    def __call__(self, image: Any, rng: np.random.Generator) -> np.ndarray:
        params = {k: v[0] for k, v in self.draw(rng, 1).items()}
        img = self.example(image, params)[None]
        alpha = params["alpha"][None] if "alpha" in params else None
        return self.finish(img, alpha)[0]


def make_preprocess(
    kind: str, *, train: bool, image_size: int | None = None, mean: Sequence[float] | None = None, crop: str = "scale"
) -> Preprocess:
    """The ``Preprocess`` of ``kind``; calling it maps ``(uint8 image HWC, np.random.Generator) -> float32``.

    Args:
      kind: ``"imagenet32"``, ``"imagenet"`` or ``"digits"`` (see module docstring).
      train: training (augmented) or evaluation transform.
      image_size: output size of ``"imagenet"`` (default 224; the resize ranges scale with it).
      mean: per-channel mean to subtract (defaults: ``IMAGENET32_MEAN``, ``IMAGENET_MEAN``, and
        the digits training mean).
      crop: ``"scale"`` (paper: shorter side U[256, 480] + random crop) or ``"inception"``.
    """
    if kind == "imagenet32":
        return Preprocess("imagenet32", train, tuple(IMAGENET32_MEAN if mean is None else mean))
    if kind == "digits":
        if mean is None:
            d = digits_source("train", 8)
            mean = (float(d.images.mean()) / 255.0,) * 3
        return Preprocess("digits", train, tuple(mean))
    if kind == "imagenet":
        if crop not in ("scale", "inception"):
            raise ValueError(f"crop must be 'scale' (paper) or 'inception' (got {crop!r}).")
        size = 224 if image_size is None else image_size
        lo, hi = round(256 * size / 224), round(480 * size / 224)
        return Preprocess(
            "imagenet",
            train,
            tuple(IMAGENET_MEAN if mean is None else mean),
            image_size=size,
            crop=crop,
            scale=(lo, hi),
            eval_resize=lo,
        )
    raise ValueError(f"unknown preprocessing kind {kind!r}; use 'imagenet32', 'imagenet' or 'digits'.")


# ----------------------------------------------------------------------------------------------
# grain transforms (top-level classes: they are pickled to the worker processes).


def _read(source: Source, idx: np.ndarray) -> list[Mapping[str, Any]]:
    getitems = getattr(source, "__getitems__", None)
    if getitems is not None:  # one batched read (ArrayRecord sources)
        try:
            return list(getitems([int(i) for i in idx]))
        except TypeError:  # e.g. tfds mock sources, whose batched read has another signature
            pass
    return [source[int(i)] for i in idx]


@dataclasses.dataclass(frozen=True)
class _EvalBatch:
    """grain ``map``: global eval batch ``k`` -> example indices (padded with example 0) and mask."""

    num_examples: int
    batch_size: int
    steps_per_epoch: int

    def __call__(self, k: int) -> dict[str, np.ndarray]:
        pos = (int(k) % self.steps_per_epoch) * self.batch_size + np.arange(self.batch_size)
        mask = pos < self.num_examples
        return {"index": np.where(mask, pos, 0).astype(np.int64), "mask": mask.astype(np.float32)}


class _TrainBatch:
    """grain ``random_map``: global training batch ``k`` -> example indices and random parameters.

    Batch ``k = e * S + s`` holds rows ``[s*B, (s+1)*B)`` of epoch ``e``'s order: elements
    ``e*N + s*B + j`` of ``MapDataset.range(N).shuffle(seed)``, which grain reshuffles per
    epoch (seed ``seed + e``) one element at a time, without materialising a permutation;
    the parameters of all ``B`` examples come from grain's generator of element ``k``.
    """

    def __init__(self, preprocess: Preprocess, num_examples: int, batch_size: int, steps_per_epoch: int, seed: int):
        self.preprocess, self.num_examples, self.batch_size = preprocess, num_examples, batch_size
        self.steps_per_epoch, self.seed = steps_per_epoch, seed
        self.order = _grain().MapDataset.range(num_examples).shuffle(seed=seed)

    def rows(self, epoch: int, step: int) -> np.ndarray:
        """Example indices of global batch ``(epoch, step)``."""
        start = epoch * self.num_examples + step * self.batch_size
        return np.fromiter((self.order[i] for i in range(start, start + self.batch_size)), np.int64, self.batch_size)

    def __call__(self, k: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        idx = self.rows(*divmod(int(k), self.steps_per_epoch))
        return {
            "index": idx.astype(np.int64),
            "mask": np.ones(len(idx), np.float32),
            **self.preprocess.draw(rng, len(idx)),
        }


@dataclasses.dataclass(frozen=True)
class _LocalBatch:
    """grain ``map``: rows ``[lo, hi)`` of a global batch -> uint8 images, labels, mask, example ids."""

    source: Any
    preprocess: Preprocess
    lo: int
    hi: int

    def __call__(self, g: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = {k: np.asarray(v)[self.lo : self.hi] for k, v in g.items()}
        idx = rows.pop("index")
        params = {k: v for k, v in rows.items() if k != "mask"}
        if isinstance(self.source, ArraySource):  # one gather instead of per-example records
            images, labels = self.source.images[idx], self.source.labels[idx]
        else:
            records = _read(self.source, idx)
            images, labels = [r["image"] for r in records], [int(r["label"]) for r in records]
        out = {
            "image": self.preprocess.batch(images, params),
            "label": np.asarray(labels, np.int32),
            "mask": rows["mask"],
            "index": idx,
        }
        if "alpha" in params:
            out["alpha"] = params["alpha"]
        return out


# ----------------------------------------------------------------------------------------------
# Deterministic, resumable, per-host batching.


def _check_int(name: str, v: Any, lo: int) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
        raise ValueError(f"{name} must be an int >= {lo} (got {v!r}).")
    return int(v)


class ImageLoader:
    """Deterministic batches of a random-access source, addressed by ``(epoch, step)``, as a grain pipeline.

    Training (``train=True``): epoch ``e`` visits a permutation of the examples
    (grain's ``MapDataset.shuffle``, reseeded per epoch) in ``steps_per_epoch = N // B``
    full batches (the remainder is dropped). Evaluation: the examples in order,
    ``ceil(N / B)`` batches, the last one padded with example 0 and ``mask`` 0.

    Every batch is a dict of numpy arrays holding **this process's** rows
    ``[i*B/P, (i+1)*B/P)`` of the global batch: ``image`` uint8 ``(B/P, H, W, C)``
    (cropped, resized and flipped), ``label`` int32, ``mask`` float32 (1 for real
    examples), ``index`` int64 (example ids) and, with lighting noise, ``alpha``
    float32 ``(B/P, 3)``. ``preprocess.finish(batch)`` gives the float32 images.

    Args:
      source: random-access source (``load_source``); picklable to run with workers.
      global_batch_size: batch size over all processes and devices.
      preprocess: a ``Preprocess`` (``make_preprocess``).
      train: shuffle + drop remainder (True) or ordered + padded (False).
      seed: shuffling and augmentation seed, in [0, 2**32).
      process_index, process_count: this process and the number of processes
        (default ``jax.process_index()``, ``jax.process_count()``).
      workers: grain worker processes of ``iterate`` (0: in this process, in a
        background thread; default: the visible cores, ``visible_cores()``).
      steps_per_epoch: use only the first ``steps_per_epoch`` batches of every
        epoch (e.g. a capped evaluation); default all.
    """

    def __init__(
        self,
        source: Source,
        *,
        global_batch_size: int,
        preprocess: Preprocess,
        train: bool = True,
        seed: int = 0,
        process_index: int | None = None,
        process_count: int | None = None,
        workers: int | None = None,
        steps_per_epoch: int | None = None,
    ):
        if process_index is None or process_count is None:
            import jax

            process_index = jax.process_index() if process_index is None else process_index
            process_count = jax.process_count() if process_count is None else process_count
        if not isinstance(global_batch_size, int) or isinstance(global_batch_size, bool) or global_batch_size < 1:
            raise ValueError(f"global_batch_size must be a positive int (got {global_batch_size!r}).")
        if global_batch_size % process_count:
            raise ValueError(
                f"global_batch_size={global_batch_size} is not divisible by the number of processes "
                f"({process_count}); choose a batch size that is a multiple of {process_count}."
            )
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index must be in [0, {process_count}) (got {process_index}).")
        if not isinstance(preprocess, Preprocess):
            raise TypeError(f"preprocess must be a Preprocess from make_preprocess (got {type(preprocess).__name__}).")
        if not 0 <= int(seed) < 2**32:
            raise ValueError(f"seed must be in [0, 2**32) (got {seed}).")
        self.workers = visible_cores() if workers is None else _check_int("workers", workers, 0)
        self.source, self.preprocess, self.train, self.seed = source, preprocess, train, int(seed)
        self.global_batch_size = global_batch_size
        self.num_examples = len(source)
        if train and self.num_examples < global_batch_size:
            raise ValueError(
                f"global_batch_size={global_batch_size} exceeds the {self.num_examples} training examples; "
                "use a smaller --batch-size."
            )
        self.process_index, self.process_count = process_index, process_count
        self.local_batch_size = global_batch_size // process_count
        full = self.num_examples // global_batch_size if train else -(-self.num_examples // global_batch_size)
        self.steps_per_epoch = (
            full if steps_per_epoch is None else min(full, _check_int("steps_per_epoch", steps_per_epoch, 1))
        )
        self._global: Any = None

    def _global_batches(self):
        """grain MapDataset of global batches (example indices + random parameters), endless."""
        if self._global is None:
            _grain()
            n, b, s = self.num_examples, self.global_batch_size, self.steps_per_epoch
            steps = grain.MapDataset.range(_ENDLESS)
            if self.train:
                self._global = steps.random_map(_TrainBatch(self.preprocess, n, b, s, self.seed), seed=self.seed)
            else:
                self._global = steps.map(_EvalBatch(n, b, s))
        return self._global

    def dataset(self):
        """grain MapDataset whose element ``k`` is this process's part of batch ``divmod(k, steps_per_epoch)``."""
        lo = self.process_index * self.local_batch_size
        return self._global_batches().map(_LocalBatch(self.source, self.preprocess, lo, lo + self.local_batch_size))

    def _check_position(self, epoch: int, step: int) -> int:
        if not 0 <= step < self.steps_per_epoch:
            raise ValueError(f"step must be in [0, {self.steps_per_epoch}) (got {step}).")
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0 (got {epoch}).")
        return int(epoch) * self.steps_per_epoch + int(step)

    def indices(self, epoch: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        """``(example indices, mask)`` of this process's rows of batch ``(epoch, step)`` (no image is read)."""
        g = self._global_batches()[self._check_position(epoch, step)]
        lo = self.process_index * self.local_batch_size
        return g["index"][lo : lo + self.local_batch_size], g["mask"][lo : lo + self.local_batch_size]

    def get_batch(self, epoch: int, step: int) -> dict[str, np.ndarray]:
        """This process's part of global batch ``(epoch, step)`` (a pure function of its arguments)."""
        return self.dataset()[self._check_position(epoch, step)]

    def iterate(
        self,
        epoch: int = 0,
        step: int = 0,
        *,
        num_epochs: int | None = None,
        workers: int | None = None,
        put: Callable[[Any], Any] | None = None,
        prefetch: int = 2,
    ) -> ImageIterator:
        """Iterator over batches from position ``(epoch, step)``; endless unless ``num_epochs`` is given.

        ``workers`` overrides the loader's; ``put`` (e.g. ``shard_batch(., mesh)``) is applied
        ``prefetch`` batches ahead of consumption so host-to-device copies overlap compute.
        """
        it = ImageIterator(
            self,
            num_epochs=num_epochs,
            workers=self.workers if workers is None else workers,
            put=put,
            prefetch=prefetch,
        )
        it.set_state({"epoch": int(epoch), "step": int(step)})
        return it

    def signature(self) -> dict[str, int]:
        """What a saved iterator state must match to be restored into this loader."""
        return {
            "seed": self.seed,
            "global_batch_size": self.global_batch_size,
            "num_examples": self.num_examples,
            "steps_per_epoch": self.steps_per_epoch,
        }


class ImageIterator(_IteratorBase):
    """grain iterator over ``ImageLoader`` batches with a position-only, worker-count-free state.

    ``get_state()`` is ``{"epoch": e, "step": s, ...}`` of the next batch that
    ``__next__`` returns (batches held in the device prefetch queue are not
    counted), so it can be saved in the orbax checkpoint at any step and
    ``set_state`` resumes exactly there, with any number of workers. The
    worker processes start at the first ``__next__`` (or ``start_prefetch``)
    and are stopped by ``close`` (also at the end of the epochs): it shuts
    grain's workers down and unlinks the shared memory of the batches still in
    flight. Use it as a context manager, ``with loader.iterate() as it: ...``,
    to close it on every exit path; an iterator that is never closed leaves
    that cleanup to garbage collection, which may come too late at interpreter
    exit ("leaked shared_memory objects").
    """

    def __init__(
        self,
        loader: ImageLoader,
        *,
        num_epochs: int | None = None,
        workers: int = 0,
        put: Callable[[Any], Any] | None = None,
        prefetch: int = 2,
    ):
        super().__init__()
        if loader.steps_per_epoch == 0:
            raise ValueError("the loader has no batches (empty source).")
        self.loader, self.workers = loader, _check_int("workers", workers, 0)
        self.num_epochs = None if num_epochs is None else _check_int("num_epochs", num_epochs, 1)
        self.put, self.prefetch = put, _check_int("prefetch", prefetch, 1)
        self._pos = 0
        self._end: int | None = None
        self._inner: Any = None
        self._queue: collections.deque = collections.deque()
        self._inner_next = 0

    @property
    def position(self) -> dict[str, int]:
        e, s = divmod(self._pos, self.loader.steps_per_epoch)
        return {"epoch": e, "step": s}

    def get_state(self) -> dict[str, int]:
        return {**self.position, **self.loader.signature()}

    def set_state(self, state: Mapping[str, Any]) -> None:
        sig = self.loader.signature()
        bad = {k: (state[k], v) for k, v in sig.items() if k in state and int(state[k]) != v}
        if bad:
            raise ValueError(
                "data-iterator state does not match this loader (saved vs now: "
                + ", ".join(f"{k} {a} vs {b}" for k, (a, b) in bad.items())
                + "); resume with the same data set, batch size and seed."
            )
        pos = self.loader._check_position(int(state["epoch"]), int(state["step"]))
        self._stop()
        self._pos = self._inner_next = pos
        if self.num_epochs is not None:
            self._end = (int(state["epoch"]) + self.num_epochs) * self.loader.steps_per_epoch

    def start_prefetch(self) -> None:
        if self._inner is None:
            _grain()
            ds = self.loader.dataset()[self._inner_next :]
            if self._end is not None:
                ds = ds[: max(0, self._end - self._inner_next)]
            it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
            if self.workers:
                _parse_absl_flags()
                # every array goes through shared memory (grain's default), only small messages through the pipe
                it_ds = it_ds.mp_prefetch(
                    grain.MultiprocessingOptions(num_workers=self.workers, per_worker_buffer_size=2),
                    worker_init_fn=_exit_with_parent,
                )
            self._inner = iter(it_ds)

    def _fill(self) -> None:
        self.start_prefetch()
        ahead = self.prefetch if self.put is not None else 1
        while len(self._queue) < ahead and (self._end is None or self._inner_next < self._end):
            try:
                batch = next(self._inner)
            except StopIteration:
                break
            self._inner_next += 1
            if self.workers:  # out of grain's shared memory now (freed at once, not at interpreter exit)
                batch = {k: np.array(v) for k, v in batch.items()}
            self._queue.append(batch if self.put is None else self.put(batch))

    def __next__(self):
        if self._end is not None and self._pos >= self._end:
            self._stop()
            raise StopIteration
        self._fill()
        if not self._queue:
            self._stop()
            raise StopIteration
        self._pos += 1
        return self._queue.popleft()

    def _stop(self) -> None:
        self._queue.clear()
        if self._inner is not None:
            close = getattr(self._inner, "close", None)
            if close is not None:
                close()
            self._inner = None
        self._inner_next = self._pos

    def close(self) -> None:
        """Stop the worker processes and free their shared memory (idempotent; ``set_state`` restarts)."""
        self._stop()

    def __enter__(self) -> ImageIterator:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self):  # pragma: no cover - best effort
        try:
            self._stop()
        except Exception:  # noqa: BLE001
            pass


def _exit_with_parent(worker_index: int, worker_count: int) -> None:
    """grain worker init: end the worker when the training process dies (e.g. SIGKILL), instead of leaving it
    orphaned.

    A daemon thread polls the parent's pid twice a second and exits the worker once the parent is gone.
    (Linux's ``PR_SET_PDEATHSIG`` is not used: it fires when the *thread* that started the worker ends, and
    grain starts its workers from threads that end in ``close``; the workers were killed in the middle of
    their shutdown and the batches they had in flight stayed in shared memory.)
    """
    del worker_index, worker_count
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="gmpjax-exit-with-parent", daemon=True).start()


def _parse_absl_flags() -> None:
    """grain's multiprocessing reads absl flags; outside ``absl.app.run`` they must be parsed once."""
    require("absl", "data", "the image pipeline's worker processes")
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS(sys.argv[:1], known_only=True)


# ----------------------------------------------------------------------------------------------
# the loaders of one classification run


def dataset_info(dataset: str) -> dict[str, Any]:
    """Preprocessing kind, number of classes and split names of ``dataset``.

    A name of ``DATASETS``, else another tfds ImageNet variant: 1000 classes, ``train`` and
    ``validation``, the ``imagenet32`` preprocessing when the name has ``32x32`` in it.

    >>> dataset_info("digits")["num_classes"], dataset_info("imagenet_resized/64x64")["kind"]
    (10, 'imagenet')
    """
    if dataset in DATASETS:
        return dict(DATASETS[dataset])
    kind = "imagenet32" if "32x32" in dataset else "imagenet"
    return {"kind": kind, "num_classes": 1000, "train": "train", "eval": "validation"}


def image_loaders(
    dataset: str,
    *,
    image_size: int,
    global_batch_size: int,
    seed: int,
    workers: int | None = None,
    crop: str = "scale",
    data_dir: str | None = None,
    eval_steps: int | None = None,
) -> tuple[ImageLoader, ImageLoader]:
    """The training and evaluation ``ImageLoader`` of ``dataset`` with its preprocessing (``make_preprocess``).

    Args:
      dataset: a name of ``DATASETS`` or a prepared tfds image dataset (``load_source``).
      image_size: the model's input size in pixels.
      global_batch_size, seed, workers: as ``ImageLoader`` (``workers=None``: the visible cores).
      crop: the ImageNet training crop, ``"scale"`` or ``"inception"``.
      data_dir: the tfds data directory.
      eval_steps: evaluate on the first ``eval_steps`` batches only (None: the whole split).
    """
    info = dataset_info(dataset)
    workers = visible_cores() if workers is None else workers
    kw = {"global_batch_size": global_batch_size, "seed": seed, "workers": workers}
    loaders = []
    for train in (True, False):
        src = load_source(dataset, info["train" if train else "eval"], image_size=image_size, data_dir=data_dir)
        pre = make_preprocess(info["kind"], train=train, image_size=image_size, crop=crop if train else "scale")
        steps = None if train else eval_steps
        loaders.append(ImageLoader(src, train=train, preprocess=pre, steps_per_epoch=steps, **kw))
    return loaders[0], loaders[1]
