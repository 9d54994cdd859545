"Papercuts a new user met: tab completion of the API, the types `learn.predict` returns, a figure shown twice in Jupyter."
import pytest, torch
import fast_resnet
from conftest import REAL_DATA

def test_dir_lists_the_api():
    names = dir(fast_resnet)
    for n in ('train', 'load', 'predict', 'export', 'FastResnetError'): assert n in names, n

def _types(res): return [type(o) for o in res[1:]]  # `(class, index, probabilities)`: the tensors' types

def test_predict_types(fake_data):
    "Plain tensors, as a stock fastai vision learner returns, not `TensorImage`, with either data loader"
    from fastai.vision.all import vision_learner, resnet18, TensorImage
    from fast_resnet.data import read_cifar
    from fast_resnet.fast_data import fast_dls
    from fast_resnet.augment import cifar_dls
    from fast_resnet.learner import cifar_learner
    img = next((fake_data/'test'/'cat').iterdir())
    data = read_cifar(fake_data)
    for dls in (fast_dls(data, bs=8, device='cpu'), cifar_dls(data, bs=8, workers=0, device='cpu')):
        cls, idx, probs = res = cifar_learner(dls, c=8).predict(img)
        assert _types(res) == _types(vision_learner(dls, resnet18, pretrained=False).predict(img)) == [torch.Tensor] * 2
        assert not isinstance(probs, TensorImage) and cls == dls.vocab[int(idx)] and probs.shape == (10,)

def test_predict_types_loaded(quick_run):
    "The same for the model a run exported, read back with `load`"
    out, _ = quick_run
    img = next((REAL_DATA/'test'/'cat').glob('*.png'))
    assert _types(fast_resnet.load(out).predict(img)) == [torch.Tensor] * 2

def test_plots_shown_once(fake_data):
    "Each `plot_` function's figure appears once in a notebook cell that ends with the call"
    from execnb.shell import CaptureShell
    sh = CaptureShell()
    sh.run(f"""
import matplotlib.pyplot as plt
plt.close('all')  # figures other tests left open in this process: in Jupyter the inline backend closes them per cell
import pandas as pd
from fast_resnet.data import read_cifar
from fast_resnet.augment import cifar_dls
from fast_resnet.learner import cifar_learner
from fast_resnet.interpret import *
from fast_resnet.lr import RangeTest, one_cycle_lrs, plot_schedule, plot_cyclic_lr
learn = cifar_learner(cifar_dls(read_cifar({str(fake_data)!r}), bs=8, workers=0, device='cpu'), c=8)
interp = interpret(learn)
import numpy as np
lrs = np.geomspace(1e-4, 10, 60)
rt = RangeTest.read(lrs, 2.3 - np.sin(np.linspace(0, 3, 60)), 'minimum')
hist = pd.DataFrame(dict(epoch=[1, 2], train_loss=[2., 1.], test_loss=[2., 1.5], train_acc=[.3, .5], test_acc=[.3, .4]))
""")
    assert sh.exc is None, sh.exc
    for call in ('plot_confusion(interp)', 'plot_misclassified(interp)', 'plot_curves(hist)', 'rt.plot()',
                 'plot_schedule(one_cycle_lrs(.01, .1, 4, 1, 10), .01, .1, 10)', 'plot_cyclic_lr(.01, .1)'):
        outs = sh.run(call)
        assert sum('image/png' in o.get('data', {}) for o in outs) == 1, (call, outs)

def test_no_tqdm_warning():
    "In Jupyter without ipywidgets, importing accelerate (fastai's distributed module does) warns about a tqdm bar fast_resnet never shows: quieted"
    import subprocess, sys
    code = ("import warnings, fast_resnet.core\nfrom tqdm import TqdmWarning\n"  # as tqdm.autonotebook warns, once fast_resnet is imported
            "warnings.warn('IProgress not found. Please update jupyter and ipywidgets.', TqdmWarning, stacklevel=2)")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and 'IProgress' not in r.stderr, r.stderr
