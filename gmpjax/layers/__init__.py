"""Flax NNX layers: GmP, its baselines, and the triangular-wave modules.

>>> import jax.numpy as jnp
>>> from flax import nnx
>>> from gmpjax.layers import GmPDense
>>> GmPDense(3, 4, rngs=nnx.Rngs(0))(jnp.ones((2, 3))).shape
(2, 4)
"""

from gmpjax.layers.baselines import (
    BatchNormAfter,
    BNConv,
    BNDense,
    MeanOnlyBNAfter,
    SPConv,
    SPDense,
    WeightNorm,
    WNConv,
    WNDense,
    WNMBNConv,
    WNMBNDense,
)
from gmpjax.layers.convert import to_gmp, to_standard
from gmpjax.layers.gmp import GmPDense, angle_layers, precomputed_units
from gmpjax.layers.gmp_conv import GmPConv
from gmpjax.layers.imn import GmPIMN, InputMeanNorm, MeanOnlyBatchNorm
from gmpjax.layers.registry import (
    PARAMETERIZATIONS,
    Parameterization,
    check_parameterization,
    default_lr,
    make_conv,
    make_dense,
    register,
    unregister,
)
from gmpjax.layers.triangle import ReLUMLP, TriangleActivation, TriangleDifference, TriangleNet
from gmpjax.layers.variables import Angle, Offset, Radius

__all__ = [
    "GmPDense",
    "GmPConv",
    "InputMeanNorm",
    "GmPIMN",
    "MeanOnlyBatchNorm",
    "SPDense",
    "SPConv",
    "WNDense",
    "WNConv",
    "BNDense",
    "BNConv",
    "WNMBNDense",
    "WNMBNConv",
    "WeightNorm",
    "BatchNormAfter",
    "MeanOnlyBNAfter",
    "PARAMETERIZATIONS",
    "Parameterization",
    "register",
    "unregister",
    "default_lr",
    "check_parameterization",
    "make_dense",
    "make_conv",
    "TriangleNet",
    "TriangleActivation",
    "TriangleDifference",
    "ReLUMLP",
    "angle_layers",
    "precomputed_units",
    "to_gmp",
    "to_standard",
    "Angle",
    "Radius",
    "Offset",
]
