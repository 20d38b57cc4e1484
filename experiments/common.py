"""Settings shared by the experiment scripts (reporting helpers live in ``experiments.report``)."""

# Learning rates of the paper's cross-validated comparison (Figs. 2-3): 0.1 for GmP, 0.01 for the others.
CV_LR = {"gmp": 0.1, "sp": 0.01, "wn": 0.01, "bn": 0.01}

# TEMPORARY, for image_train.py and transformer_lm.py only: mean_se moved to experiments.report (see cli.py).
from experiments.report import mean_se  # noqa: E402, F401
