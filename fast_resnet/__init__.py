"Train a custom ResNet on CIFAR-10 with fastai: LR range test, one cycle without annihilation, Cutout."
__version__ = "0.1.0"

from fast_resnet.core import FastResnetError

# `train`, `lr_find`, `load`, `predict` and `export` import fastai (about ten seconds): they load on first use, so the command
# line can check its arguments before that.
_LAZY = dict(train='run', load='inference', predict='inference', export='inference', lr_find='range_test')

def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f'fast_resnet.{_LAZY[name]}'), name)
    raise AttributeError(f"module 'fast_resnet' has no attribute {name!r}")

def __dir__():  # so a notebook's tab completion offers the lazy ones too
    return sorted({k for k in globals() if not k.startswith('_')} | set(_LAZY) | {'__version__'})

__all__ = ['FastResnetError', 'train', 'load', 'predict', 'export', 'lr_find']
