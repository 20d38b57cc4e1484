"""Image-classification input pipelines without TensorFlow.

Data comes from ``tfds.data_source`` (random access to prepared ArrayRecord
files; no ``tf.data``) or from the embedded ``digits`` default
(``sklearn.datasets.load_digits``, shipped with scikit-learn, upsampled and
padded to the model's input size) so every script runs anywhere. Augmentation
is numpy (+ Pillow for resizing), per example, with a random generator seeded
by ``(seed, epoch, position in the epoch)``: a batch depends only on its
``(epoch, step)`` position, not on the process layout or on what ran before,
so an iterator can be checkpointed as two integers and resumed exactly.

Multi-host: every process builds the same global batch of indices and keeps
its own contiguous slice ``[i*B/P, (i+1)*B/P)`` (``i = jax.process_index()``,
``P = jax.process_count()``), the layout ``jax.make_array_from_process_local_data``
expects along the batch axis.

Preprocessing (as the released code / the paper, see ``docs/imagenet.md``):

* ``imagenet32`` (``imagenet_resized/32x32``, VGG-6): ``x/255 - mean`` with the
  per-channel mean of the released code, random horizontal flip in training.
* ``imagenet`` (``imagenet2012``, ResNet-18): training = random resize of the
  shorter side to ``L ~ U[256, 480]`` (aspect ratio kept) + random 224 crop
  (``crop="scale"``, the paper), or an Inception-style random resized crop
  (``crop="inception"``), random horizontal flip, AlexNet PCA colour noise;
  evaluation = shorter side 256 + single centre crop 224; then ``x/255 - mean``.
* ``digits``: ``x/255 - mean`` of the digits training split, no augmentation
  (flipping would change the digits' meaning).

>>> src = load_source("digits", "train", image_size=32)
>>> loader = ImageLoader(src, global_batch_size=8, preprocess=make_preprocess("digits", train=True))
>>> b = loader.get_batch(0, 0)
>>> b["image"].shape, b["image"].dtype.name, b["label"].dtype.name
((8, 32, 32, 3), 'float32', 'int32')
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import math
import os
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np

from gmpjax.data.paths import DataError

__all__ = [
    "IMAGENET32_MEAN", "IMAGENET_MEAN", "PCA_EIGVAL", "PCA_EIGVEC", "DATASETS",
    "ArraySource", "digits_source", "load_source",
    "random_flip", "to_float", "resize_shorter", "random_scale_crop", "random_resized_crop", "center_crop",
    "pca_lighting", "make_preprocess",
    "ImageLoader", "BatchIterator", "prefetch_to_device",
]

IMAGENET32_MEAN: tuple[float, float, float] = (0.481098, 0.45747134, 0.40785483)
"""Per-channel mean (RGB, pixels in [0, 1]) subtracted by the released ImageNet32 code."""
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""The usual ImageNet per-channel RGB mean (pixels in [0, 1])."""
PCA_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float32)
"""Eigenvalues of the ImageNet RGB pixel covariance (pixels in [0, 1]) for AlexNet-style lighting noise."""
PCA_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                       [-0.5808, -0.0045, -0.8140],
                       [-0.5836, -0.6948, 0.4203]], np.float32)
"""Matching eigenvectors (columns)."""

DATASETS: dict[str, dict[str, Any]] = {
    "digits": {"kind": "digits", "num_classes": 10, "train": "train", "eval": "test"},
    "imagenet_resized/32x32": {"kind": "imagenet32", "num_classes": 1000, "train": "train", "eval": "validation"},
    "imagenet2012": {"kind": "imagenet", "num_classes": 1000, "train": "train", "eval": "validation"},
}
"""Datasets the image experiments know: preprocessing kind, number of classes, split names."""


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


def digits_source(split: str, image_size: int = 32, *, test_fraction: float = 0.2, seed: int = 0) -> ArraySource:
    """sklearn's 8x8 digits as RGB uint8 images of ``image_size`` x ``image_size``.

    Each 8x8 image (values 0..16) is scaled to 0..255, upsampled by the integer
    factor ``image_size // 8`` (nearest neighbour), zero-padded to ``image_size``
    (centred) and repeated over 3 channels. A fixed stratified split (seed
    ``seed``) keeps ``test_fraction`` of the 1797 images for ``split="test"``
    (alias ``"validation"``).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test", "validation"):
        raise ValueError(f"digits has splits 'train' and 'test' (alias 'validation'); got split={split!r}.")
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8 for digits (got {image_size!r}).")
    d = load_digits()
    imgs = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)
    tr, te = train_test_split(np.arange(len(imgs)), test_size=test_fraction, random_state=seed, stratify=d.target)
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
        ``"imagenet2012"``, prepared in ArrayRecord format.
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
        return tfds.data_source(dataset, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises NotImplementedError/AssertionError/ValueError for missing data
        where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
        manual = (" ImageNet needs the ILSVRC2012 tar files in <data_dir>/downloads/manual first."
                  if dataset.startswith("imagenet2012") else "")
        raise DataError(
            f"tfds dataset {dataset!r} (split {split!r}) is not available in ArrayRecord format under "
            f"{where} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Prepare it with "
            f"`tfds build {dataset} --file_format=array_record --data_dir=DIR` and pass --tfds-data-dir DIR "
            f"(or set TFDS_DATA_DIR).{manual} Without the data, run with --dataset digits."
        ) from e


# ----------------------------------------------------------------------------------------------
# Pure per-example transforms (numpy, HWC).


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Horizontal flip (reverse the width axis of an HWC image) with probability 1/2."""
    return image[:, ::-1] if rng.random() < 0.5 else image


def to_float(image: np.ndarray, mean: Sequence[float]) -> np.ndarray:
    """``image / 255 - mean`` as float32 (uint8 HWC in, mean per channel)."""
    return image.astype(np.float32) * np.float32(1.0 / 255.0) - np.asarray(mean, np.float32)


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def resize_shorter(image: np.ndarray, size: int) -> np.ndarray:
    """Resize (bilinear) so the shorter side is ``size``, keeping the aspect ratio."""
    h, w = image.shape[:2]
    s = size / min(h, w)
    return _resize(image, max(size, round(h * s)), max(size, round(w * s)))


def _crop(image: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    return image[top:top + size, left:left + size]


def random_scale_crop(image: np.ndarray, rng: np.random.Generator, size: int = 224,
                      scale: tuple[int, int] = (256, 480)) -> np.ndarray:
    """Scale augmentation of ResNet (He et al.): shorter side to ``L ~ U[scale)``, random ``size`` crop."""
    img = resize_shorter(image, int(rng.integers(scale[0], scale[1])))
    h, w = img.shape[:2]
    return _crop(img, int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1)), size)


def random_resized_crop(image: np.ndarray, rng: np.random.Generator, size: int = 224,
                        area: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """Inception-style crop: a random box of ``area`` fraction and aspect ``ratio``, resized to ``size``."""
    h, w = image.shape[:2]
    for _ in range(10):
        a = h * w * rng.uniform(*area)
        r = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(a * r)), round(math.sqrt(a / r))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            return _resize(image[top:top + ch, left:left + cw], size, size)
    return center_crop(image, size, resize=size)


def center_crop(image: np.ndarray, size: int = 224, resize: int = 256) -> np.ndarray:
    """Evaluation crop: shorter side to ``resize``, then the central ``size`` x ``size`` crop."""
    img = resize_shorter(image, resize)
    h, w = img.shape[:2]
    return _crop(img, (h - size) // 2, (w - size) // 2, size)


def pca_lighting(image01: np.ndarray, rng: np.random.Generator, std: float = 0.1) -> np.ndarray:
    """AlexNet colour augmentation: add ``PCA_EIGVEC @ (alpha * PCA_EIGVAL)``, ``alpha ~ N(0, std^2)``, clip to [0, 1].

    ``image01``: float HWC RGB in [0, 1].
    """
    alpha = rng.normal(0.0, std, 3).astype(np.float32)
    return np.clip(image01 + PCA_EIGVEC @ (alpha * PCA_EIGVAL), 0.0, 1.0)


def make_preprocess(kind: str, *, train: bool, image_size: int | None = None,
                    mean: Sequence[float] | None = None, crop: str = "scale") -> Callable:
    """Per-example ``(uint8 image HWC, np.random.Generator) -> float32 image`` of ``kind``.

    Args:
      kind: ``"imagenet32"``, ``"imagenet"`` or ``"digits"`` (see module docstring).
      train: training (augmented) or evaluation transform.
      image_size: output size of ``"imagenet"`` (default 224; the resize ranges scale with it).
      mean: per-channel mean to subtract (defaults: ``IMAGENET32_MEAN``, ``IMAGENET_MEAN``, and
        the digits training mean).
      crop: ``"scale"`` (paper: shorter side U[256, 480] + random crop) or ``"inception"``.
    """
    if kind == "imagenet32":
        m = IMAGENET32_MEAN if mean is None else mean
        if train:
            return lambda img, rng: to_float(random_flip(img, rng), m)
        return lambda img, rng: to_float(img, m)
    if kind == "digits":
        if mean is None:
            d = digits_source("train", 8)
            mean = (float(d.images.mean()) / 255.0,) * 3
        return lambda img, rng: to_float(img, mean)
    if kind == "imagenet":
        size = 224 if image_size is None else image_size
        m = IMAGENET_MEAN if mean is None else mean
        lo, hi = round(256 * size / 224), round(480 * size / 224)
        if crop not in ("scale", "inception"):
            raise ValueError(f"crop must be 'scale' (paper) or 'inception' (got {crop!r}).")
        if train:
            def pre(img, rng):
                img = random_scale_crop(img, rng, size, (lo, hi)) if crop == "scale" else \
                    random_resized_crop(img, rng, size)
                img = random_flip(img, rng).astype(np.float32) / 255.0
                return pca_lighting(img, rng) - np.asarray(m, np.float32)
            return pre
        return lambda img, rng: to_float(center_crop(img, size, lo), m)
    raise ValueError(f"unknown preprocessing kind {kind!r}; use 'imagenet32', 'imagenet' or 'digits'.")


# ----------------------------------------------------------------------------------------------
# Deterministic, resumable, per-host batching.


class ImageLoader:
    """Deterministic batches of a random-access source, addressed by ``(epoch, step)``.

    Training (``train=True``): epoch ``e`` visits ``permutation(seed, e)`` of the
    examples in ``steps_per_epoch = N // B`` full batches (the remainder is
    dropped). Evaluation: the examples in order, ``ceil(N / B)`` batches, the
    last one padded with example 0 and ``mask`` 0.

    Every batch is a dict of numpy arrays holding **this process's** slice of the
    global batch: ``image`` float32 ``(B/P, H, W, C)``, ``label`` int32 ``(B/P,)``,
    ``mask`` float32 ``(B/P,)`` (1 for real examples).

    Args:
      source: random-access source (``load_source``).
      global_batch_size: batch size over all processes and devices.
      preprocess: ``(uint8 image, rng) -> float32 image`` (``make_preprocess``).
      train: shuffle + drop remainder (True) or ordered + padded (False).
      seed: shuffling and augmentation seed.
      process_index, process_count: this process and the number of processes
        (default ``jax.process_index()``, ``jax.process_count()``).
      num_threads: worker threads computing batches ahead.
    """

    def __init__(self, source: Source, *, global_batch_size: int, preprocess: Callable, train: bool = True,
                 seed: int = 0, process_index: int | None = None, process_count: int | None = None,
                 num_threads: int | None = None):
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
        self.num_threads = num_threads or min(8, os.cpu_count() or 1)
        if train:
            self.steps_per_epoch = self.num_examples // global_batch_size
        else:
            self.steps_per_epoch = -(-self.num_examples // global_batch_size)
        self._perm_cache: tuple[int, np.ndarray] | None = None

    def _order(self, epoch: int) -> np.ndarray:
        if not self.train:
            return np.arange(self.num_examples)
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
            self._perm_cache = (epoch, perm)
        return self._perm_cache[1]

    def indices(self, epoch: int, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(example indices, positions in the epoch, mask)`` of this process's slice of batch ``(epoch, step)``."""
        if not 0 <= step < self.steps_per_epoch:
            raise ValueError(f"step must be in [0, {self.steps_per_epoch}) (got {step}).")
        b = self.global_batch_size
        pos = step * b + self.process_index * self.local_batch_size + np.arange(self.local_batch_size)
        mask = (pos < self.num_examples).astype(np.float32)
        order = self._order(epoch)
        idx = np.where(mask > 0, order[np.minimum(pos, self.num_examples - 1)], order[0])
        return idx, pos, mask

    def get_batch(self, epoch: int, step: int) -> dict[str, np.ndarray]:
        """This process's part of global batch ``(epoch, step)`` (a pure function of its arguments)."""
        idx, pos, mask = self.indices(epoch, step)
        images, labels = [], []
        for i, p in zip(idx, pos):
            ex = self.source[int(i)]
            rng = np.random.default_rng([self.seed, epoch, int(p)])
            images.append(np.asarray(self.preprocess(np.asarray(ex["image"]), rng), np.float32))
            labels.append(int(ex["label"]))
        return {"image": np.stack(images), "label": np.asarray(labels, np.int32), "mask": mask}

    def iterate(self, epoch: int = 0, step: int = 0, *, num_epochs: int | None = None,
                prefetch: int | None = None) -> "BatchIterator":
        """Iterator over batches from position ``(epoch, step)``; endless unless ``num_epochs`` is given."""
        return BatchIterator(self, epoch, step, num_epochs=num_epochs, prefetch=prefetch)


class BatchIterator:
    """Iterator of ``ImageLoader`` batches computed ahead by a thread pool.

    ``position`` is the ``{"epoch": e, "step": s}`` of the next batch to be
    returned; ``loader.iterate(**position)`` resumes exactly there.
    """

    def __init__(self, loader: ImageLoader, epoch: int = 0, step: int = 0, *, num_epochs: int | None = None,
                 prefetch: int | None = None):
        if loader.steps_per_epoch == 0:
            raise ValueError("the loader has no batches (empty source).")
        self.loader = loader
        self.epoch, self.step = int(epoch), int(step)
        self.end_epoch = None if num_epochs is None else self.epoch + int(num_epochs)
        self._ahead = max(1, prefetch if prefetch is not None else 2 * loader.num_threads)
        self._pool = cf.ThreadPoolExecutor(max_workers=loader.num_threads)
        self._queue: collections.deque = collections.deque()
        self._next = (self.epoch, self.step)

    @property
    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "step": self.step}

    def _advance(self, pos: tuple[int, int]) -> tuple[int, int]:
        e, s = pos
        s += 1
        return (e + 1, 0) if s >= self.loader.steps_per_epoch else (e, s)

    def _fill(self) -> None:
        while len(self._queue) < self._ahead and (self.end_epoch is None or self._next[0] < self.end_epoch):
            self._queue.append(self._pool.submit(self.loader.get_batch, *self._next))
            self._next = self._advance(self._next)

    def __iter__(self) -> "BatchIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        self._fill()
        if not self._queue:
            self.close()
            raise StopIteration
        batch = self._queue.popleft().result()
        self.epoch, self.step = self._advance((self.epoch, self.step))
        return batch

    def close(self) -> None:
        for f in self._queue:
            f.cancel()
        self._queue.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __del__(self):  # pragma: no cover - best effort
        try:
            self._pool.shutdown(wait=False, cancel_futures=True)
        except Exception:
            pass


def prefetch_to_device(iterator: Iterator[Any], size: int = 2, put: Callable[[Any], Any] | None = None) -> Iterator[Any]:
    """Keep ``size`` batches transferred ahead: ``put(batch)`` (e.g. ``shard_batch(., mesh)``) is
    called ``size`` batches before the batch is consumed, so host-to-device copies overlap compute.

    >>> list(prefetch_to_device(iter([1, 2, 3]), 2, put=lambda b: b * 10))
    [10, 20, 30]
    """
    if put is None:
        import jax

        put = jax.device_put
    queue: collections.deque = collections.deque()
    it = iter(iterator)
    for item in it:
        queue.append(put(item))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()
