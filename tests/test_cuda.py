"""The CUDA paths on tiny fake data: a fit on both loaders in bf16 autocast and channels-last, the range test,
`train` end to end, a CUDA-trained model loaded and used where CUDA is hidden, checkpoint then `--resume`, divergence,
`bench --quick` and `torch.compile`.

Every test is skipped, with the reason, where no CUDA GPU is visible. `FAST_RESNET_TEST_DEVICE=cpu` runs them on the
CPU instead, to check their logic on a machine without a GPU: the CUDA-only assertions (bf16 autocast, CUDA random
states, the GPU's name) are then left out and everything else is checked as on the GPU. With
`FAST_RESNET_TEST_RECORD=FILE` the tests append what they measured (autocast dtype, resume differences, host syncs,
compile time) to FILE as JSON lines: `tools/gpu-programme` keeps it with the test output.
"""
import csv, json, os, subprocess, sys, time
import pytest, torch
from conftest import ROOT, CACHE, cli

DEV = os.environ.get('FAST_RESNET_TEST_DEVICE', 'cuda')
assert DEV in ('cuda', 'cpu'), f"FAST_RESNET_TEST_DEVICE must be cuda or cpu, got {DEV!r}"
CUDA = DEV == 'cuda'
pytestmark = pytest.mark.skipif(CUDA and not torch.cuda.is_available(),
                                reason='no CUDA GPU is visible (FAST_RESNET_TEST_DEVICE=cpu checks these tests on the CPU)')
LOADERS = ('fast', 'datablock')
# two epochs of a width-8 network on 400 fake images: seconds on a GPU
ARGS = ['--epochs', '2', '--peak-epoch', '1', '--bs', '32', '--width', '8', '--lr-min', '0.004', '--lr-max', '0.1',
        '--seed', '0', '--device', DEV]

def record(**kw):
    "Append what a test measured to $FAST_RESNET_TEST_RECORD, if set"
    f = os.environ.get('FAST_RESNET_TEST_RECORD')
    if f:
        with open(f, 'a') as fh: fh.write(json.dumps(dict(device=DEV, **kw), default=str) + '\n')

def ok(r):
    assert r.returncode == 0, (r.returncode, r.stdout[-2000:], r.stderr[-4000:])
    return r

@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from fast_resnet.data import make_fake_cifar
    return make_fake_cifar(tmp_path_factory.mktemp('cuda') / 'cifar', n_train=40, n_test=4)  # 400 train, 40 test images

def _dls(data, loader, bs=32):
    from fast_resnet.data import read_cifar
    d = read_cifar(data)
    if loader == 'fast':
        from fast_resnet.fast_data import fast_dls
        return fast_dls(d, bs=bs, device=DEV, seed=0, cache_dir=CACHE)
    from fast_resnet.augment import cifar_dls
    return cifar_dls(d, bs=bs, device=DEV, workers=None if CUDA else 0)  # on CUDA fastai's worker processes, as `train` uses

def _probe(model):
    "Record, at every training forward of the first convolution, its device, dtypes, autocast and memory formats"
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    seen = []
    def hook(m, i, o):
        if not m.training: return
        t = o.device.type
        seen.append(dict(device=t, out_dtype=o.dtype, autocast=torch.is_autocast_enabled(t),
                         autocast_dtype=torch.get_autocast_dtype(t) if torch.is_autocast_enabled(t) else None,
                         weight_cl=m.weight.is_contiguous(memory_format=torch.channels_last),
                         out_cl=o.is_contiguous(memory_format=torch.channels_last)))
    conv.register_forward_hook(hook)
    return seen

@pytest.mark.parametrize('loader', LOADERS)
def test_fit_bf16_channels_last(data, loader, tmp_path):
    from fast_resnet.learner import cifar_learner
    dls = _dls(data, loader)
    learn = cifar_learner(dls, c=8, path=tmp_path)
    seen = _probe(learn.model)
    learn.fit_one_cycle(2, 0.1, div=25, div_final=25, pct_start=0.5)
    assert len(seen) == 2 * len(dls.train), len(seen)
    assert all(s['device'] == DEV for s in seen), seen[0]
    assert all(s['weight_cl'] for s in seen), seen[0]  # ChannelsLast is in effect
    if CUDA:  # autocast on CUDA only (precision auto): bf16 where the GPU has bf16 tensor cores, fp16 below; cuDNN then computes in channels-last too
        half = torch.bfloat16 if torch.cuda.get_device_capability() >= (8, 0) else torch.float16
        assert all(s['autocast'] and s['autocast_dtype'] == half and s['out_dtype'] == half for s in seen), seen[0]
        assert all(s['out_cl'] for s in seen), seen[0]
    else: assert not any(s['autocast'] for s in seen) and seen[0]['out_dtype'] == torch.float32
    assert all(p.device.type == DEV for p in learn.model.parameters())
    rows = learn.recorder.rows
    assert [r['epoch'] for r in rows] == [1, 2]
    assert all(torch.isfinite(torch.tensor([r['train_loss'], r['test_loss']])).all() and 0 <= r['test_acc'] <= 1 for r in rows), rows
    record(test='fit', loader=loader, first_conv={k: str(v) for k, v in seen[0].items()}, rows=rows)

def test_lr_find_restores_weights(data, tmp_path):
    "fastai's range test on the device (smoothed loss kept there), and the weights back as they were"
    from fast_resnet.learner import cifar_learner
    learn = cifar_learner(_dls(data, 'fast'), c=8, path=tmp_path)
    learn.fit(1, 1e-3)  # the model on the device with an optimizer, as before the range test of a resumed notebook
    before = {k: v.detach().clone() for k, v in learn.model.state_dict().items()}
    learn.lr_find(start_lr=1e-5, end_lr=10, num_it=24, show_plot=False, suggest_funcs=None)
    losses = torch.tensor([float(l) for l in learn.recorder.losses])
    assert len(losses) >= 10 and torch.isfinite(losses[:10]).all(), losses
    after = learn.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

@pytest.fixture(scope='module')
def runs(data, tmp_path_factory):
    "One `train` run per loader through the command line, made when first asked for"
    made = {}
    def get(loader):
        if loader not in made:
            out = tmp_path_factory.mktemp(f'train-{loader}') / 'run'
            t = time.time()
            r = ok(cli('train', '--data', data, '--out', out, '--loader', loader, *ARGS, timeout=600))
            made[loader] = out, r
            record(test='train', loader=loader, wall_seconds=time.time() - t, metrics=json.loads((out/'metrics.json').read_text()))
        return made[loader]
    return get

RUN_FILES = ('config.json', 'history.csv', 'lr_schedule.csv', 'metrics.json', 'checkpoint.pth', 'model.pkl', 'model.pth',
             'batch.png', 'cyclic_lr.png', 'one_cycle.png', 'curves.png', 'misclassified.png', 'confusion.png')

@pytest.mark.parametrize('loader', LOADERS)
def test_train_cli(runs, loader):
    out, r = runs(loader)
    for f in RUN_FILES: assert (out/f).is_file() and (out/f).stat().st_size > 0, f
    cfg, m = (json.loads((out/f).read_text()) for f in ('config.json', 'metrics.json'))
    assert cfg['device_used'] == DEV and cfg['loader'] == loader
    assert m['complete'] is True and m['device'] == DEV and 0 <= m['test_acc'] <= 1 and 0 <= m['tta_acc'] <= 1, m
    assert [int(x['epoch']) for x in csv.DictReader(open(out/'history.csv'))] == [1, 2]

def _py(code, *args, env=None, timeout=600):
    "Run `python -c code args` with the environment `cli` gives the package"
    e = {k: v for k, v in os.environ.items() if k != 'FAST_RESNET_DATA'}
    e.update(PYTHONUNBUFFERED='1', MPLBACKEND='Agg', FAST_RESNET_CACHE=CACHE, **(env or {}))
    return subprocess.run([sys.executable, '-c', code, *map(str, args)], capture_output=True, text=True, cwd=ROOT, env=e,
                          timeout=timeout)

HIDDEN = r'''
import json, sys, torch
assert not torch.cuda.is_available(), "CUDA should be hidden here"
from fast_resnet.inference import load, predict
learn = load(sys.argv[1], cpu=True)
bad = [n for n, p in learn.model.state_dict().items() if p.device.type != 'cpu' or (p.is_floating_point() and p.dtype != torch.float32)]
assert not bad, bad
files = sys.argv[2:]
probs, _ = learn.get_preds(dl=learn.dls.test_dl(files))
print(json.dumps(dict(predict=predict(learn, files), probs=probs.tolist(), cbs=sorted(type(c).__name__ for c in learn.cbs))))
'''

def test_export_then_load_without_cuda(runs, data):
    "A model trained on the device, loaded with `load(cpu=True)` in a process that cannot see CUDA, predicts like on the device"
    out, _ = runs('fast')
    imgs = sorted((data/'test').glob('*/*.png'))[::10][:4]
    r = ok(_py(HIDDEN, out, *imgs, env={'CUDA_VISIBLE_DEVICES': ''}))
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(res['predict']) == len(imgs) and all(0 < conf <= 1 for _, conf in res['predict'])
    assert 'MixedPrecision' not in res['cbs'] and 'ChannelsLast' not in res['cbs']
    p = ok(cli('predict', out/'model.pkl', *imgs, env={'CUDA_VISIBLE_DEVICES': ''}))
    assert len(p.stdout.strip().splitlines()) == len(imgs)
    from fast_resnet.inference import load  # the same model where it was trained (bf16 autocast on CUDA)
    learn = load(out, cpu=False)
    probs, _ = learn.get_preds(dl=learn.dls.test_dl(imgs))
    diff = (probs.float() - torch.tensor(res['probs'])).abs().max().item()
    record(test='export', max_prob_diff_device_vs_cpu=diff)
    assert diff < 0.05, diff  # bf16 on the device against float32 on the CPU

def test_divergence(data, tmp_path):
    out = tmp_path/'div'
    r = cli('train', '--data', data, '--out', out, '--epochs', '4', '--peak-epoch', '2', '--bs', '32', '--width', '8',
            '--lr-min', '1e19', '--lr-max', '1e20', '--seed', '0', '--device', DEV, timeout=600)
    assert r.returncode == 3, (r.returncode, r.stderr[-3000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: training diverged'), r.stderr[-3000:]
    m = json.loads((out/'metrics.json').read_text())
    assert m['complete'] is False and m['diverged']['epoch'] >= 1
    assert not (out/'model.pkl').exists()

def test_stop_on_divergence_api(data, tmp_path):
    "The flag is kept on the device and read every `every` batches: the fit stops at the first read after the NaN"
    from fastai.vision.all import Callback
    from fast_resnet.learner import cifar_learner
    from fast_resnet.checkpoint import StopOnDivergence
    class NaNAt(Callback):
        order = 40
        def after_loss(self):
            if self.training and self.iter >= 1: self.learn.loss = self.learn.loss * float('nan')
    learn = cifar_learner(_dls(data, 'fast'), c=8, path=tmp_path)
    stop = StopOnDivergence(every=4)
    learn.fit(2, 1e-3, cbs=[NaNAt(), stop])
    assert (stop.diverged['epoch'], stop.diverged['iteration']) == (1, 4)
    assert learn.recorder.rows == []

# Resume: the killed run dies right after the checkpoint of epoch 2 is written (as a SIGKILL there would), then
# `--resume` finishes it. Every run of this test asks torch for deterministic kernels where it has them. Where CUDA
# still sums in a varying order (atomics), two uninterrupted runs differ a little; the resumed run must then be as
# close to the reference as a repeat of it is (10x margin, for the chaotic growth of such differences); where the two
# uninterrupted runs are identical, the resumed run must be identical too.
RUNNER = r'''
import os, sys, torch
torch.use_deterministic_algorithms(True, warn_only=True)
stop = int(os.environ.get('FR_TEST_EXIT_AFTER_EPOCH', '0'))
if stop:
    import fast_resnet.checkpoint as ck
    _after = ck.Checkpoint.after_epoch
    def after_epoch(self):
        _after(self)
        if self.epoch + 1 == stop: os._exit(9)
    ck.Checkpoint.after_epoch = after_epoch
from fast_resnet.cli import main
main(sys.argv[1:])
'''
RESUME_ARGS = ['--epochs', '4', '--peak-epoch', '1', '--bs', '32', '--width', '8', '--lr-min', '0.004', '--lr-max', '0.1',
               '--seed', '1', '--device', DEV]
DET = {'CUBLAS_WORKSPACE_CONFIG': ':4096:8'}

def _rel_diff(a:dict, b:dict) -> float:
    "The largest relative difference ||a-b|| / ||b|| over the float tensors of two state dicts (the others must be equal)"
    assert a.keys() == b.keys()
    worst = 0.
    for k in a:
        x, y = a[k], b[k]
        if not x.is_floating_point():
            assert torch.equal(x, y), k
            continue
        worst = max(worst, ((x.double() - y.double()).norm() / (y.double().norm() + 1e-12)).item())
    return worst

def _history(run):
    return [{k: float(v) for k, v in r.items() if k != 'seconds'} for r in csv.DictReader(open(run/'history.csv'))]

@pytest.mark.parametrize('loader,precision', [('fast', 'auto'), ('datablock', 'auto'), ('fast', 'fp16')])
def test_checkpoint_then_resume(data, loader, precision, tmp_path):
    "... and in fp16, with its gradient scaler's state saved and restored"
    args = ['train', '--data', data, '--loader', loader, *RESUME_ARGS, '--precision', precision]
    ref, rep, out = tmp_path/'ref', tmp_path/'rep', tmp_path/'killed'
    for o in (ref, rep): ok(_py(RUNNER, *args, '--out', o, env=DET))
    r = _py(RUNNER, *args, '--out', out, env={**DET, 'FR_TEST_EXIT_AFTER_EPOCH': '2'})
    assert r.returncode == 9, (r.returncode, r.stderr[-3000:])
    assert not (out/'metrics.json').exists()
    ck = torch.load(out/'checkpoint.pth', weights_only=False)
    assert ck['epoch'] == 2
    if CUDA: assert 'cuda' in ck['rng'] and ck['device_type'] == 'cuda'  # this GPU's generator (Cutout on the fast path) is saved
    if precision == 'fp16': assert ck['scaler'] is not None and ck['scaler']['scale'] > 0  # the scale goes on after a resume
    if loader == 'fast':
        gens = ck['rng']['generators']
        assert gens[0] is not None and gens[0].device.type == 'cpu'  # the loader's device generator, saved as a CPU state
    ok(_py(RUNNER, *args, '--out', out, '--resume', env=DET))
    a, b, c = (torch.load(p/'model.pth') for p in (out, ref, rep))
    assert all(v.device.type == 'cpu' for v in a.values())
    got, spread = _rel_diff(a, b), _rel_diff(c, b)
    h, hr, hc = _history(out), _history(ref), _history(rep)
    assert [x['epoch'] for x in h] == [1, 2, 3, 4] and [x['lr'] for x in h] == [x['lr'] for x in hr]  # each epoch once, same LRs
    record(test='resume', loader=loader, precision=precision, resumed_vs_ref=got, repeat_vs_ref=spread, history=h, ref_history=hr, repeat_history=hc)
    if spread == 0:  # the device computes this run exactly again: resuming must too
        assert got == 0 and h == hr, (got, h, hr)
        assert (out/'lr_schedule.csv').read_text() == (ref/'lr_schedule.csv').read_text()
    else: assert got <= max(10 * spread, 1e-4), f"resumed run {got:.3g} from the reference; a repeat {spread:.3g}"
    assert json.loads((out/'metrics.json').read_text())['complete'] is True

def test_bench_quick(data, tmp_path):
    out = tmp_path/'bench'
    r = ok(cli('bench', '--quick', '--device', DEV, '--data', data, '--out', out, timeout=600))
    b = json.loads((out/'bench.json').read_text())
    assert b['device'] == DEV and b['quick'] is True
    for k in ('fit_seconds', 'images_per_second', 'mfu', 'peak_tflops', 'plain_torch_images_per_second',
              'naive_fastai_images_per_second', 'overhead_vs_plain', 'speedup_vs_naive'):
        assert b[k] is not None and b[k] > 0, (k, b[k])
    assert 0 <= b['test_acc'] <= 1
    if CUDA:
        # the peak is of the precision the fit used: float16 on a T4 or V100, bfloat16 from an A100 on
        assert b['peak_dtype'] == {'fp16': 'float16', 'bf16': 'bfloat16'}[b['precision']] and b['device_name'] and b['compute_capability']
        assert b['host_syncs_per_batch'] is not None and b['host_syncs_per_batch'] >= 0  # counted with CUDA's sync debug mode
    assert b['reads_in_step'] == 0 and b['reads_per_step'] <= 0.05, b  # on CUDA the dispatcher sees every copy to the host
    assert 'MFU' in r.stdout
    record(test='bench', **{k: b.get(k) for k in ('device_name', 'precision', 'reads_per_step', 'reads_in_step', 'host_syncs_per_batch', 'images_per_second', 'mfu',
                                                   'overhead_vs_plain', 'speedup_vs_naive', 'compile_seconds')})

def test_compile(data, tmp_path):
    "`cifar_learner(compile=True)` trains through `torch.compile` on the device, agrees with the eager model, and exports"
    import torch._dynamo
    from fast_resnet.learner import cifar_learner, Compiled
    from fast_resnet.inference import export
    torch._dynamo.reset()
    dls = _dls(data, 'fast')
    learn = cifar_learner(dls, c=8, path=tmp_path, compile=True)
    assert isinstance(learn.model, Compiled)
    t = time.time()
    learn.fit(1, 0.05)
    secs = time.time() - t
    graphs = torch._dynamo.utils.counters['stats']['unique_graphs']
    assert graphs >= 1, dict(torch._dynamo.utils.counters['stats'])
    assert torch.isfinite(torch.tensor(learn.recorder.rows[-1]['train_loss']))
    x, _ = dls.valid.one_batch()
    learn.model.eval()
    with torch.no_grad(), torch.autocast(DEV, dtype=torch.bfloat16, enabled=CUDA):  # as in the fit's validation: no new graph
        y, y0 = learn.model(x).float(), learn.model.module(x.as_subclass(torch.Tensor)).float()
    err = ((y - y0).norm() / y0.norm()).item()
    record(test='compile', fit_seconds=secs, unique_graphs=graphs, rel_err_vs_eager=err)
    assert err < (0.1 if CUDA else 1e-3), err  # in bf16 on CUDA, kernels fused otherwise round otherwise; a wrong graph is off by ~1
    learn.model = learn.model.module  # as `bench` does: the exported model is the plain one
    export(learn, tmp_path/'export')
    assert (tmp_path/'export'/'model.pkl').stat().st_size > 0

def test_fp16_first_steps_skipped(data, tmp_path):
    "fp16 whose first steps overflow: they are skipped on the device (a fused SGD) and counted, and the steps after them train"
    from fastai.vision.all import Learner
    from fast_resnet.learner import CrossEntropy
    from fast_resnet.custom_resnet import CustomResNet
    from fast_resnet.levers import opt_func
    from fast_resnet.precision import DeviceMixedPrecision
    dls = _dls(data, 'fast')
    torch.manual_seed(0)
    learn = Learner(dls, CustomResNet(8), loss_func=CrossEntropy(), opt_func=opt_func('nesterov', 5e-4, fused=True), wd=None,
                    cbs=DeviceMixedPrecision('fp16', init_scale=2.**40), path=tmp_path)
    learn.fit(2, 1e-2)
    record(test='fp16_skips', skipped=learn.skipped_steps, steps=2 * len(dls.train))
    assert 1 <= learn.skipped_steps < 2 * len(dls.train)
    assert all(p.isfinite().all() for p in learn.model.parameters())  # the momentum of a skipped first step was zero, not garbage

def test_cuda_graphs(data, tmp_path):
    "`--cuda-graphs` (torch.compile, mode reduce-overhead) trains end to end where CUDA is; elsewhere it is one line"
    out = tmp_path/'cg'
    r = cli('train', '--data', data, '--out', out, '--cuda-graphs', *ARGS, timeout=900)
    if not CUDA:
        assert r.returncode == 2 and '--cuda-graphs needs a CUDA GPU' in r.stderr
        return
    ok(r)
    m = json.loads((out/'metrics.json').read_text())
    record(test='cuda_graphs', metrics=m)
    assert m['complete'] is True and 0 <= m['test_acc'] <= 1

@pytest.mark.parametrize('opt', ['sgd', 'adam'])
def test_fp16_fastai_optimizers_no_read(data, tmp_path, opt):
    "fp16 with fastai's own SGD or Adam (no fused step): an overflowing step is skipped on the device, nothing read from it in a step"
    from fast_resnet.learner import cifar_learner
    from fast_resnet.host import DeviceReads, ReadPhases
    learn = cifar_learner(_dls(data, 'fast'), c=8, opt=opt, precision='fp16', path=tmp_path)
    learn.mixed_precision.kwargs['init_scale'] = 2.**40  # the first steps overflow
    reads = DeviceReads(DEV)
    with reads, learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2, cbs=ReadPhases(reads))
    in_step = {k: v for k, v in reads.where.items() if k.startswith('step: ')}
    record(test='fp16_fastai_opt', opt=opt, skipped=learn.skipped_steps, reads=dict(reads.where))
    # on the CPU the scaler's own `.to(device)` look like copies to the host: there only `.item()` counts
    assert (in_step == {} if CUDA else 'step: item' not in in_step), in_step
    assert learn.skipped_steps >= 1 and all(p.isfinite().all() for p in learn.model.parameters())
