"""Image regression: `get_config('synthetic_images' | 'carla' | 'utkface'[, 'quick'])`.

The paper: ResNet18 (CARLA) / ResNet34 (UTKFace) with a 512-d last hidden layer, 100 epochs, batch
512, SGD momentum 0.9, lr 1e-3, x0.1 at 50% and 75% of training, 224x224 inputs, ImageNet
normalization, loss 0.5*MSE + 0.5*wd*sum ||theta||^2. BatchNorm running statistics are part of
the train state (`model_state`) and are used at evaluation. `synthetic_images` (embedded, no
download) runs the same pipeline at 32x32 with a CIFAR-style stem.

Sets up to data.max_in_memory_mb (as float32) are held on the accelerator whole, like the tabular
sets (224x224 float32 is ~0.6 MB per image); larger ones (full CARLA, UTKFace) are streamed from the
host in prefetched batches by nrc_jax/engine/streamed.py (docs/streaming.md).

Launch:
  python -m nrc_jax.main --config=configs/images.py:synthetic_images --workdir=runs/synth
  python -m nrc_jax.main --config=configs/images.py:synthetic_images,quick --workdir=/tmp/synth_quick
  python -m nrc_jax.main --config=configs/images.py:carla --workdir=runs/carla --config.data.path=DIR
Expected runtime: `synthetic_images,quick` (SmallCNN, 16x16, 256 images, 4 epochs) under a minute
on this 2-core CPU, mostly compilation; `synthetic_images` (ResNet18 at 32x32, 2,000 images, 30
epochs) tens of minutes on the CPU; CARLA/UTKFace at 224x224 need a GPU.
"""
from __future__ import annotations

import ml_collections

from nrc_jax.io.config_files import sibling

mlp = sibling(__file__, "mlp")  # configs/mlp.py beside this file, from any working directory

SETS = {  # name: (arch, stem, image_size, epochs, weight decay, targets)
    "synthetic_images": ("resnet18", "cifar", 32, 30, 5e-4, "x_y_size"),
    "carla": ("resnet18", "imagenet", 224, 100, 1e-2, "speed_steer"),
    "utkface": ("resnet34", "imagenet", 224, 100, 1e-2, ""),
}


def get_config(arg: str = "synthetic_images") -> ml_collections.ConfigDict:
    """`arg`: a name from SETS, optionally followed by ',quick'."""
    name, *options = [a for a in arg.split(",") if a]
    if name not in SETS or set(options) - {"quick"}:
        raise ValueError(f"configs/images.py: argument {arg!r}; use one of {sorted(SETS)} [+ ',quick']")
    arch, stem, image_size, epochs, weight_decay, targets = SETS[name]
    config = mlp.get_config()
    config.data.name = name
    config.data.image_size = image_size
    config.data.targets = targets
    config.model.update(arch=arch, stem=stem, width=64, feature_dim=0, norm="batch")
    config.optim.update(name="sgd", lr=1e-3, momentum=0.9, weight_decay=weight_decay, schedule="step",
                        milestones=(0.5, 0.75), decay_factor=0.1)
    config.train.update(epochs=epochs, batch_size=512, eval_every=1, checkpoint_every=5, eval_chunk=1024)
    if "quick" in options:
        config.data.update(image_size=16, train_size=256, test_size=64)
        config.model.update(arch="small_cnn", channels=(8, 16, 32), feature_dim=32)
        config.optim.update(lr=1e-2)
        config.train.update(epochs=4, batch_size=64, eval_every=2, checkpoint_every=2)
    return config
