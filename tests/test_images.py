"""Image pipelines on grain: tfds mock data (no TensorFlow), the embedded digits default, augmentation ranges,
crops cut in source coordinates, determinism across worker counts and processes, exact resume, clear errors.

The two-process (gloo) check of the per-process slices is in tests/test_sharding.py (one multi-process run for
both); the kill-and-resume check with worker processes is in tests/test_checkpoint.py."""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("grain")

from gmpjax.data import DataError  # noqa: E402
from gmpjax.data import images as im  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mock32():
    with tfds.testing.mock_data(num_examples=24):
        return im.load_source("imagenet_resized/32x32", "train")


@pytest.fixture(scope="module")
def mock_imagenet():
    with tfds.testing.mock_data(num_examples=10):  # random image sizes, like the real data
        return im.load_source("imagenet2012", "validation")


def _loader(src, **kw):
    kw.setdefault("process_index", 0)
    kw.setdefault("process_count", 1)
    kw.setdefault("workers", 0)
    return im.ImageLoader(src, **kw)


def _jpeg(img: np.ndarray, quality: int = 92) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def test_imagenet32_train_pipeline(mock32):
    pre = im.make_preprocess("imagenet32", train=True)
    loader = _loader(mock32, global_batch_size=8, preprocess=pre, train=True, seed=1)
    assert loader.steps_per_epoch == 3
    b = loader.get_batch(0, 1)
    assert b["image"].shape == (8, 32, 32, 3) and b["image"].dtype == np.uint8  # uint8 until finish
    assert b["label"].dtype == np.int32 and b["label"].shape == (8,)
    assert np.all((b["label"] >= 0) & (b["label"] < 1000))
    x = pre.finish(b)
    assert x.dtype == np.float32 and x.shape == (8, 32, 32, 3)
    mean = np.asarray(im.IMAGENET32_MEAN, np.float32)
    assert np.all(x >= -mean - 1e-6) and np.all(x <= 1 - mean + 1e-6)
    # each training image is the raw image / 255 - mean, possibly flipped left-right
    idx, _ = loader.indices(0, 1)
    np.testing.assert_array_equal(idx, b["index"])
    flips = []
    for img, i in zip(x, idx, strict=True):
        raw = np.asarray(mock32[int(i)]["image"], np.float32) / 255 - mean
        same, flipped = np.allclose(img, raw, atol=1e-6), np.allclose(img, raw[:, ::-1], atol=1e-6)
        assert same or flipped
        flips.append(flipped and not same)
    assert 0 < sum(flips) < 8  # both cases occur (fixed seed)
    # the per-example callable applies the same three stages to one image
    one = pre(np.asarray(mock32[0]["image"]), np.random.default_rng(0))
    raw0 = np.asarray(mock32[0]["image"], np.float32) / 255 - mean
    assert np.allclose(one, raw0, atol=1e-6) or np.allclose(one, raw0[:, ::-1], atol=1e-6)


def test_imagenet32_eval_is_ordered_padded_and_unaugmented(mock32):
    loader = _loader(
        mock32, global_batch_size=10, train=False, preprocess=im.make_preprocess("imagenet32", train=False)
    )
    assert loader.steps_per_epoch == 3
    batches = list(loader.iterate(num_epochs=1))
    assert len(batches) == 3
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == 24 and np.all(mask[:24] == 1) and np.all(mask[24:] == 0)
    labels = np.concatenate([b["label"] for b in batches])[:24]
    assert np.array_equal(labels, [int(mock32[i]["label"]) for i in range(24)])
    raw0 = np.asarray(mock32[0]["image"], np.float32) / 255 - np.asarray(im.IMAGENET32_MEAN, np.float32)
    np.testing.assert_allclose(loader.preprocess.finish(batches[0])[0], raw0, atol=1e-6)
    capped = _loader(
        mock32,
        global_batch_size=10,
        train=False,
        steps_per_epoch=2,
        preprocess=im.make_preprocess("imagenet32", train=False),
    )
    assert capped.steps_per_epoch == 2 and len(list(capped.iterate(num_epochs=2))) == 4


def test_imagenet2012_pipeline_shapes_and_ranges(mock_imagenet):
    size = 48  # the resize ranges scale with the crop size; 224 in the paper
    mean = np.asarray(im.IMAGENET_MEAN, np.float32)
    for train, crop in ((True, "scale"), (True, "inception"), (False, "scale")):
        pre = im.make_preprocess("imagenet", train=train, image_size=size, crop=crop)
        loader = _loader(mock_imagenet, global_batch_size=5, preprocess=pre, train=train)
        b = loader.get_batch(0, 0)
        assert b["image"].shape == (5, size, size, 3) and b["image"].dtype == np.uint8
        assert ("alpha" in b) == train and (not train or b["alpha"].shape == (5, 3))
        x = pre.finish(b)
        assert x.shape == (5, size, size, 3) and x.dtype == np.float32
        assert np.all(x >= -mean - 1e-5) and np.all(x <= 1 - mean + 1e-5)


def test_finish_on_device_matches_numpy(mock_imagenet):
    import jax
    import jax.numpy as jnp

    pre = im.make_preprocess("imagenet", train=True, image_size=32)
    b = _loader(mock_imagenet, global_batch_size=5, preprocess=pre).get_batch(0, 1)
    on_device = jax.jit(lambda bb: pre.finish(bb, xp=jnp))({"image": b["image"], "alpha": b["alpha"]})
    np.testing.assert_allclose(np.asarray(on_device), pre.finish(b), atol=1e-6)
    # the lighting of finish is pca_lighting's offset, per example
    x01 = b["image"][0].astype(np.float32) / 255
    off = im.PCA_EIGVEC @ (b["alpha"][0] * im.PCA_EIGVAL)
    np.testing.assert_allclose(pre.finish(b)[0], np.clip(x01 + off, 0, 1) - np.asarray(im.IMAGENET_MEAN), atol=1e-6)


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


def test_crop_in_source_coordinates_equals_resize_then_crop():
    """Resizing only the crop's region gives the pixels of resizing the whole image and cropping."""
    from PIL import Image

    y, x = np.mgrid[0:350, 0:400]
    img = np.stack([(x * 0.6 + y * 0.2) % 256, (x * 0.3 + 40) % 256, (y * 0.7) % 256], -1).astype(np.uint8)
    pre = im.make_preprocess("imagenet", train=True, image_size=224)
    rng = np.random.default_rng(3)
    for _ in range(4):
        p = {k: v[0] for k, v in pre.draw(rng, 1).items()}
        p["flip"] = False
        got = pre.example(img, p)
        rh, rw = im._shorter_side_dims(350, 400, int(p["shorter"]))
        full = np.asarray(Image.fromarray(img).resize((rw, rh), Image.BILINEAR))
        top, left = int(p["u_crop"][0] * (rh - 224 + 1)), int(p["u_crop"][1] * (rw - 224 + 1))
        want = full[top : top + 224, left : left + 224]
        assert got.shape == want.shape == (224, 224, 3)
        assert np.abs(got.astype(int) - want).max() <= 1  # rounding of the resampling weights only
    # JPEG bytes: the same crop as the decoded array; draft-mode decoding (>= 2x shrink) stays close
    jpg = _jpeg(img)
    dec = np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB"))
    p = {k: v[0] for k, v in pre.draw(np.random.default_rng(0), 1).items()}
    np.testing.assert_array_equal(pre.example(jpg, p), pre.example(dec, p))
    box = (0.0, 0.0, 400.0, 350.0)  # whole image to 100x87: 4x shrink, decoded at 1/2 or 1/4 scale
    draft, exact = im._resize_box(jpg, box, 87, 100), im._resize_box(dec, box, 87, 100)
    assert draft.shape == exact.shape == (87, 100, 3)
    assert np.abs(draft.astype(float) - exact).mean() < 2.0


def test_batches_are_deterministic_and_split_over_processes(mock32):
    pre = im.make_preprocess("imagenet32", train=True)
    one = _loader(mock32, global_batch_size=8, preprocess=pre, seed=1)
    parts = [
        _loader(mock32, global_batch_size=8, preprocess=pre, seed=1, process_index=i, process_count=2) for i in range(2)
    ]
    full = one.get_batch(2, 1)
    np.testing.assert_array_equal(full["image"], one.get_batch(2, 1)["image"])
    halves = [p.get_batch(2, 1) for p in parts]
    for k in ("image", "label", "index"):  # process i holds rows [4i, 4i+4) of the global batch, augmentation included
        np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), full[k])
    # an epoch is a permutation; epochs differ
    seen = np.concatenate([one.indices(0, s)[0] for s in range(one.steps_per_epoch)])
    assert len(set(seen.tolist())) == len(seen) == 24
    assert not np.array_equal(one.indices(0, 0)[0], one.indices(1, 0)[0])


def test_iterator_state_resumes_exactly(mock32):
    loader = _loader(mock32, global_batch_size=8, preprocess=im.make_preprocess("imagenet32", train=True))
    it = loader.iterate()
    for _ in range(4):  # crosses the epoch boundary (3 steps per epoch)
        next(it)
    assert it.position == {"epoch": 1, "step": 1}
    state = json.loads(json.dumps(it.get_state()))
    expected = next(it)
    it.close()
    resumed = loader.iterate()
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["image"], expected["image"])
    resumed.close()
    other = _loader(mock32, global_batch_size=4, preprocess=im.make_preprocess("imagenet32", train=True)).iterate()
    with pytest.raises(ValueError, match="global_batch_size 8 vs 4"):
        other.set_state(state)


def test_workers_give_the_same_batches_and_device_prefetch(mock_imagenet):
    """2 grain worker processes (JPEG bytes, crop + flip + lighting) == the in-process batches, in order."""
    import jax

    decoded = [mock_imagenet[i] for i in range(len(mock_imagenet))]
    imgs = [np.asarray(d["image"]) for d in decoded]
    imgs = [np.pad(a, ((0, max(0, 40 - a.shape[0])), (0, max(0, 40 - a.shape[1])), (0, 0))) for a in imgs]
    src = im.EncodedSource([_jpeg(a) for a in imgs], [int(d["label"]) for d in decoded])
    pre = im.make_preprocess("imagenet", train=True, image_size=32)
    loader = _loader(src, global_batch_size=4, preprocess=pre, seed=7, workers=2)
    ref = [loader.get_batch(*divmod(k, loader.steps_per_epoch)) for k in range(5)]
    it = loader.iterate(0, 1, put=jax.device_put, prefetch=2)
    try:
        got = [next(it) for _ in range(4)]  # positions 1..4 (crosses the epoch of 2 steps)
        assert it.position == {"epoch": 2, "step": 1}
    finally:
        it.close()
    assert isinstance(got[0]["image"], jax.Array)
    for g, r in zip(got, ref[1:], strict=True):
        for k in ("image", "label", "index", "alpha"):
            np.testing.assert_array_equal(np.asarray(g[k]), r[k])


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
    pre = im.make_preprocess("digits", train=True)
    b = _loader(tr, global_batch_size=16, preprocess=pre).get_batch(0, 0)
    x = pre.finish(b)
    assert x.shape == (16, 32, 32, 3) and abs(float(x.mean())) < 0.2
    assert not pre.flips and "alpha" not in b  # no augmentation for digits
    np.testing.assert_array_equal(b["image"], tr.images[b["index"]])


@pytest.mark.parametrize("seed", [0, 3])
def test_flat_arrays_digits(seed):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    xtr, ytr, xte, yte = im.flat_arrays("digits", seed=seed)
    assert (xtr.shape, xte.shape, ytr.dtype, xte.dtype) == ((1437, 64), (360, 64), np.int32, np.float32)
    # the split of digits_source, and the reference computation in float64
    np.testing.assert_array_equal(ytr, im.digits_source("train", 8, seed=seed).labels)
    np.testing.assert_array_equal(yte, im.digits_source("test", 8, seed=seed).labels)
    d = load_digits()
    rtr, rte, _, _ = train_test_split(d.data, d.target, test_size=0.2, random_state=seed, stratify=d.target)
    mu, sd = rtr.mean(0), rtr.std(0) + 1e-6
    np.testing.assert_allclose(xtr, (rtr - mu) / sd, rtol=1e-4, atol=1e-5)  # float32 statistics
    np.testing.assert_allclose(xte, (rte - mu) / sd, rtol=1e-4, atol=1e-5)
    varying = rtr.std(0) > 0
    np.testing.assert_allclose(xtr.std(0)[varying], 1.0, atol=1e-4)
    np.testing.assert_allclose(xtr.mean(0), 0.0, atol=1e-5)
    # max_train keeps the first rows and standardises with them alone
    xs, ys, xt, _ = im.flat_arrays("digits", seed=seed, max_train=100)
    assert xs.shape == (100, 64) and xt.shape == (360, 64)
    np.testing.assert_array_equal(ys, ytr[:100])
    np.testing.assert_allclose(xs.mean(0), 0.0, atol=1e-5)


def test_flat_arrays_tfds_and_errors(tmp_path):
    with tfds.testing.mock_data(num_examples=12):
        xtr, ytr, xte, yte = im.flat_arrays("cifar10", max_train=10)
        src = im.load_source("cifar10", "test")
        raw = np.stack([np.asarray(src[i]["image"], np.float32).reshape(-1) / 255 for i in range(len(src))])
    assert xtr.shape == (10, 32 * 32 * 3) and xte.shape == (12, 32 * 32 * 3) and ytr.shape == (10,)
    assert xtr.dtype == xte.dtype == np.float32 and ytr.dtype == yte.dtype == np.int32
    # the same per-feature affine map of the pixels/255 for train and test
    np.testing.assert_allclose(xtr.mean(0), 0.0, atol=1e-5)
    corr = [np.corrcoef(xte[:, j], raw[:, j])[0, 1] for j in range(5)]
    np.testing.assert_allclose(corr, 1.0, atol=1e-5)
    with pytest.raises(DataError, match="tfds build cifar10"):
        im.flat_arrays("cifar10", data_dir=str(tmp_path))
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="max_train must be an int >= 1"):
            im.flat_arrays("digits", max_train=bad)


def test_errors(tmp_path, mock32):
    pre = im.make_preprocess("imagenet32", train=True)
    with pytest.raises(DataError, match="tfds build imagenet_resized/32x32"):
        im.load_source("imagenet_resized/32x32", "train", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="divisible by the number of processes"):
        im.ImageLoader(mock32, global_batch_size=9, preprocess=pre, process_index=0, process_count=2)
    with pytest.raises(ValueError, match="exceeds"):
        _loader(mock32, global_batch_size=32, preprocess=pre)
    with pytest.raises(TypeError, match="make_preprocess"):
        _loader(mock32, global_batch_size=8, preprocess=lambda x, r: x)
    with pytest.raises(ValueError, match="workers"):
        _loader(mock32, global_batch_size=8, preprocess=pre, workers=-1)
    with pytest.raises(ValueError, match="step must be in"):
        _loader(mock32, global_batch_size=8, preprocess=pre).get_batch(0, 3)
    with pytest.raises(ValueError, match="split"):
        im.digits_source("dev")
    assert im.visible_cores() >= 1


def test_input_pipeline_benchmark_quick(tmp_path):
    """``python -m benchmarks.input_pipeline --quick`` runs, writes ``<out>/input_pipeline.json`` (timings are not
    judged) and exits without a traceback or a leaked-shared-memory warning."""
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.input_pipeline", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "leaked" not in res.stderr and "Traceback" not in res.stderr, res.stderr[-3000:]
    data = json.loads((tmp_path / "input_pipeline.json").read_text())
    assert data["machine"]["visible_cores"] >= 1 and len(data["machine"]["load_average_start"]) == 3
    assert {r["input"] for r in data["results"]} == {"imagenet32", "imagenet224"}
    assert {r["loader"] for r in data["results"]} == {"legacy", "grain"}
    for r in data["results"]:
        assert r["images_per_s"] > 0 and r["workers"] >= 1 and r["images"] > 0


_WORKERS = """
import multiprocessing, os, sys
from gmpjax.data import images as im

loader = im.ImageLoader(im.digits_source("train", 32), global_batch_size=16, process_index=0, process_count=1,
                        preprocess=im.make_preprocess("imagenet32", train=True), workers=2)
with loader.iterate() as it:
    for _ in range(4):
        next(it)
    print("workers", *[p.pid for p in multiprocessing.active_children()], flush=True)
    if sys.argv[1] == "kill":
        os.kill(os.getpid(), 9)
print("after close", len(multiprocessing.active_children()), flush=True)
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in "ZX"  # a zombie has exited
    except FileNotFoundError:
        return True


def test_worker_shutdown_frees_shared_memory():
    """Two grain workers with batches in flight: ``close`` (here the ``with`` block) stops them cleanly, and the
    interpreter exits without a "leaked shared_memory objects" warning."""
    res = subprocess.run(
        [sys.executable, "-c", _WORKERS, "close"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(res.stdout.split("\n")[0].split()) == 3  # "workers" and two pids
    assert "after close 0" in res.stdout
    assert "leaked" not in res.stderr and "Traceback" not in res.stderr, res.stderr[-3000:]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_when_the_training_process_is_killed():
    """SIGKILL of the training process: its grain workers notice and exit instead of staying orphaned."""
    import time

    res = subprocess.run(
        [sys.executable, "-c", _WORKERS, "kill"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == -9, res.stderr[-3000:]
    pids = [int(p) for p in res.stdout.split()[1:]]
    assert len(pids) == 2
    deadline = time.monotonic() + 10
    while not all(map(_gone, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(map(_gone, pids)), pids
