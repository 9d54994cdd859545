"`fast_resnet study`: several seeds with one range test, study.json after every run, and a killed study resumed."
import json, os, signal, subprocess, sys, time
import pytest
from conftest import ROOT, CACHE, cli

ARGS = ['--epochs', '4', '--peak-epoch', '1', '--bs', '32', '--width', '8', '--lr-find-iters', '60', '--device', 'cpu']
KEYS = ('epochs', 'lr_min', 'lr_max', 'runs', 'mean', 'std', 'min', 'max', 'tta_mean')

@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from fast_resnet.data import make_fake_cifar
    return make_fake_cifar(tmp_path_factory.mktemp('study') / 'cifar', n_train=30, n_test=4)

@pytest.fixture(scope='module')
def reference(data, tmp_path_factory):
    "An uninterrupted study of three seeds"
    out = tmp_path_factory.mktemp('ref') / 'study'
    r = cli('study', '--data', data, '--out', out, '--seeds', '3', *ARGS)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r

def test_study_json(reference):
    out, r = reference
    res = json.loads((out/'study.json').read_text())
    for k in KEYS: assert res.get(k) is not None, k
    assert res['complete'] is True and res['scored_on'] == 'test' and res['epochs'] == 4
    assert [x['seed'] for x in res['runs']] == [0, 1, 2]
    for x in res['runs']:
        assert set(x) == {'seed', 'test_acc', 'tta_acc', 'train_seconds'} and 0 <= x['test_acc'] <= 1 and x['train_seconds'] > 0
        m = json.loads((out/f"seed-{x['seed']}"/'metrics.json').read_text())
        assert (m['test_acc'], m['tta_acc']) == (x['test_acc'], x['tta_acc'])
    accs = [x['test_acc'] for x in res['runs']]
    assert res['min'] == min(accs) and res['max'] == max(accs) and abs(res['mean'] - sum(accs) / 3) < 1e-12
    assert 'seed' in r.stdout and '3 of 3 runs: test_acc' in r.stdout  # the table

def test_range_test_once(reference):
    out, _ = reference
    res = json.loads((out/'study.json').read_text())
    cfgs = [json.loads((out/f'seed-{i}'/'config.json').read_text()) for i in range(3)]
    assert [c['lr_source'] for c in cfgs] == ['lr_find', 'given', 'given']
    assert all((c['lr_min'], c['lr_max']) == (res['lr_min'], res['lr_max']) for c in cfgs)
    assert res['lr_max'] / res['lr_min'] <= 25 * (1 + 1e-9)

def test_killed_study_resumes(data, reference, tmp_path):
    ref, _ = reference
    out = tmp_path/'killed'
    env = {k: v for k, v in os.environ.items() if k != 'FAST_RESNET_DATA'}
    p = subprocess.Popen([sys.executable, '-m', 'fast_resnet', 'study', '--data', str(data), '--out', str(out), '--seeds', '3', *ARGS],
                         cwd=ROOT, env={**env, 'MPLBACKEND': 'Agg', 'FAST_RESNET_CACHE': CACHE},
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.time()
    while time.time() - t0 < 300:  # kill it during the second run, after one of its epochs
        if (out/'seed-1'/'checkpoint.pth').exists() or p.poll() is not None: break
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL); p.wait()
    assert p.returncode == -signal.SIGKILL, "the study ended before it could be killed: make it longer"
    res = json.loads((out/'study.json').read_text())
    assert res['complete'] is False and [x['seed'] for x in res['runs']] == [0]  # what finished is kept, and not called complete
    first = (out/'seed-0'/'metrics.json').read_text()
    r = cli('study', '--data', data, '--out', out, '--seeds', '3', '--resume', *ARGS)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out/'seed-0'/'metrics.json').read_text() == first  # the finished run was not trained again
    a, b = (json.loads((o/'study.json').read_text()) for o in (out, ref))
    assert a['complete'] is True
    strip = lambda res: [(x['seed'], x['test_acc'], x['tta_acc']) for x in res['runs']]
    assert strip(a) == strip(b)  # the same results as the study that was never stopped
    assert (a['lr_min'], a['lr_max']) == (b['lr_min'], b['lr_max'])

def test_resume_other_settings(data, reference, tmp_path):
    import shutil
    from conftest import assert_bad_input, cli_here
    ref, _ = reference
    shutil.copytree(ref, tmp_path/'s')
    args = [a if a != '4' else '5' for a in ARGS]  # --epochs 5
    assert_bad_input(cli_here('study', '--data', data, '--out', tmp_path/'s', '--seeds', '3', '--resume', *args), 'epochs 4 there, 5 here')
