"Train a custom ResNet on CIFAR-10 with fastai: LR range test, one cycle without annihilation, Cutout."
__version__ = "0.1.0"

from fast_resnet.core import FastResnetError

# `train`, `load` and `predict` import fastai (about ten seconds): they load on first use, so the command line can
# check its arguments before that.
def __getattr__(name):
    if name in ('train', 'load', 'predict', 'export'):
        from fast_resnet import learner
        return getattr(learner, name)
    raise AttributeError(f"module 'fast_resnet' has no attribute {name!r}")

__all__ = ['FastResnetError', 'train', 'load', 'predict']
