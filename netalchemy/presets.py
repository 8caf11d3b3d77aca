"""Named settings bundles: `netalchemy train preset=NAME [key=value ...]`.

A preset is a tuple of `key=value` overrides applied to the defaults before the user's
own, so `preset=article seeds.n=4` is the article preset with four seeds.

`article`: the network of the article whose claims the audit checks (experiments/claims.toml): a 64x64
grayscale picture, 4 096 inputs, fed to a ReLU MLP with a two-way softmax. Its cat-vs-dog
pictures are replaced by Fashion-MNIST's (Xiao et al. 2017, arXiv:1708.07747) T-shirt/top
(class 0) vs shirt (class 6), upsampled from 28x28: real photographs, offline, and the
hardest pair of Fashion-MNIST (shirt is its worst-classified class, mostly mistaken for a
T-shirt; a ridge classifier on the raw pixels reaches 83 % test accuracy on this pair, 86 %
on pullover vs coat), so that, as cat vs dog for an MLP, the task is far from solved
by a linear read-out. Hidden widths 512 and 256 give the benchmark's W2 network
(4096-512-256-2). Adam at lr 1e-3 (its usual default) with batches of
100: 1 200 steps are 10 epochs of the pair's 12 000 training images.
"""

from __future__ import annotations

from netalchemy.config import ConfigError, did_you_mean

PRESETS: dict[str, tuple[str, ...]] = {
    "article": (
        "data.name=fashion_mnist",
        "data.classes=0,6",
        "data.image_size=64",
        "data.grayscale=true",
        "model.hidden=512,256",
        "optim.name=adam",
        "optim.lr=1e-3",
        "train.batch_size=100",
        "train.steps=1200",
        "train.eval_every=240",
    ),
}

DESCRIPTIONS: dict[str, str] = {
    "article": "the article's 4096-512-256-2 ReLU MLP on 64x64 grayscale pictures: Fashion-MNIST "
               "T-shirt/top vs shirt (its most confused pair, as cat vs dog is hard for an MLP), "
               "Adam 1e-3, 10 epochs",
}


def overrides(name: str) -> tuple[str, ...]:
    """The `key=value` overrides of preset `name`.

    Raises:
      ConfigError: no such preset (one line, with a suggestion and the list).
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}{did_you_mean(name, list(PRESETS))}; "
                          f"presets: {', '.join(PRESETS)}")
    return PRESETS[name]
