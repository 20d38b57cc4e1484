"""Image pipelines: tfds mock data (no TensorFlow), the embedded digits default, augmentation ranges,
determinism, per-host sharding, resumable iteration and clear errors."""

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from gmpjax.data import DataError  # noqa: E402
from gmpjax.data import images as im  # noqa: E402


@pytest.fixture(scope="module")
def mock32():
    with tfds.testing.mock_data(num_examples=24):
        return im.load_source("imagenet_resized/32x32", "train")


@pytest.fixture(scope="module")
def mock_imagenet():
    with tfds.testing.mock_data(num_examples=10):  # random image sizes, like the real data
        return im.load_source("imagenet2012", "validation")


def test_imagenet32_train_pipeline(mock32):
    pre = im.make_preprocess("imagenet32", train=True)
    loader = im.ImageLoader(mock32, global_batch_size=8, preprocess=pre, train=True, seed=1,
                            process_index=0, process_count=1)
    assert loader.steps_per_epoch == 3
    b = loader.get_batch(0, 1)
    assert b["image"].shape == (8, 32, 32, 3) and b["image"].dtype == np.float32
    assert b["label"].dtype == np.int32 and b["label"].shape == (8,)
    assert np.all((b["label"] >= 0) & (b["label"] < 1000))
    mean = np.asarray(im.IMAGENET32_MEAN, np.float32)
    assert np.all(b["image"] >= -mean - 1e-6) and np.all(b["image"] <= 1 - mean + 1e-6)
    # each training image is the raw image / 255 - mean, possibly flipped left-right
    idx, _, _ = loader.indices(0, 1)
    flips = []
    for img, i in zip(b["image"], idx):
        raw = np.asarray(mock32[int(i)]["image"], np.float32) / 255 - mean
        same, flipped = np.allclose(img, raw, atol=1e-6), np.allclose(img, raw[:, ::-1], atol=1e-6)
        assert same or flipped
        flips.append(flipped and not same)
    assert 0 < sum(flips) < 8  # both cases occur (fixed seed)


def test_imagenet32_eval_is_ordered_padded_and_unaugmented(mock32):
    loader = im.ImageLoader(mock32, global_batch_size=10, train=False, process_index=0, process_count=1,
                            preprocess=im.make_preprocess("imagenet32", train=False))
    assert loader.steps_per_epoch == 3
    batches = list(loader.iterate(num_epochs=1))
    assert len(batches) == 3
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == 24 and np.all(mask[:24] == 1) and np.all(mask[24:] == 0)
    labels = np.concatenate([b["label"] for b in batches])[:24]
    assert np.array_equal(labels, [int(mock32[i]["label"]) for i in range(24)])
    raw0 = np.asarray(mock32[0]["image"], np.float32) / 255 - np.asarray(im.IMAGENET32_MEAN, np.float32)
    np.testing.assert_allclose(batches[0]["image"][0], raw0, atol=1e-6)


def test_imagenet2012_pipeline_shapes_and_ranges(mock_imagenet):
    size = 48  # the resize ranges scale with the crop size; 224 in the paper
    mean = np.asarray(im.IMAGENET_MEAN, np.float32)
    for train in (True, False):
        pre = im.make_preprocess("imagenet", train=train, image_size=size)
        loader = im.ImageLoader(mock_imagenet, global_batch_size=5, preprocess=pre, train=train,
                                process_index=0, process_count=1)
        b = loader.get_batch(0, 0)
        assert b["image"].shape == (5, size, size, 3) and b["image"].dtype == np.float32
        assert np.all(b["image"] >= -mean - 1e-5) and np.all(b["image"] <= 1 - mean + 1e-5)


def test_crops_and_colour_noise():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)
    assert im.resize_shorter(img, 256).shape == (256, 427, 3)
    assert im.center_crop(img, 224, 256).shape == (224, 224, 3)
    for _ in range(3):
        assert im.random_scale_crop(img, rng, 224, (256, 480)).shape == (224, 224, 3)
        assert im.random_resized_crop(img, rng, 64).shape == (64, 64, 3)
    x = img.astype(np.float32) / 255
    y = im.pca_lighting(x, rng, std=0.1)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    # lighting noise shifts every pixel by the same RGB offset (before clipping)
    inner = (x > 0.2) & (x < 0.8) & (y > 0) & (y < 1)
    d = (y - x)[inner.all(-1)]
    np.testing.assert_allclose(d, np.broadcast_to(d[0], d.shape), atol=1e-5)
    with pytest.raises(ValueError, match="crop"):
        im.make_preprocess("imagenet", train=True, crop="bogus")
    with pytest.raises(ValueError, match="kind"):
        im.make_preprocess("cifar", train=True)


def test_batches_are_deterministic_and_split_over_processes(mock32):
    pre = im.make_preprocess("imagenet32", train=True)
    one = im.ImageLoader(mock32, global_batch_size=8, preprocess=pre, seed=1, process_index=0, process_count=1)
    parts = [im.ImageLoader(mock32, global_batch_size=8, preprocess=pre, seed=1, process_index=i, process_count=2)
             for i in range(2)]
    full = one.get_batch(2, 1)
    np.testing.assert_array_equal(full["image"], one.get_batch(2, 1)["image"])
    halves = [p.get_batch(2, 1) for p in parts]
    for k in ("image", "label"):  # process i holds rows [4i, 4i+4) of the global batch, augmentation included
        np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), full[k])
    # an epoch is a permutation; epochs differ
    seen = np.concatenate([one.indices(0, s)[0] for s in range(one.steps_per_epoch)])
    assert len(set(seen.tolist())) == len(seen) == 24
    assert not np.array_equal(one.indices(0, 0)[0], one.indices(1, 0)[0])


def test_iterator_position_resumes_exactly(mock32):
    loader = im.ImageLoader(mock32, global_batch_size=8, preprocess=im.make_preprocess("imagenet32", train=True),
                            process_index=0, process_count=1, num_threads=2)
    it = loader.iterate()
    for _ in range(4):  # crosses the epoch boundary (3 steps per epoch)
        next(it)
    assert it.position == {"epoch": 1, "step": 1}
    expected = next(it)
    it.close()
    resumed = loader.iterate(**{"epoch": 1, "step": 1})
    np.testing.assert_array_equal(next(resumed)["image"], expected["image"])
    resumed.close()


def test_prefetch_to_device_keeps_order():
    import jax

    out = list(im.prefetch_to_device(iter([np.full(2, i) for i in range(5)]), 2))
    assert [int(o[0]) for o in out] == list(range(5)) and isinstance(out[0], jax.Array)


def test_digits_default():
    tr, te = im.digits_source("train", 32), im.digits_source("test", 32)
    assert len(tr) + len(te) == 1797 and len(te) == 360
    ex = tr[0]
    assert ex["image"].shape == (32, 32, 3) and ex["image"].dtype == np.uint8
    assert np.array_equal(ex["image"][..., 0], ex["image"][..., 2])
    from sklearn.datasets import load_digits

    # upsampled by 4: every 4x4 block is constant and equals the 8x8 digit scaled to 0..255
    blocks = ex["image"][..., 0].reshape(8, 4, 8, 4)
    assert np.all(blocks == blocks[:, :1, :, :1])
    raw = load_digits().images
    assert any(np.array_equal(np.rint(r * 255 / 16).astype(np.uint8), blocks[:, 0, :, 0]) for r in raw)
    padded = im.digits_source("test", 36)[0]["image"]
    assert padded.shape == (36, 36, 3) and padded[:2].max() == 0 and padded[-2:].max() == 0
    assert set(np.unique(tr.labels)) == set(range(10))
    b = im.ImageLoader(tr, global_batch_size=16, preprocess=im.make_preprocess("digits", train=True),
                       process_index=0, process_count=1).get_batch(0, 0)
    assert b["image"].shape == (16, 32, 32, 3) and abs(float(b["image"].mean())) < 0.2


def test_errors(tmp_path, mock32):
    with pytest.raises(DataError, match="tfds build imagenet_resized/32x32"):
        im.load_source("imagenet_resized/32x32", "train", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="divisible by the number of processes"):
        im.ImageLoader(mock32, global_batch_size=9, preprocess=lambda x, r: x, process_index=0, process_count=2)
    with pytest.raises(ValueError, match="exceeds"):
        im.ImageLoader(mock32, global_batch_size=32, preprocess=lambda x, r: x, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="split"):
        im.digits_source("dev")
