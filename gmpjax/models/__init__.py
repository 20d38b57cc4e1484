"""Models with a ``parameterization`` switch (sp, wn, wn_mbn, bn, gmp, gmp_imn)."""

from gmpjax.models.mlp import MLP

__all__ = ["MLP"]
