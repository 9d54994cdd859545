"Never lose a run: a SIGKILLed run resumes to the same result; divergence and bad --resume are one line."
import csv, json, os, signal, subprocess, sys, time
import pytest, torch
from conftest import ROOT, CACHE, cli, cli_here, assert_bad_input

ARGS = ['--epochs', '6', '--peak-epoch', '2', '--bs', '32', '--width', '8', '--lr-min', '0.004', '--lr-max', '0.1', '--seed', '1']
# the default fast loader; fastai's DataBlock; the levers that carry state of their own (Nesterov's torch optimizer, the EMA)
VARIANTS = dict(fast=[], datablock=['--loader', 'datablock'],
                levers=['--opt', 'nesterov', '--mom', '0.9', '--ema', '0.9', '--label-smoothing', '0.1', '--fc-scale', '0.5', '--wd-bn-bias'])

@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from fast_resnet.data import make_fake_cifar
    return make_fake_cifar(tmp_path_factory.mktemp('resume') / 'cifar', n_train=40, n_test=4)

def history(run):
    return [{k: v for k, v in r.items() if k != 'seconds'} for r in csv.DictReader(open(run/'history.csv'))]

def train_ref(data, out, args):
    r = cli('train', '--data', data, '--out', out, *args)
    assert r.returncode == 0, r.stderr
    return out

@pytest.fixture(scope='module')
def runs(data, tmp_path_factory):
    "`runs(args)`: the uninterrupted run with `args`, trained once for the module"
    done = {}
    def get(args):
        if tuple(args) not in done: done[tuple(args)] = train_ref(data, tmp_path_factory.mktemp('ref') / 'run', args)
        return done[tuple(args)]
    return get

@pytest.fixture(scope='module')
def reference(runs): return runs(ARGS)  # the 'fast' variant's run

# the default loader in the default tests; the other two variants, each a third run, killed and resumed, marked slow (CI runs them)
@pytest.fixture(scope='module', params=[v if v == 'fast' else pytest.param(v, marks=pytest.mark.slow) for v in VARIANTS])
def variant(request, runs):
    "`(args, run)`: the arguments of a variant and its uninterrupted run"
    args = ARGS + VARIANTS[request.param]
    return args, runs(args)

def test_same_seed_same_metrics(data, reference, tmp_path):
    "Once, with the default loader: each variant's resume below matches its uninterrupted run to the bit, which needs the same too"
    args = ARGS
    r = cli('train', '--data', data, '--out', tmp_path/'again', *args)
    assert r.returncode == 0, r.stderr
    assert history(tmp_path/'again') == history(reference)
    a, b = (json.loads((p/'metrics.json').read_text()) for p in (reference, tmp_path/'again'))
    assert a['test_acc'] == b['test_acc'] and a['test_loss'] == b['test_loss']

def test_sigkill_then_resume(data, variant, tmp_path):
    args, reference = variant
    out = tmp_path/'killed'
    env = {k: v for k, v in os.environ.items() if k != 'FAST_RESNET_DATA'}
    p = subprocess.Popen([sys.executable, '-m', 'fast_resnet', 'train', '--data', str(data), '--out', str(out), *args],
                         cwd=ROOT, env={**env, 'MPLBACKEND': 'Agg', 'FAST_RESNET_CACHE': CACHE}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.time()
    while time.time() - t0 < 300:  # kill it once two epochs are recorded
        if (out/'history.csv').exists() and len((out/'history.csv').read_text().splitlines()) >= 3: break
        if p.poll() is not None: break
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL); p.wait()
    assert p.returncode == -signal.SIGKILL, "the run ended before it could be killed: make it longer"
    assert not (out/'metrics.json').exists()  # a killed run never looks complete
    done = torch.load(out/'checkpoint.pth', weights_only=False)['epoch']
    assert 1 <= done < 6
    r = cli('train', '--data', data, '--out', out, '--resume', *args)
    assert r.returncode == 0, r.stderr
    assert history(out) == history(reference)  # each epoch once, with the uninterrupted run's figures
    assert (out/'lr_schedule.csv').read_text() == (reference/'lr_schedule.csv').read_text()
    a, b = (torch.load(p/'model.pth') for p in (out, reference))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the same weights
    assert json.loads((out/'metrics.json').read_text())['complete'] is True

def test_resume_nothing(tmp_path, data):
    assert_bad_input(cli_here('train', '--data', data, '--out', tmp_path/'none', '--resume'), 'holds no run to resume')
    assert_bad_input(cli_here('train', '--data', data, '--resume'), '--resume needs --out')

def test_resume_without_checkpoint(tmp_path, data, reference):
    import shutil
    shutil.copytree(reference, tmp_path/'r'); (tmp_path/'r'/'checkpoint.pth').unlink()
    assert_bad_input(cli_here('train', '--data', data, '--out', tmp_path/'r', '--resume', *ARGS), 'has no finished epoch to resume')

def test_resume_other_settings(tmp_path, data, reference):
    import shutil
    shutil.copytree(reference, tmp_path/'r')
    args = [a if a != '6' else '7' for a in ARGS]  # --epochs 7
    assert_bad_input(cli_here('train', '--data', data, '--out', tmp_path/'r', '--resume', *args), 'epochs 6 there, 7 here')

def test_divergence(tmp_path, data):
    out = tmp_path/'div'
    r = cli_here('train', '--data', data, '--out', out, '--epochs', '4', '--peak-epoch', '2', '--bs', '32', '--width', '8',
                 '--lr-min', '1e19', '--lr-max', '1e20', '--seed', '0')
    assert r.returncode == 3, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: training diverged') and 'LRMAX 1e+20 is likely too high' in lines[0]
    assert 'Traceback' not in r.stderr
    m = json.loads((out/'metrics.json').read_text())
    assert m['complete'] is False and m['diverged']['epoch'] >= 1
    if m['diverged']['epoch'] > 1:  # the last good epoch's checkpoint is kept
        assert torch.load(out/'checkpoint.pth', weights_only=False)['epoch'] == m['diverged']['epoch'] - 1
    assert not (out/'model.pkl').exists()

def kill_when(data, out, args, ready, slow=None):
    "Start a training run, SIGKILL it as soon as `ready(out)` is true, and return the checkpoint's epoch at that moment"
    env = {k: v for k, v in os.environ.items() if k != 'FAST_RESNET_DATA'}
    env.update(MPLBACKEND='Agg', FAST_RESNET_CACHE=CACHE, **({'FAST_RESNET_SLOW_WRITE': slow} if slow else {}))
    p = subprocess.Popen([sys.executable, '-m', 'fast_resnet', 'train', '--data', str(data), '--out', str(out), *args],
                         cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.time()
    while time.time() - t0 < 300 and p.poll() is None and not ready(out): time.sleep(0.005)
    p.send_signal(signal.SIGKILL); p.wait()
    assert p.returncode == -signal.SIGKILL, "the run ended before it could be killed: make it longer"

def resume_matches(data, out, args, reference):
    r = cli('train', '--data', data, '--out', out, '--resume', *args)
    assert r.returncode == 0, r.stderr
    assert history(out) == history(reference) and (out/'lr_schedule.csv').read_text() == (reference/'lr_schedule.csv').read_text()
    a, b = (torch.load(p/'model.pth') for p in (out, reference))
    assert all(torch.equal(a[k], b[k]) for k in a)

@pytest.mark.slow  # a second kill point (the default tests kill between epochs and right after a write); each write pauses 3 s
def test_sigkill_during_checkpoint_write(data, reference, tmp_path):
    "Killed while the checkpoint thread writes (its temporary file there, not yet moved over the last one): the resume is exact"
    from fast_resnet.checkpoint import CHECKPOINT
    out = tmp_path/'during'
    # each write pauses 3 s with its temporary file complete but not renamed: kill in that pause, after an earlier write
    kill_when(data, out, ARGS, lambda o: (o/CHECKPOINT).exists() and (o/(CHECKPOINT + '.tmp')).exists(), slow='3')
    assert (out/(CHECKPOINT + '.tmp')).exists() and (out/CHECKPOINT).exists()
    done = torch.load(out/CHECKPOINT, weights_only=False)['epoch']
    assert len(history(out)) > done  # the run log is ahead of the checkpoint: the resume drops the extra epochs
    resume_matches(data, out, ARGS, reference)

def test_sigkill_right_after_checkpoint_write(data, reference, tmp_path):
    "Killed the moment a checkpoint has been moved into place (the next epoch just started): the resume is exact"
    from fast_resnet.checkpoint import CHECKPOINT
    out = tmp_path/'after'
    kill_when(data, out, ARGS, lambda o: (o/CHECKPOINT).exists() and not (o/(CHECKPOINT + '.tmp')).exists()
              and torch.load(o/CHECKPOINT, weights_only=False)['epoch'] >= 2)
    assert torch.load(out/CHECKPOINT, weights_only=False)['epoch'] >= 2
    resume_matches(data, out, ARGS, reference)
