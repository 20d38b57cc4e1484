"""VGG-6 / ResNet-18: parameter counts against the standard architectures (counted by formula), placement
of IMN / MBN / BN per parameterization, and clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gmpjax.layers import GmPIMN, InputMeanNorm
from gmpjax.models import VGG6, ResNet18

PARAMS = ("sp", "wn", "wn_mbn", "bn", "gmp", "gmp_imn")


def n_params(model) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def abstract(cls, *args, **kw):
    """Build the model with shapes only (no initialisation compute)."""
    return nnx.eval_shape(lambda: cls(*args, rngs=nnx.Rngs(0), **kw))


# Standard architectures written out layer by layer: (kernel, c_in, c_out) of every conv.
def vgg6_convs(c=3, widths=(128, 256, 512)):
    a, b, d = widths
    return [(3, c, a), (3, a, a), (3, a, b), (3, b, b), (3, b, d), (3, d, d)]


def resnet18_convs(c=3):
    convs = [(7, c, 64)]
    cin = 64
    for w in (64, 128, 256, 512):
        for _ in range(2):
            down = cin != w
            convs += [(3, cin, w), (3, w, w)] + ([(1, cin, w)] if down else [])
            cin = w
    return convs


def count(convs, feat, classes, *, conv_bias, bn):
    """Conv kernels (+ bias) (+ BN gamma/beta) + a dense head with bias."""
    total = sum(k * k * ci * co + (co if conv_bias else 0) + (2 * co if bn else 0) for k, ci, co in convs)
    return total + feat * classes + classes


def test_reference_formula_matches_published_resnet18_size():
    # The reference ResNet-18 (bias-free convs + BN, 1000 classes) has 11,689,512 parameters.
    assert count(resnet18_convs(), 512, 1000, conv_bias=False, bn=True) == 11_689_512


@pytest.mark.parametrize("p", PARAMS)
def test_vgg6_parameter_counts(p):
    convs = vgg6_convs()
    sp = count(convs, 512, 1000, conv_bias=True, bn=False)
    expected = {
        "sp": sp,
        "gmp": sp,
        "gmp_imn": sp,  # GmP: n-1 angles + radius + offset = n + 1 per unit, like SP
        "bn": count(convs, 512, 1000, conv_bias=True, bn=True),
        "wn": sp + sum(co for *_, co in convs) + 1000,  # one g per output unit, head WN too
        "wn_mbn": sp + sum(co for *_, co in convs) + 1000,
    }[p]
    assert n_params(abstract(VGG6, 1000, parameterization=p)) == expected


@pytest.mark.parametrize("p", PARAMS)
def test_resnet18_parameter_counts(p):
    convs = resnet18_convs()
    sp = count(convs, 512, 1000, conv_bias=True, bn=False)
    expected = {
        "sp": sp,
        "gmp": sp,
        "gmp_imn": sp,
        "bn": count(convs, 512, 1000, conv_bias=True, bn=True),
        "wn": sp + sum(co for *_, co in convs) + 1000,
        "wn_mbn": sp + sum(co for *_, co in convs) + 1000,
    }[p]
    m = abstract(ResNet18, 1000, parameterization=p)
    assert n_params(m) == expected
    if p == "sp":
        assert abs(expected - 11.69e6) < 0.01e6


def _count_modules(model, cls):
    return sum(isinstance(node, cls) for _, node in nnx.iter_graph(model))


def _imn_positions(model):
    return [node.position for _, node in nnx.iter_graph(model) if isinstance(node, GmPIMN)]


def test_normalization_placement():
    # GmP+IMN means one thing: every GmP conv normalises its own input (paper Eq. 14), in VGG-6 (6 convs) and
    # ResNet-18 (all 20 convs, stem and projection shortcuts included); the released VGG code's placement
    # (IMN after every conv) is the layer keyword imn_position="output".
    assert _imn_positions(abstract(VGG6, 10, parameterization="gmp_imn")) == ["input"] * 6
    assert _count_modules(abstract(VGG6, 10, parameterization="gmp"), InputMeanNorm) == 0
    assert _imn_positions(abstract(ResNet18, 10, parameterization="gmp_imn")) == ["input"] * len(resnet18_convs())
    released = abstract(VGG6, 10, parameterization="gmp_imn", layer_kwargs={"imn_position": "output"})
    assert _imn_positions(released) == ["output"] * 6
    with pytest.raises(ValueError, match="imn_position must be 'input'"):
        abstract(VGG6, 10, parameterization="gmp_imn", layer_kwargs={"imn_position": "after"})
    # WN+MBN: MBN after every conv, projection shortcuts included (20 convs).
    assert _count_modules(abstract(ResNet18, 10, parameterization="wn_mbn"), InputMeanNorm) == len(resnet18_convs())
    assert _count_modules(abstract(ResNet18, 10, parameterization="bn"), nnx.BatchNorm) == len(resnet18_convs())
    assert _count_modules(abstract(ResNet18, 10, parameterization="sp"), nnx.BatchNorm) == 0


def test_heads_follow_released_code():
    from gmpjax.layers import SPDense, WNDense

    assert isinstance(abstract(VGG6, 10, parameterization="gmp_imn").head, SPDense)
    assert isinstance(abstract(VGG6, 10, parameterization="wn_mbn").head, WNDense)
    assert isinstance(abstract(ResNet18, 10, parameterization="gmp").head, SPDense)


_forward = nnx.jit(lambda m, x: m(x))


def test_forward_train_and_eval_modes():
    x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
    vgg = nnx.jit(lambda: VGG6(7, parameterization="gmp_imn", widths=(4, 4, 8), rngs=nnx.Rngs(0)))()
    y = _forward(vgg, x)
    assert y.shape == (4, 7) and bool(jnp.all(jnp.isfinite(y)))
    # training mode updated the IMN moving means
    means = [n.mean[...] for _, n in nnx.iter_graph(vgg) if isinstance(n, InputMeanNorm)]
    assert len(means) == 6 and all(float(jnp.abs(v).max()) > 0 for v in means)
    vgg.eval()
    y1, y2 = _forward(vgg, x), _forward(vgg, jnp.concatenate([x[:1], -x[1:]]))
    # eval mode uses moving statistics: a sample's output does not depend on the rest of the batch
    np.testing.assert_allclose(np.asarray(y1[0]), np.asarray(y2[0]), rtol=1e-4, atol=1e-5)
    assert not np.allclose(np.asarray(y1[1:]), np.asarray(y2[1:]))


def test_resnet18_forward():
    res = nnx.jit(lambda: ResNet18(7, parameterization="gmp_imn", width=2, rngs=nnx.Rngs(0)))()
    y = _forward(res, jnp.ones((2, 32, 32, 3)))
    assert y.shape == (2, 7) and bool(jnp.all(jnp.isfinite(y)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="parameterization"):
        abstract(VGG6, 10, parameterization="foo")
    with pytest.raises(ValueError, match="widths"):
        abstract(VGG6, 10, parameterization="sp", widths=(8, 8))
    with pytest.raises(ValueError, match="num_classes"):
        abstract(ResNet18, 0, parameterization="sp")
    m = abstract(VGG6, 3, parameterization="sp", widths=(2, 2, 2))
    with pytest.raises(ValueError, match="NHWC"):
        m(jnp.ones((32, 32, 3)))
