"""Settings shared by the experiment scripts (reporting helpers live in ``experiments.report``)."""


# TEMPORARY, for image_train.py and transformer_lm.py only: mean_se moved to experiments.report (see cli.py).
from experiments.report import mean_se  # noqa: E402, F401
