"""fastai habits on `cifar_learner` and on the README's recipe (fastai's `Learner` with `nesterov_sgd`), each checked
against a value: the column a callback reads, the file it writes, the LR a step used, the parameters frozen; fastai's
own `Learner` (its `SGD`, or its defaults) is the reference where there is one."""
import copy
from functools import partial
import numpy as np
import pytest, torch
from fastai.vision.all import (Learner, Callback, CrossEntropyLossFlat, SGD, accuracy, error_rate, top_k_accuracy, F1Score,
                               SaveModelCallback, EarlyStoppingCallback, ReduceLROnPlateau, ShowGraphCallback, CSVLogger,
                               trainable_params, TensorImage, TensorCategory, OptimWrapper, set_seed)

KINDS = ('cifar', 'recipe')  # cifar_learner; the README's recipe in fastai's words

@pytest.fixture(scope='module', autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

@pytest.fixture(scope='module')
def dls(fake_data, tmp_path_factory):
    "The fast loaders (`cifar_learner`'s) and fastai's `DataBlock` loaders (the recipe's) on the same 40 + 20 images"
    from fast_resnet.data import read_cifar
    from fast_resnet.fast_data import fast_dls
    from fast_resnet.augment import cifar_dls
    data = read_cifar(fake_data)
    return dict(fast=fast_dls(data, bs=8, device='cpu', seed=0, cache_dir=tmp_path_factory.mktemp('cache')),
                block=cifar_dls(data, bs=8, workers=0, device='cpu'))

def body_head(m):
    "A splitter: the network's body, then its classifier"
    return [[p for n, p in m.named_parameters() if not n.startswith('fc.')], list(m.fc.parameters())]

def make(kind, dls, path, **kw):
    "`cifar_learner`; the README's recipe; fastai's `Learner` with fastai's `SGD` ('fastai_sgd') or at its defaults, Adam ('fastai')"
    from fast_resnet.learner import cifar_learner
    from fast_resnet.custom_resnet import CustomResNet
    from fast_resnet.levers import nesterov_sgd
    set_seed(0)
    if kind == 'cifar': return cifar_learner(dls['fast'], c=2, path=path, **kw)
    opt = dict(recipe=dict(opt_func=partial(nesterov_sgd, wd=5e-4), moms=(0.9,) * 3, wd=None), fastai_sgd=dict(opt_func=SGD),
               fastai={})[kind]
    kw = dict(dict(metrics=accuracy), **kw)
    return Learner(dls['block'], CustomResNet(2, fc_scale=1/8), loss_func=CrossEntropyLossFlat(), path=path, **opt, **kw)

class StepLRs(Callback):
    "The LR of each layer group as fastai sees it, and of each PyTorch group the step uses, just before each step"
    order = 100
    def before_fit(self): self.hypers, self.groups = getattr(self, 'hypers', []), getattr(self, 'groups', [])
    def before_step(self):
        self.hypers.append([h['lr'] for h in self.opt.hypers])
        if isinstance(self.opt, OptimWrapper): self.groups.append([g['lr'] for g in self.opt.opt.param_groups])

def column(learn, name):
    "The column `name` of the recorder's `values`, as fastai's trackers find it"
    return [v[list(learn.recorder.metric_names[1:]).index(name)] for v in learn.recorder.values]

def valid_loss_by_hand(learn):
    "The mean loss on the validation set, from the predictions"
    preds, targs = learn.get_preds(act=lambda x: x)
    return torch.nn.functional.cross_entropy(preds.float(), targs).item()

# --- the recorder's names and metrics

@pytest.mark.parametrize('kind', KINDS + ('fastai',))
def test_metric_names(kind, dls, tmp_path):
    learn = make(kind, dls, tmp_path)
    learn.fit(1, 1e-3)
    assert list(learn.recorder.metric_names) == ['epoch', 'train_loss', 'valid_loss', 'accuracy', 'time']
    acc = learn.recorder.values[-1][2]  # read first: `get_preds`, as in fastai, starts a new record
    preds, targs = learn.get_preds()
    assert acc == pytest.approx((preds.argmax(1) == targs).float().mean().item())

def test_user_metrics(dls, tmp_path):
    "A user's metrics replace the default, in their order, with fastai's values, in the record and from `validate`"
    from fast_resnet.learner import cifar_learner
    mets = lambda: [error_rate, partial(top_k_accuracy, k=3), F1Score(average='macro'), accuracy]
    learn = cifar_learner(dls['fast'], c=2, path=tmp_path, metrics=mets())
    learn.fit(2, 0.05)
    assert list(learn.recorder.metric_names) == ['epoch', 'train_loss', 'valid_loss', 'error_rate', 'top_k_accuracy', 'f1_score', 'accuracy', 'time']
    last = learn.recorder.values[-1]
    got = learn.validate()
    ref = Learner(dls['fast'], learn.model, loss_func=CrossEntropyLossFlat(), metrics=mets())
    with ref.no_bar(): want = ref.validate()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(last[1:], got, rtol=1e-6)  # the last epoch scored the same model
    assert got[1] == pytest.approx(1 - got[4])  # the error rate is not the accuracy
    preds, targs = learn.get_preds()
    assert got[4] == pytest.approx((preds.argmax(1) == targs).float().mean().item())
    learn.metrics = learn.metrics + [error_rate]  # appended, as in fastai
    assert len(learn.validate()) == 6 and list(learn.recorder.metric_names)[-2:] == ['error_rate', 'time']

def _valid_reads(learn, n_epoch=1):
    "Reads from the device inside validation batches and inside training steps, over a fit"
    from fast_resnet.host import DeviceReads
    class Phase(Callback):
        order = -1000
        def before_train(self): r.phase = 'train'
        def before_validate(self): r.phase = 'valid'
        def after_validate(self): r.phase = 'other'
    r = DeviceReads('cpu')
    with r, learn.no_logging(): learn.fit(n_epoch, 1e-3, cbs=Phase())
    return r.counts['valid'], r.counts['train']

def test_default_metric_stays_on_the_device(dls, tmp_path):
    "accuracy (and error_rate) come from the on-device count: no read per batch; a user's metric reads per validation batch, as in fastai"
    from fast_resnet.learner import cifar_learner
    assert _valid_reads(cifar_learner(dls['fast'], c=2, path=tmp_path, metrics=[accuracy, error_rate])) == (0, 0)
    n_valid = len(dls['fast'].valid)
    valid, train = _valid_reads(cifar_learner(dls['fast'], c=2, path=tmp_path, metrics=partial(top_k_accuracy, k=3)))
    assert valid >= n_valid and train == 0

# --- the trackers

@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('monitor', ['valid_loss', 'accuracy'])
def test_save_model(kind, monitor, dls, tmp_path):
    learn = make(kind, dls, tmp_path)
    cb = SaveModelCallback(monitor=monitor, fname='best')
    with learn.no_logging(): learn.fit(3, 0.05, cbs=cb)
    col = column(learn, monitor)
    best = min(col) if monitor == 'valid_loss' else max(col)
    assert cb.best == pytest.approx(best) and (tmp_path/'models'/'best.pth').exists()
    i = list(learn.recorder.metric_names).index(monitor) - 2  # its place in `validate`'s result
    assert learn.validate()[i] == pytest.approx(best, rel=1e-5)  # the best epoch's weights, loaded at the end

@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('monitor', ['valid_loss', 'accuracy'])
def test_early_stopping(kind, monitor, dls, tmp_path):
    learn = make(kind, dls, tmp_path)
    with learn.no_logging(): learn.fit(4, 0.1, cbs=EarlyStoppingCallback(monitor=monitor, patience=1))
    col, better = column(learn, monitor), (np.less if monitor == 'valid_loss' else np.greater)
    best, stop = col[0], 4  # fastai's rule on the column: stop at the first epoch that does not improve
    for i, v in enumerate(col[1:], 1):
        if not better(v, best): stop = i + 1; break
        best = v
    assert len(col) == stop

@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('monitor', ['valid_loss', 'accuracy'])
def test_reduce_lr_on_plateau(kind, monitor, dls, tmp_path):
    "No epoch improves by min_delta=100: the LR drops tenfold after the second epoch, in every group the step uses"
    learn, steps = make(kind, dls, tmp_path), StepLRs()
    with learn.no_logging(): learn.fit(3, 0.01, cbs=[ReduceLROnPlateau(monitor=monitor, patience=1, min_delta=100), steps])
    n = len(learn.dls.train)
    want = [0.01] * 2 * n + [0.001] * n
    np.testing.assert_allclose(learn.recorder.lrs, want)
    np.testing.assert_allclose([g for gs in steps.groups for g in gs], [lr for lr in want for _ in steps.groups[0]])
    assert len(steps.groups[0]) == 2  # nesterov_sgd's two PyTorch groups (weights; BatchNorm and biases), one layer group

# --- the pictures and logs

@pytest.mark.parametrize('kind, bars', [('cifar', False), ('cifar', True), ('recipe', True)])
def test_show_graph(kind, bars, dls, tmp_path, monkeypatch):
    "Plain lines (a script, a log): it draws nowhere and raises nothing; under bars (a notebook) both curves are right"
    import fastprogress.fastprogress as fp
    from fast_resnet.recorder import _NoGraph, BarProgress, EpochLine
    drawn = {}
    for cls in (fp.ConsoleMasterBar, fp.NBMasterBar, _NoGraph):
        monkeypatch.setattr(cls, 'update_graph', lambda self, graphs, *a, **k: drawn.setdefault(type(self).__name__, []).append(graphs))
    learn = make(kind, dls, tmp_path)
    if kind == 'cifar':
        assert isinstance(learn.progress, EpochLine)  # pytest's output is no terminal
        if bars: learn.remove_cb(learn.progress); learn.add_cb(BarProgress())
    learn.fit(2, 0.05, cbs=ShowGraphCallback())
    assert list(drawn) == (['_NoGraph'] if not bars else ['ConsoleMasterBar'])
    (x_train, train), (x_valid, valid) = drawn[list(drawn)[0]][-1]
    assert list(train) == list(learn.recorder.losses) and len(train) == 2 * len(learn.dls.train)
    assert list(x_valid) == [len(learn.dls.train), 2 * len(learn.dls.train)]
    assert valid == column(learn, 'valid_loss') and valid[-1] == pytest.approx(valid_loss_by_hand(learn), rel=1e-5)
    if kind == 'cifar': assert valid == [r['test_loss'] for r in learn.recorder.rows]

@pytest.mark.parametrize('kind', KINDS)
def test_plot_loss(kind, dls, tmp_path):
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    learn = make(kind, dls, tmp_path)
    with learn.no_logging(): learn.fit(2, 0.05)
    ax = learn.recorder.plot_loss(skip_start=0, ax=plt.subplots()[1])
    train, valid = ax.lines[:2]
    np.testing.assert_allclose(train.get_ydata(), learn.recorder.losses)
    np.testing.assert_allclose(valid.get_ydata(), column(learn, 'valid_loss'))
    assert valid.get_ydata()[-1] == pytest.approx(valid_loss_by_hand(learn), rel=1e-5)
    plt.close('all')

@pytest.mark.parametrize('kind', KINDS)
def test_csv_logger(kind, dls, tmp_path):
    import pandas as pd
    learn = make(kind, dls, tmp_path)
    learn.fit(2, 0.05, cbs=CSVLogger(fname='log.csv'))
    df = pd.read_csv(tmp_path/'log.csv')
    assert list(df.columns) == list(learn.recorder.metric_names) == ['epoch', 'train_loss', 'valid_loss', 'accuracy', 'time']
    np.testing.assert_allclose(df[['train_loss', 'valid_loss', 'accuracy']].values, np.array(learn.recorder.values, dtype=float), rtol=1e-6)
    assert df.epoch.tolist() == ([1, 2] if kind == 'cifar' else [0, 1])  # cifar_learner counts epochs from 1, as its run folder

@pytest.mark.parametrize('kind', KINDS)
def test_tensorboard(kind, dls, tmp_path):
    pytest.importorskip('tensorboard')
    from fastai.callback.tensorboard import TensorBoardCallback
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    learn = make(kind, dls, tmp_path)
    with learn.no_logging(): learn.fit(2, 0.05, cbs=TensorBoardCallback(tmp_path/'tb'))  # fastai's defaults: the graph, the predictions
    ea = EventAccumulator(str(tmp_path/'tb')); ea.Reload()
    def val(tag):  # fastai logs at every batch, validation batches too, at the training step reached: the first value per step
        first = {}
        for e in ea.Scalars(tag): first.setdefault(e.step, e.value)
        return list(first.values())
    np.testing.assert_allclose(val('valid_loss'), column(learn, 'valid_loss'), rtol=1e-6)
    np.testing.assert_allclose(val('accuracy'), column(learn, 'accuracy'), rtol=1e-6)
    np.testing.assert_allclose(val('lr_0'), learn.recorder.lrs, rtol=1e-6)
    np.testing.assert_allclose(val('train_loss'), learn.recorder.losses, rtol=1e-5)
    assert {'lr_0', 'mom_0', 'wd_0'} <= set(ea.Tags()['scalars']) and 'Sample results' in ea.Tags()['images']

# --- the optimizer: layer groups, freeze, fine_tune, the LR a step uses

def _trainable(learn): return [n for n, p in learn.model.named_parameters() if p.requires_grad]

@pytest.mark.parametrize('kind', KINDS)
def test_freeze_as_fastai_sgd(kind, dls, tmp_path):
    "The parameters `freeze` leaves trainable are those fastai's own SGD leaves, with the default splitter and with one of two layer groups"
    for splitter, n_groups in ((trainable_params, 1), (body_head, 2)):
        learn, ref = make(kind, dls, tmp_path, splitter=splitter), make('fastai_sgd', dls, tmp_path, splitter=splitter)
        for l in (learn, ref): l.freeze()
        assert len(learn.opt.param_lists) == len(ref.opt.param_lists) == n_groups
        assert _trainable(learn) == _trainable(ref)
        every = [n for n, _ in learn.model.named_parameters()]
        if n_groups == 1: assert _trainable(learn) == every
        else:  # the head, and BatchNorm (fastai's train_bn)
            bn = {f'{mn}.{pn}' for mn, m in learn.model.named_modules() if isinstance(m, torch.nn.BatchNorm2d) for pn, _ in m.named_parameters()}
            assert set(_trainable(learn)) == {'fc.weight', 'fc.bias'} | bn and len(bn) == 16
        assert len(learn.opt.opt.param_groups) == 2 * n_groups  # per layer group: weights; BatchNorm and biases (no decay)
        assert [g['weight_decay'] for g in learn.opt.opt.param_groups] == [learn.opt.hypers[0]['wd'], 0.] * n_groups
        for l in (learn, ref): l.unfreeze()
        assert _trainable(learn) == every

@pytest.mark.parametrize('kind', KINDS)
def test_fine_tune_as_fastai_sgd(kind, dls, tmp_path):
    "fine_tune: each step's LR per layer group is the one it has with fastai's SGD, and reaches every PyTorch group of the layer group"
    learn, ref = make(kind, dls, tmp_path, splitter=body_head), make('fastai_sgd', dls, tmp_path, splitter=body_head)
    got, want = StepLRs(), StepLRs()
    with learn.no_logging(): learn.fine_tune(1, 0.01, cbs=got)
    with ref.no_logging(), ref.no_bar(): ref.fine_tune(1, 0.01, cbs=want)
    assert len(got.hypers) == 2 * len(learn.dls.train)  # the frozen epoch, then the unfrozen one
    np.testing.assert_allclose(got.hypers, want.hypers, rtol=1e-12)
    assert got.hypers[-1][0] == pytest.approx(got.hypers[-1][1] / 100)  # fine_tune's lr_mult: the body's LR is 1/100 of the head's
    np.testing.assert_allclose(got.groups, [[a, a, b, b] for a, b in got.hypers], rtol=1e-12)  # each sub-group has its layer group's LR

@pytest.mark.parametrize('kind', KINDS)
def test_frozen_epoch_trains_the_head_only(kind, dls, tmp_path):
    "fine_tune's frozen epoch: the body's convolutions stay, the head trains"
    learn = make(kind, dls, tmp_path, splitter=body_head)
    conv0, fc0 = learn.model.prep[0].weight.detach().clone(), learn.model.fc.weight.detach().clone()
    learn.freeze()
    with learn.no_logging(): learn.fit_one_cycle(1, slice(0.01), pct_start=0.99)  # fine_tune's frozen epoch
    assert torch.equal(learn.model.prep[0].weight, conv0) and not torch.equal(learn.model.fc.weight, fc0)

class SetLR(Callback):
    "Sets the LR after the scheduler has (a higher `order`)"
    order = 70
    def before_batch(self):
        if self.training: self.opt.set_hyper('lr', 0.01 + 1e-4 * self.iter)

@pytest.mark.parametrize('kind', KINDS + ('fastai',))
def test_lrs_are_the_lrs_used(kind, dls, tmp_path):
    learn, steps = make(kind, dls, tmp_path), StepLRs()
    with learn.no_logging(): learn.fit_one_cycle(2, 0.05, cbs=[SetLR(), steps])
    want = [0.01 + 1e-4 * i for _ in range(2) for i in range(len(learn.dls.train))]
    np.testing.assert_allclose([h[-1] for h in steps.hypers], want)  # what the steps used
    np.testing.assert_allclose(learn.recorder.lrs, want)

def test_default_numerics_unchanged(dls, tmp_path):
    "nesterov_sgd's step, with its layer groups, is PyTorch's Nesterov SGD with decay on the weights only, as before"
    learn = make('cifar', dls, tmp_path)
    ref = copy.deepcopy(learn.model)
    learn.create_opt(); learn.opt.set_hyper('lr', 0.05)
    ps, (h,) = list(ref.parameters()), learn.opt.hypers
    assert h['wd'] > 0 and h['mom'] == 0.9
    opt = torch.optim.SGD([dict(params=[p for p in ps if p.ndim > 1], weight_decay=h['wd']), dict(params=[p for p in ps if p.ndim <= 1], weight_decay=0.)],
                          lr=0.05, momentum=0.9, nesterov=True)
    x, y = next(iter(learn.dls.train))
    for m, o in ((learn.model, learn.opt), (ref, opt)):
        m.train()
        for _ in range(3):
            o.zero_grad(); torch.nn.functional.cross_entropy(m(x), y).backward(); o.step()
    for a, b in zip(learn.model.parameters(), ref.parameters()): assert torch.equal(a, b)

# --- the one deliberate difference

def test_fast_loader_types(dls, tmp_path):
    "Iterating the fast loader gives plain tensors (fastai's subclasses cost the host every step); one_batch, show_batch and show_results keep fastai's types"
    fd = dls['fast']
    x, y = next(iter(fd.train))
    assert type(x) is torch.Tensor and type(y) is torch.Tensor
    x, y = fd.one_batch()
    assert isinstance(x, TensorImage) and isinstance(y, TensorCategory)
    bx, by, its = fd.show_batch(max_n=2, show=False)
    assert isinstance(bx, TensorImage) and isinstance(its[0][0], TensorImage)
    learn = make('cifar', dls, tmp_path)
    b = fd.valid.one_batch()
    _, _, dec = learn.get_preds(dl=[b], with_decoded=True)
    rx, ry, its, outs = fd.valid.show_results(b, dec, max_n=2, show=False)
    assert isinstance(rx, TensorImage) and isinstance(its[0][0], TensorImage)
