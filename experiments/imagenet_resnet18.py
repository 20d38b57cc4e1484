"""ResNet-18 on ImageNet (ILSVRC 2012) (GmP paper Sec. 4.2.3 / App. C.2, Table 3).

Paper protocol (``get_config``): ``imagenet2012`` 224x224, random resize of the
shorter side to [256, 480] + random 224 crop, horizontal flip, colour (PCA
lighting) augmentation, single centre crop for evaluation, SGD momentum 0.9, lr
0.1 for all methods, x0.1 at epochs 30/60/80 of 90, batch size 256. IMN for GmP,
MBN for WN (placement: ``gmpjax.models.resnet``). ``--protocol official`` is the
schedule of the pre-release ResNet-34 code (there is no released ResNet-18):
ReduceLROnPlateau on validation top-5 (patience 5) and early stopping (patience
10, last weights kept), with no epoch cap to speak of (10000).

    python -m experiments.imagenet_resnet18 --methods gmp_imn bn wn_mbn \\
        --tfds-data-dir ~/tensorflow_datasets --workdir runs/resnet18
    python -m experiments.imagenet_resnet18 --quick    # CPU smoke run on the embedded digits

``--quick``: digits upsampled to 32x32 (not 224: CPU), ResNet-18 at 1/8 width,
batch 64, 3 epochs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from experiments import cli
from experiments.image_train import ImageConfig, image_tables, official, quick_overrides, run_experiment

# Table 3: single-centre-crop top-1 / top-5 validation accuracy (%), batch 256, the paper's names.
PAPER_TABLE3: dict[str, dict[str, tuple[float, float]]] = {
    "WN+MBN": {"256": (66.57, 86.69)},
    "BN": {"256": (66.85, 86.92)},
    "GmP+IMN": {"256": (67.24, 87.19)},
}


@dataclasses.dataclass(frozen=True)
class Config(ImageConfig):
    MODEL: ClassVar[str] = "resnet18"
    NAME: ClassVar[str] = "imagenet_resnet18"

    lr: tuple[str, ...] = cli.field(("0.1",), "learning rate(s), or 'cv' (paper: 0.1 for every method)")
    workdir: str = cli.field("results/imagenet_resnet18", "output folder (one subfolder per run); alias --out")
    dataset: str = cli.field("imagenet2012", "tfds name (ArrayRecord-prepared) or 'digits' (embedded, runs anywhere)")


def get_config() -> Config:
    """The paper's protocol (App. C.2)."""
    return Config()


def get_official_config() -> Config:
    """The pre-release ``imagenet2012/imagenet2012.py`` schedule: plateau + early stopping, last weights kept."""
    return official(Config(), epochs=10000, restore="never")


CONFIGS = {"paper": get_config, "official": get_official_config}


def quick(cfg: Config) -> dict:
    return quick_overrides(cfg) | {"epochs": 3, "width": 0.125, "image_size": 32, "boundaries": (2,)}


def run(cfg: Config) -> dict:
    return run_experiment(cfg, tables)


def tables(results: Mapping[str, Any]) -> dict[str, str]:
    """``{"top1": ...}``: the paper's top-1 / top-5 beside ours (``results``: ``<workdir>/results.json``)."""
    return image_tables(results, PAPER_TABLE3, ("256",))


main = cli.entry(__name__)  # main(argv) runs the script; python -m runs it on sys.argv

if __name__ == "__main__":
    main()
