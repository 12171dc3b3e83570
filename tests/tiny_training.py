"""The tiny training setup shared by the training and speed tests: the reference's
augmentation settings, one 3-slice 32x32 volume with two superpixels, and a seeded
small-CNN model."""

import numpy as np
import torch

from fsmis.data.episodes import SuperpixelEpisodes
from fsmis.models import registry

AUG = dict(rotate_deg=5, translate_px=5, shear_deg=5, zoom=[0.9, 1.2], elastic_alpha=10, elastic_sigma=5,
           gamma=[0.5, 1.5])


def episodes():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(3, 32, 32)).astype(np.float32)
    sp = np.zeros((3, 32, 32), np.int32)
    sp[:, :16], sp[:, 16:] = 1, 2
    return SuperpixelEpisodes([img], [sp], AUG, seed=5)


def model(method="ssl_alpnet"):
    torch.manual_seed(0)
    return registry.build(method, {"backbone": "small_cnn", "feature_dim": 8})
