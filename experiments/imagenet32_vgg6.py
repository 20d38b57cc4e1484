"""VGG-6 on ImageNet32 (GmP paper Sec. 4.2.2 / App. C.3, Table 2).

Paper protocol: ``imagenet_resized/32x32`` (1.28M train / 50k validation),
random horizontal flip, per-channel mean subtraction, SGD momentum 0.9, initial
lr 0.1 for GmP(+IMN) and 0.01 for the others, x0.1 at epochs 30/60/80 of 90,
batch size 256/512/1024. The released code's plateau schedule is
``--schedule plateau``.

    python -m experiments.imagenet32_vgg6 --parameterization gmp_imn --batch-size 1024 \\
        --tfds-data-dir ~/tensorflow_datasets --workdir runs/vgg6_gmp_imn_1024
    python -m experiments.imagenet32_vgg6 --quick      # CPU smoke run on the embedded digits

``--quick``: digits (1437 train / 360 test images upsampled to 32x32), VGG-6 at
1/4 width, batch 64, 6 epochs, lr 0.1 then 0.01 from epoch 3 (about 80% top-1;
chance is 10%).
"""

from __future__ import annotations

import sys

from experiments.image_train import ImageConfig, cli_main

# Table 2: top-1 / top-5 validation accuracy (%) by batch size (mean over runs; +- omitted).
PAPER_TABLE2: dict[str, dict[str, tuple[float, float]]] = {
    "sp": {"256": (38.31, 62.48), "512": (36.99, 60.71), "1024": (35.02, 58.14)},
    "wn": {"256": (39.13, 63.28), "512": (37.92, 61.93), "1024": (36.17, 60.16)},
    "wn_mbn": {"256": (42.22, 66.04), "512": (40.96, 65.08), "1024": (39.33, 63.32)},
    "bn": {"256": (42.79, 67.17), "512": (41.90, 66.50), "1024": (41.39, 65.89)},
    "gmp": {"256": (40.76, 65.08), "512": (41.65, 65.76), "1024": (41.29, 65.49)},
    "gmp_imn": {"256": (43.14, 67.36), "512": (43.62, 67.76), "1024": (42.70, 66.98)},
}

DEFAULTS = ImageConfig(
    experiment="imagenet32_vgg6",
    model="vgg6",
    dataset="imagenet_resized/32x32",
    parameterization="gmp_imn",
    batch_size=256,
    epochs=90,
)
QUICK = {
    "dataset": "digits",
    "batch_size": 64,
    "epochs": 6,
    "width": 0.25,
    "boundaries": (3,),
    "log_every": 5,
    "save_every": 20,
}


def main(argv: list[str] | None = None) -> dict:
    return cli_main(
        argv, doc=__doc__, defaults=DEFAULTS, quick=QUICK, paper=PAPER_TABLE2, batch_sizes=("256", "512", "1024")
    )


if __name__ == "__main__":
    main(sys.argv[1:])
