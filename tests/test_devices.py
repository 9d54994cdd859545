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
         patch.object(torch.backends.mps, 'is_available', lambda: mps):
        yield

def choose(precision='auto', **kw):
    "`(device, precision, stderr)` that a run would use on the simulated machine"
    from fast_resnet.core import train_settings, check_device_settings, resolve_precision
    import fast_resnet.core as core
    core._warned.clear()
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
                from fast_resnet.core import resolve_precision
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
