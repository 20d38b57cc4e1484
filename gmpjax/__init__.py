"""gmpjax: Geometric Parameterization and triangular-wave reparameterization of ReLU networks in JAX/Flax.

Layout: pure maps (``hyperspherical``, ``triangular``, ``cab``), Flax modules
(``layers``, ``models``), the training engine (``train``), and data (``data``).
"""

__version__ = "0.1.0"
