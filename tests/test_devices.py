"""Right on every device a user has, tested here by simulating the device: the precision chosen for a T4, a V100, an
A100, an H100, MPS and the CPU; the one-line refusals and warnings; what config.json records; fp16's gradient scaler
through a checkpoint and a resume; checkpoints written on a GPU (or two) resumed on the CPU."""
import contextlib, io, json, os, signal, subprocess, sys, time
from unittest.mock import patch
import pytest, torch
from conftest import ROOT, CACHE, cli, assert_bad_input

GPUS = {'Tesla T4': (7, 5), 'Tesla V100-SXM2-16GB': (7, 0), 'NVIDIA A100-SXM4-80GB': (8, 0), 'NVIDIA H100 80GB HBM3': (9, 0)}

@contextlib.contextmanager
def simulated(gpu=None, mps=False):
    "torch's answers about the devices, as on a machine with the CUDA GPU `gpu` (a name of `GPUS`) or Apple's MPS"
    cc = GPUS.get(gpu)
    with patch.object(torch.cuda, 'is_available', lambda: gpu is not None), \
         patch.object(torch.cuda, 'get_device_capability', lambda d=None: cc), \
         patch.object(torch.cuda, 'get_device_name', lambda d=None: gpu), \
         patch.object(torch.cuda, 'is_bf16_supported', lambda including_emulation=True: gpu is not None and (including_emulation or cc >= (8, 0))), \
         patch.object(torch.cuda, 'get_arch_list', lambda: [f'sm_{cc[0]}{cc[1]}'] if cc else []), \
         patch.object(torch.backends.mps, 'is_available', lambda: mps):  # a torch build with kernels for the GPU
        yield

def choose(precision='auto', **kw):
    "`(device, precision, stderr)` that a run would use on the simulated machine"
    from fast_resnet.core import train_settings
    from fast_resnet.device import check_device_settings, resolve_precision
    import fast_resnet.device as device
    device._said.clear()
    err = io.StringIO()
    with simulated(**kw), contextlib.redirect_stderr(err):
        s = train_settings(precision=precision, seed=0)
        dev = check_device_settings(s)
        return dev, resolve_precision(s['precision'], dev), err.getvalue()

@pytest.mark.parametrize('gpu,expected', [('Tesla T4', 'fp16'), ('Tesla V100-SXM2-16GB', 'fp16'),
                                          ('NVIDIA A100-SXM4-80GB', 'bf16'), ('NVIDIA H100 80GB HBM3', 'bf16')])
def test_auto_precision_by_gpu(gpu, expected):
    assert choose(gpu=gpu) == ('cuda', expected, '')

def test_auto_precision_mps_and_cpu():
    assert choose(mps=True) == ('mps', 'fp32', '')
    assert choose() == ('cpu', 'fp32', '')

def test_emulated_bf16_warns():
    dev, p, err = choose('bf16', gpu='Tesla T4')
    assert (dev, p) == ('cuda', 'bf16')
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('warning: --precision bf16 on Tesla T4 (compute capability 7.5) is emulated')
    assert 'auto would use fp16' in lines[0]
    assert choose('bf16', gpu='NVIDIA H100 80GB HBM3')[2] == ''  # native there: no warning
    assert choose('fp16', gpu='NVIDIA A100-SXM4-80GB')[1:] == ('fp16', '')  # an explicit choice the GPU runs

def test_refusals(tmp_path):
    from fast_resnet.core import FastResnetError
    with pytest.raises(FastResnetError, match='bf16 does not run on Tesla K80'):
        with patch.dict(GPUS, {'Tesla K80': (3, 7)}):
            with simulated(gpu='Tesla K80'), patch.object(torch.cuda, 'is_bf16_supported', lambda including_emulation=True: False):
                from fast_resnet.device import resolve_precision
                resolve_precision('bf16', 'cuda')
    assert_bad_input(cli('train', '--precision', 'fp8', '--out', tmp_path/'a'), '--precision must be one of auto, bf16, fp16, fp32')
    if not torch.cuda.is_available():
        assert_bad_input(cli('train', '--cuda-graphs', '--device', 'cpu', '--out', tmp_path/'b'), '--cuda-graphs needs a CUDA GPU')

@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from fast_resnet.data import make_fake_cifar
    return make_fake_cifar(tmp_path_factory.mktemp('dev') / 'cifar', n_train=20, n_test=2)

ARGS = ['--epochs', '4', '--peak-epoch', '1', '--bs', '16', '--width', '8', '--lr-min', '0.004', '--lr-max', '0.1', '--seed', '3',
        '--device', 'cpu']

def run(data, out, *args):
    r = cli('train', '--data', data, '--out', out, *ARGS, *args)
    assert r.returncode == 0, r.stderr[-3000:]
    return r

def test_config_records_the_device_and_precision(data, tmp_path):
    run(data, tmp_path/'r')
    cfg, m = (json.loads((tmp_path/'r'/f).read_text()) for f in ('config.json', 'metrics.json'))
    assert (cfg['precision'], cfg['precision_used'], cfg['device_type'], cfg['compute_capability']) == ('auto', 'fp32', 'cpu', None)
    assert 'CPU' in cfg['device_name'] and cfg['cutout'] == 8
    assert (m['precision'], m['skipped_steps']) == ('fp32', 0)
    report = (tmp_path/'r'/'report.md').read_text()
    assert 'fp32' in report and cfg['device_name'] in report

def test_fp16_scaler_through_a_resume(data, tmp_path):
    "fp16 on the CPU (a CPU-capable GradScaler): the scaler's state is checkpointed, and a killed run resumes to the same weights and scale"
    ref = tmp_path/'ref'
    run(data, ref, '--precision', 'fp16')
    ck = torch.load(ref/'checkpoint.pth', weights_only=False)
    assert ck['scaler'] is not None and ck['scaler']['scale'] > 0
    m = json.loads((ref/'metrics.json').read_text())
    assert m['precision'] == 'fp16' and m['skipped_steps'] >= 0
    out = tmp_path/'killed'
    env = {k: v for k, v in os.environ.items() if k != 'FAST_RESNET_DATA'}
    p = subprocess.Popen([sys.executable, '-m', 'fast_resnet', 'train', '--data', str(data), '--out', str(out), *ARGS, '--precision', 'fp16'],
                         cwd=ROOT, env={**env, 'MPLBACKEND': 'Agg', 'FAST_RESNET_CACHE': CACHE}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.time()
    while time.time() - t0 < 300 and p.poll() is None:
        if (out/'checkpoint.pth').exists() and torch.load(out/'checkpoint.pth', weights_only=False)['epoch'] >= 2: break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL); p.wait()
    assert p.returncode == -signal.SIGKILL
    half = torch.load(out/'checkpoint.pth', weights_only=False)
    r = cli('train', '--data', data, '--out', out, '--resume', *ARGS, '--precision', 'fp16')
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = (torch.load(d/'model.pth') for d in (out, ref))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same weights: the scale went on where it was
    assert torch.load(out/'checkpoint.pth', weights_only=False)['scaler'] == ck['scaler']
    assert half['scaler'] is not None

def gpu_written(ck, n_gpus=1):
    "The checkpoint `ck` (written on the CPU) as a run on `n_gpus` CUDA GPUs would have written it: CUDA-format random states"
    cuda_state = lambda i: torch.tensor([i] * 16, dtype=torch.uint8)  # a CUDA generator's state is 16 bytes (seed, offset)
    def on_gpu(rng, i): return dict(rng, device_type='cuda', cuda=cuda_state(i),
                                    generators=[None if g is None else cuda_state(i) for g in rng.get('generators', [])])
    ck = dict(ck, device_type='cuda', rng=on_gpu(ck['rng'], 0))
    if n_gpus > 1: ck['rng_ranks'] = [on_gpu(ck['rng'], i) for i in range(n_gpus)]
    return ck

@pytest.mark.parametrize('n_gpus', [1, 2])
def test_gpu_checkpoint_resumes_on_cpu(data, tmp_path, n_gpus):
    "A run checkpointed on a GPU (or data-parallel on two) continues on the CPU: one line says the device's random states were reseeded"
    import shutil
    ref = tmp_path/'ref'
    run(data, ref, '--epochs', '4')
    out = tmp_path/'moved'
    shutil.copytree(ref, out)
    for f in ('metrics.json', 'model.pkl', 'model.pth', 'report.md'): (out/f).unlink()
    # as if it had stopped after epoch 2 on the GPU: its checkpoint of epoch 2, its records truncated on resume
    ck = torch.load(ref/'checkpoint.pth', weights_only=False)
    ck = gpu_written(dict(ck, epoch=2), n_gpus)
    torch.save(ck, out/'checkpoint.pth')
    r = cli('train', '--data', data, '--out', out, '--resume', *ARGS)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [l for l in r.stdout.splitlines() if 'cannot carry' in l]
    assert len(lines) == 1 and 'checkpointed on cuda, this run continues on cpu' in lines[0], r.stdout
    assert 'Traceback' not in r.stderr
    m = json.loads((out/'metrics.json').read_text())
    assert m['complete'] is True and m['epochs'] == 4
    lr_a, lr_b = ((d/'lr_schedule.csv').read_text() for d in (out, ref))
    assert lr_a == lr_b  # the schedule goes on unchanged

# ---------------------------------------------------------------- issue 24: a GPU's first run, simulated on the CPU

def main_exit(*args):
    "`fast_resnet.cli.main(args)` in this process: `(exit code, stdout, stderr)`; an exception it lets through fails the test"
    from fast_resnet.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: main([str(a) for a in args])
        except SystemExit as e: return e.code, out.getvalue(), err.getvalue()
    return 0, out.getvalue(), err.getvalue()

TINY = ['--epochs', '2', '--peak-epoch', '1', '--bs', '16', '--width', '8', '--lr-min', '0.004', '--lr-max', '0.1', '--seed', '0']
CU13 = ['sm_75', 'sm_80', 'sm_86', 'sm_90', 'sm_100', 'sm_120']  # torch.cuda.get_arch_list() of the CUDA 13 wheels

@contextlib.contextmanager
def machine(gpu=None, nvidia=None, cuda='13.0', archs=CU13):
    "A machine whose torch sees the CUDA GPU `gpu` (a name of `GPUS`), or sees none while the NVIDIA GPU `nvidia` (a dict: name, driver) is there"
    import fast_resnet.device as device
    with simulated(gpu), patch.object(torch.cuda, 'get_arch_list', lambda: list(archs)), patch.object(torch.version, 'cuda', cuda), \
         patch.object(device, '_nvidia', lambda: nvidia):
        yield

def assert_one_line(code, err, *contains, exit_code=2):
    lines = err.strip().splitlines()
    assert code == exit_code and len(lines) == 1 and lines[0].startswith('error: '), (code, err)
    for c in contains: assert c in lines[0], (c, lines[0])
    assert 'Traceback' not in err

T4 = dict(name='Tesla T4', driver='535.104.05')

@pytest.mark.parametrize('case', ['cpu-only torch', 'cpu-only torch, --device cuda', 'driver too old', 'V100 with CUDA 13 wheels'])
def test_gpu_torch_cannot_use(case, data, tmp_path):
    "Finding 2: a GPU the installed torch cannot use is one line that says why and which torch to install, exit 2, before any work"
    dev = 'cuda' if 'device cuda' in case else 'auto'
    kw = dict(gpu='Tesla V100-SXM2-16GB') if 'V100' in case else dict(nvidia=T4, cuda=None if 'cpu-only' in case else '13.0')
    with machine(**kw): code, out, err = main_exit('train', '--data', data, '--out', tmp_path/'r', '--device', dev, *TINY)
    expect = {'cpu-only torch': ['Tesla T4', 'is a CPU-only build', '--index-url https://download.pytorch.org/whl/cu126', '--device cpu'],
              'driver too old': ['driver 535.104.05', 'too old for torch', 'CUDA 13.0', 'driver 580.65 or newer', 'whl/cu126'],
              'V100 with CUDA 13 wheels': ['no CUDA kernels for the Tesla V100-SXM2-16GB (compute capability 7.0; this build has sm_75 to sm_120)',
                                           "install torch's CUDA 12.6 build", 'whl/cu126']}[case.split(',')[0]]
    assert_one_line(code, err, *expect)
    assert 'no CUDA GPU is visible' not in err and not (tmp_path/'r').exists()

def test_train_names_device_precision_torch(data, tmp_path):
    "The first lines of `train` (here written to a pipe, as to a log file) name the device, the precision and the torch build"
    r = run(data, tmp_path/'r')
    lines = r.stdout.splitlines()
    i = next(i for i, l in enumerate(lines) if l.startswith('device cpu: '))
    assert i <= 2 and 'CPU' in lines[i] and '; precision fp32; ' in lines[i] and f'torch {torch.__version__} (' in lines[i], lines[:3]
    assert ('CPU-only build' if torch.version.cuda is None else f'built for CUDA {torch.version.cuda}') in lines[i]
    assert not any('epoch' in l or 'LR range test' in l for l in lines[:i])

def test_device_line_names_the_gpu():
    from fast_resnet.device import device_line
    with machine(gpu='Tesla T4'): line = device_line('cuda', 'fp16')
    assert line.startswith('device cuda: Tesla T4, compute capability 7.5; precision fp16; torch ') and 'built for CUDA 13.0' in line
    with machine(cuda=None): assert device_line('cpu', 'fp32').endswith('(CPU-only build)')

@pytest.fixture(scope='module')
def dls(data):
    from fast_resnet.data import read_cifar
    from fast_resnet.fast_data import fast_dls
    return fast_dls(read_cifar(data), bs=16, n_train=48, n_test=16, device='cpu', seed=0, cache_dir=CACHE)  # 3 steps an epoch

class Overflow:
    "A callback that makes the first training step of each fit overflow in fp16 (the loss it differentiates infinite)"
    def __new__(cls):
        from fastai.vision.all import Callback
        class _Overflow(Callback):
            order = 40
            def before_fit(self): self.n = 0
            def after_loss(self):
                if self.training and self.n == 0: self.learn.loss_grad = self.learn.loss_grad * float('inf')
                if self.training: self.n += 1
        return _Overflow()

def test_fp16_momentum_zero_after_lr_find(dls, tmp_path):
    "Finding 3: after fastai's range test reloads the (empty) optimizer state, a skipped first fp16 step leaves zero momentum, not `empty_like`'s garbage"
    from fast_resnet.learner import cifar_learner
    torch.manual_seed(0)
    learn = cifar_learner(dls, c=8, precision='fp16', path=tmp_path)  # fp16 on the CPU: the fused ScaledSGD, as on a T4 or V100
    with learn.no_bar(), learn.no_logging(): learn.lr_find(num_it=4, show_plot=False, suggest_funcs=None)
    empty_like = torch.empty_like  # what uninitialised memory may hold, made certain: the fused step reads it if the first step skips
    with patch.object(torch, 'empty_like', lambda t, **kw: empty_like(t, **kw).fill_(1e30)), learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-2, cbs=Overflow())
    assert learn.skipped_steps >= 1
    assert all(p.isfinite().all() and p.abs().max() < 1e3 for p in learn.model.parameters())
    bufs = [s['momentum_buffer'] for s in learn.opt.opt.state.values()]
    assert bufs and all(b.isfinite().all() and b.abs().max() < 1e3 for b in bufs)

@pytest.mark.parametrize('opt', ['sgd', 'adam'])
def test_fp16_fastai_optimizers_read_nothing(dls, tmp_path, opt):
    "Finding 6: fp16 with fastai's own SGD or Adam skips an overflowing step on the device: no `.item()` in the step, the weights and state as before it"
    from fastai.vision.all import Callback
    from fast_resnet.learner import cifar_learner
    from fast_resnet.host import DeviceReads, ReadPhases
    class Snap(Callback):
        order = 20  # after the mixed precision's `after_step` (10)
        def before_fit(self): self.before, self.after = {k: v.clone() for k, v in self.learn.model.state_dict().items()}, None
        def after_step(self):
            if self.after is None:
                self.after = {k: v.clone() for k, v in self.learn.model.state_dict().items()}
                self.state = [v.clone() for s in self.learn.opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    torch.manual_seed(0)
    learn = cifar_learner(dls, c=8, opt=opt, precision='fp16', path=tmp_path)
    reads, snap = DeviceReads('cpu'), Snap()
    with reads, learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2, cbs=[Overflow(), snap, ReadPhases(reads)])
    # the scaler's own `.to(device)` on the CPU count as copies here; `.item()` is what reads the flag
    assert reads.where.get('step: item', 0) == 0, dict(reads.where)
    assert learn.skipped_steps == 1
    params = [k for k, v in snap.before.items() if v.is_floating_point() and 'running' not in k]
    assert all(torch.equal(snap.before[k], snap.after[k]) for k in params)  # the skipped step changed no weight
    assert all(torch.equal(t, torch.zeros_like(t)) for t in snap.state if t.is_floating_point())  # its state: as new
    assert all(p.isfinite().all() for p in learn.model.parameters())

def test_resume_on_other_device_same_loader_permutation(dls, tmp_path, monkeypatch):
    "Finding 7: resumed on another kind of device, every rank's loader is reseeded alike (the same permutation, each its shard)"
    import fast_resnet.checkpoint as ckm
    from fast_resnet.learner import cifar_learner
    learn = cifar_learner(dls, c=8, path=tmp_path); learn.create_opt()
    ck = gpu_written(dict(epoch=2, model=learn.model.state_dict(), opt=learn.opt.state_dict(), rng=ckm.rng_states(dls), ema=None,
                          scaler=None, device_type='cpu'), n_gpus=2)
    torch.save(ck, tmp_path/'checkpoint.pth')
    states = []
    for r in (0, 1):
        monkeypatch.setattr(ckm, 'rank', lambda r=r: r)
        with contextlib.redirect_stdout(io.StringIO()): ckm.load_checkpoint(learn, tmp_path, seed=5)
        states.append(dls.train.generator().get_state())
    assert torch.equal(states[0], states[1])

def test_ema_starts_from_broadcast_weights(dls, tmp_path):
    "Finding 7: `WeightEMA` copies the model after DDP (fastai's `DistributedTrainer`, order 11) has given it rank 0's weights"
    from fastai.vision.all import Callback
    from fast_resnet.learner import cifar_learner
    from fast_resnet.levers import WeightEMA
    from fast_resnet.distributed import DDPTrainer
    torch.manual_seed(0)
    rank0 = {k: v.clone() for k, v in cifar_learner(dls, c=8, path=tmp_path).model.state_dict().items()}
    class Broadcast(Callback):
        order = DDPTrainer.order  # where DDP's wrapping broadcasts rank 0's weights, in `before_fit`
        def before_fit(self): self.learn.model.load_state_dict(rank0)
    torch.manual_seed(1)  # another rank's own initial weights
    learn = cifar_learner(dls, c=8, path=tmp_path)
    ema = WeightEMA(0.5)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 0., cbs=[Broadcast(), ema])  # LR 0: the weights stay rank 0's
    avg = ema.averaged.state_dict()
    assert all(torch.equal(avg[k], rank0[k]) for k, v in rank0.items() if v.is_floating_point() and 'running' not in k and 'num_batches' not in k)

def test_cifar_learner_sets_cudnn(dls, tmp_path, monkeypatch):
    "Finding 8: `cifar_learner` turns cuDNN's autotuner on for its device (as `train` and `bench` do), off where asked to be deterministic"
    import fast_resnet.learner as lm
    calls = []
    monkeypatch.setattr(lm, 'set_cudnn', lambda d, deterministic=False: calls.append((str(d), deterministic)))
    lm.cifar_learner(dls, c=8, path=tmp_path)
    assert calls == [('cpu', False)]
    lm.cifar_learner(dls, c=8, path=tmp_path, deterministic=True)
    assert calls[1] == ('cpu', True)

def test_gpu_model_loaded_without_cuda(dls, tmp_path):
    "Finding 8: `load(cpu=False)` of a model saved on a GPU, where torch has no CUDA, says to load it with cpu=True"
    if torch.cuda.is_available(): pytest.skip('CUDA is here: the model loads on it')
    from fast_resnet.learner import cifar_learner
    from fast_resnet.inference import export, load
    from fast_resnet.core import FastResnetError
    learn = cifar_learner(dls, c=8, path=tmp_path)
    with patch('torch.serialization.location_tag', lambda storage: 'cuda:0'): export(learn, tmp_path/'gpu')  # as saved on a GPU
    with pytest.raises(FastResnetError, match=r'was saved on a CUDA GPU and torch cannot use CUDA here: load it with load\(path, cpu=True\)'):
        load(tmp_path/'gpu', cpu=False)
    assert load(tmp_path/'gpu', cpu=True).dls.vocab == learn.dls.vocab

def test_out_of_memory_is_one_line(data, tmp_path):
    "Finding 4: CUDA running out of memory (raised where it would be: the first forward) is one line naming --bs and --width, exit 1"
    from fast_resnet.custom_resnet import CustomResNet
    def oom(self, x): raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 14.57 GiB of which 1.06 GiB is free.')
    with patch.object(CustomResNet, 'forward', oom):
        code, out, err = main_exit('train', '--data', data, '--out', tmp_path/'r', '--device', 'cpu', *TINY)
    assert_one_line(code, err, 'ran out of memory with --bs 16 and --width 8', 'smaller batch or network (--bs 8', 'CUDA out of memory', exit_code=1)

def test_nccl_setup_failure_is_one_line(data, tmp_path, monkeypatch):
    "Finding 4: NCCL failing at the first collective (Docker's small /dev/shm), under a launcher: one line for this rank, no traceback"
    import fast_resnet.run as run_mod
    def first_collective(*a, **k):
        raise torch.distributed.DistBackendError('NCCL error in: ../torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:3356, unhandled system '
            'error (run with NCCL_DEBUG=INFO for details), NCCL version 2.27.3\nncclSystemError: System call (e.g. socket, malloc) or external '
            'library call failed or device error.\nLast error:\nError while creating shared memory segment /dev/shm/nccl-KVxw9N (size 9637888)')
    monkeypatch.setenv('WORLD_SIZE', '2'); monkeypatch.setenv('RANK', '1')
    monkeypatch.setattr(run_mod, 'join', lambda device=None: 'cpu')  # the process group joined; NCCL starts at the first collective
    monkeypatch.setattr(run_mod, 'from_rank0', first_collective)
    code, out, err = main_exit('train', '--data', data, '--out', tmp_path/'r', '--device', 'cpu', *TINY)
    assert_one_line(code, err, 'rank 1 of 2 could not set up the data-parallel run at its first collective (DistBackendError: unhandled system error',
                    'Error while creating shared memory segment /dev/shm/', '--ipc=host or --shm-size=2g', exit_code=1)

def test_mfu_peak_follows_precision():
    "Finding 5: the peak MFU divides by is a matmul in the precision the fit used (fp16 on a T4 or V100, bf16 where it runs, fp32 otherwise)"
    from fast_resnet.bench import matmul_peak_tflops
    got = {p: matmul_peak_tflops('cpu', p, n=64, iters=1) for p in ('fp16', 'bf16', 'fp32')}
    assert {p: d for p, (tf, d) in got.items()} == {'fp16': 'float16', 'bf16': 'bfloat16', 'fp32': 'float32'}
    assert all(tf > 0 for tf, _ in got.values())
    with machine(gpu='Tesla T4'):  # what `bench` passes on a T4: the precision its fit runs in
        from fast_resnet.device import resolve_precision
        assert resolve_precision('auto', 'cuda') == 'fp16'

def test_momentum_zero_after_state_emptied_in_place():
    "An optimizer state emptied in place (`state.clear()`, as the plain loop's `warm_up` does) gets zero momentum again: a skipped first fused step leaves zeros, not `empty_like`'s garbage"
    from fast_resnet.levers import ScaledSGD
    p = torch.nn.Parameter(torch.ones(3))
    opt = ScaledSGD([p], lr=0.1, momentum=0.9, nesterov=True, fused=True)
    p.grad = torch.ones(3); opt.step()
    opt.state.clear()
    opt.grad_scale, opt.found_inf = torch.ones(()), torch.ones(())  # what `GradScaler` hands a fused step: the overflow flag set
    empty_like = torch.empty_like
    with patch.object(torch, 'empty_like', lambda t, **kw: empty_like(t, **kw).fill_(1e30)): opt.step()
    assert torch.equal(opt.state[p]['momentum_buffer'], torch.zeros(3))
