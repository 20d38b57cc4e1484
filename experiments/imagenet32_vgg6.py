"""VGG-6 on ImageNet32 (GmP paper Sec. 4.2.2 / App. C.3, Table 2).

Paper protocol (``get_config``): ``imagenet_resized/32x32`` (1.28M train / 50k
validation), random horizontal flip, per-channel mean subtraction, SGD momentum
0.9, initial lr 0.1 for GmP(+IMN) and 0.01 for the others (``--lr cv``), x0.1 at
epochs 30/60/80 of 90, batch size 256/512/1024. ``--protocol official`` is the
released code: ReduceLROnPlateau on validation top-5 (x0.1 after 5 epochs without
a gain), early stopping after 10, the best weights restored when it fires, at most
500 epochs.

    python -m experiments.imagenet32_vgg6 --methods gmp_imn bn --batch-size 1024 \\
        --tfds-data-dir ~/tensorflow_datasets --workdir runs/vgg6_1024
    python -m experiments.imagenet32_vgg6 --quick      # CPU smoke run on the embedded digits

``--quick``: digits (1437 train / 360 test images upsampled to 32x32), VGG-6 at
1/4 width, batch 64, 6 epochs, lr 0.1 then 0.01 from epoch 3 (about 80% top-1;
chance is 10%).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from experiments import cli
from experiments.image_train import ImageConfig, image_tables, official, quick_overrides, run_experiment

# Table 2: top-1 / top-5 validation accuracy (%) by batch size (mean over runs; +- omitted), the paper's names.
PAPER_TABLE2: dict[str, dict[str, tuple[float, float]]] = {
    "SP": {"256": (38.31, 62.48), "512": (36.99, 60.71), "1024": (35.02, 58.14)},
    "WN": {"256": (39.13, 63.28), "512": (37.92, 61.93), "1024": (36.17, 60.16)},
    "WN+MBN": {"256": (42.22, 66.04), "512": (40.96, 65.08), "1024": (39.33, 63.32)},
    "BN": {"256": (42.79, 67.17), "512": (41.90, 66.50), "1024": (41.39, 65.89)},
    "GmP": {"256": (40.76, 65.08), "512": (41.65, 65.76), "1024": (41.29, 65.49)},
    "GmP+IMN": {"256": (43.14, 67.36), "512": (43.62, 67.76), "1024": (42.70, 66.98)},
}


@dataclasses.dataclass(frozen=True)
class Config(ImageConfig):
    MODEL: ClassVar[str] = "vgg6"
    NAME: ClassVar[str] = "imagenet32_vgg6"


def get_config() -> Config:
    """The paper's protocol (App. C.3)."""
    return Config()


def get_official_config() -> Config:
    """The released ``imagenet32/imagenet32.py``: plateau schedule, early stopping restoring the best, 500 epochs,
    and its IMN placement (after each conv)."""
    return dataclasses.replace(official(Config(), epochs=500, restore="if_stopped"), imn_position="output")


CONFIGS = {"paper": get_config, "official": get_official_config}


def quick(cfg: Config) -> dict:
    return quick_overrides(cfg) | {"epochs": 6, "width": 0.25, "boundaries": (3,)}


def run(cfg: Config) -> dict:
    return run_experiment(cfg, tables)


def tables(results: Mapping[str, Any]) -> dict[str, str]:
    """``{"top1": ...}``: the paper's top-1 / top-5 beside ours (``results``: ``<workdir>/results.json``)."""
    return image_tables(results, PAPER_TABLE2, ("256", "512", "1024"))


main = cli.entry(__name__)  # main(argv) runs the script; python -m runs it on sys.argv

if __name__ == "__main__":
    main()
