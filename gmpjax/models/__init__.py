"""Models with a ``parameterization`` switch (sp, wn, wn_mbn, bn, gmp, gmp_imn), and the triangle-activation head."""

from gmpjax.models.mlp import MLP
from gmpjax.models.resnet import ResNet18
from gmpjax.models.triangle_head import TriangleHead, triangle_head_macs
from gmpjax.models.vgg import VGG6

__all__ = ["MLP", "VGG6", "ResNet18", "TriangleHead", "triangle_head_macs"]
