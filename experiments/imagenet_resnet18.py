"""ResNet-18 on ImageNet (ILSVRC 2012) (GmP paper Sec. 4.2.3 / App. C.2, Table 3).

Paper protocol: ``imagenet2012`` 224x224, random resize of the shorter side to
[256, 480] + random 224 crop, horizontal flip, colour (PCA lighting)
augmentation, single centre crop for evaluation, SGD momentum 0.9, lr 0.1 for
all methods, x0.1 at epochs 30/60/80 of 90, batch size 256. IMN for GmP, MBN
for WN (placement: ``gmpjax.models.resnet``).

    python -m experiments.imagenet_resnet18 --parameterization gmp_imn \\
        --tfds-data-dir ~/tensorflow_datasets --workdir runs/resnet18_gmp_imn
    python -m experiments.imagenet_resnet18 --quick    # CPU smoke run on the embedded digits

``--quick``: digits upsampled to 32x32 (not 224: CPU), ResNet-18 at 1/8 width,
batch 64, 3 epochs.
"""

from __future__ import annotations

import sys

from experiments.image_train import ImageConfig, cli_main

# Table 3: single-centre-crop top-1 / top-5 validation accuracy (%), batch 256.
PAPER_TABLE3: dict[str, dict[str, tuple[float, float]]] = {
    "wn_mbn": {"256": (66.57, 86.69)},
    "bn": {"256": (66.85, 86.92)},
    "gmp_imn": {"256": (67.24, 87.19)},
}

DEFAULTS = ImageConfig(
    experiment="imagenet_resnet18",
    model="resnet18",
    dataset="imagenet2012",
    parameterization="gmp_imn",
    batch_size=256,
    epochs=90,
)
QUICK = {
    "dataset": "digits",
    "batch_size": 64,
    "epochs": 3,
    "width": 0.125,
    "image_size": 32,
    "boundaries": (2,),
    "log_every": 5,
    "save_every": 20,
}


def main(argv: list[str] | None = None) -> dict:
    return cli_main(argv, doc=__doc__, defaults=DEFAULTS, quick=QUICK, paper=PAPER_TABLE3, batch_sizes=("256",))


if __name__ == "__main__":
    main(sys.argv[1:])
