"""The LR range test on real CIFAR-10: LRMIN/LRMAX are read from the curve, so they move with the settings (issue 9); fastai's
`lr_find` with the rule's suggestion functions returns the same LRs (issue 18); `lr-find` and `--lr-from` on the command line."""
import numpy as np
import pytest
from conftest import real_data, CACHE

# (width, batch size, optimizer, logit scale): each differs from the first in one setting. Each range test runs 10 batches a
# decade (80 from 1e-5 to 1e3, as `--quick`'s): a third of the default 30, enough for the rule to find its floor
NUM_IT = 80
SETTINGS = dict(base=(8, 128, 'nesterov', 0.125), wide=(16, 128, 'nesterov', 0.125), bs512=(8, 512, 'nesterov', 0.125),
                adam=(8, 128, 'adam', 0.125), fc1=(8, 128, 'nesterov', 1.))

@pytest.fixture(scope='module')
def tests_by_setting(tmp_path_factory):
    data = real_data()
    import torch
    from fastai.vision.all import set_seed
    from fast_resnet.data import read_cifar
    from fast_resnet.fast_data import fast_dls
    from fast_resnet.learner import cifar_learner
    from fast_resnet.lr import find_lr_range
    data, tmp = read_cifar(data), tmp_path_factory.mktemp('lr')
    res = {}
    for name, (width, bs, opt, fc) in SETTINGS.items():
        set_seed(0)
        dls = fast_dls(data, bs=bs, n_train=5120, n_test=100, device='cpu', seed=0, cache_dir=CACHE)  # decoded once a session
        learn = cifar_learner(dls, c=width, opt=opt, fc_scale=fc, path=tmp/name)
        res[name] = find_lr_range(learn, num_it=NUM_IT)
    return res

def test_found_lrs_move_with_the_settings(tests_by_setting):
    lr_max = {k: t.lr_max for k, t in tests_by_setting.items()}
    assert len(set(lr_max.values())) > 1, lr_max  # not a constant of the test
    for k, t in tests_by_setting.items():
        assert t.lr_max not in t.lrs[-5:] and t.lr_max < t.lrs[-1] / 10, (k, t.lr_max, t.lrs[-1])  # never the end of the range
        assert t.feature in t.features and t.features[t.feature] == t.lr_max
        assert 'rise' in t.features and t.lr_max < t.features['rise']  # read below where the loss turns up
        assert t.features['floor_start'] <= t.lr_max <= t.features['floor_end']  # on the floor of the valley
        assert 0 < t.lr_min < t.lr_max and t.lr_max / t.lr_min <= 25 * (1 + 1e-9)

def test_adam_turns_earlier_than_sgd(tests_by_setting):
    t = tests_by_setting
    assert t['adam'].lr_max < t['base'].lr_max / 3, (t['adam'].lr_max, t['base'].lr_max)
    assert t['adam'].features['rise'] < t['base'].features['rise']

def test_record(tests_by_setting, tmp_path):
    import json
    t = tests_by_setting['base']
    r = json.loads(json.dumps(t.record()))  # what config.json keeps
    assert r['rule'] == 'floor' and r['feature'] == 'floor' and r['feature_lr'] == t.lr_max
    assert r['start_lr'] == 1e-5 and r['end_lr'] == 1e3 and r['num_it'] == NUM_IT and r['stopped'] in ('diverged', 'reached end_lr')
    assert r['iterations'] >= len(t.lrs) + NUM_IT // 10 + 5  # the rule reads fastai's window: without the first tenth and the last 5
    t.plot().savefig(tmp_path/'lr_find.png')
    assert (tmp_path/'lr_find.png').stat().st_size > 10_000

# lr_bounds on synthetic curves: a feature that is there, or a one-line error; never the end of the range
LRS = np.logspace(-5, 3, 121)
X = np.log10(LRS)

@pytest.mark.parametrize('rule', ['floor', 'minimum', 'middle', 'knee', 'steep', 'valley'])
def test_no_divergence_raises(rule):
    from fast_resnet.core import FastResnetError
    from fast_resnet.lr import lr_bounds
    falls = 2.3 - 0.6 / (1 + np.exp(-3 * (X + 1)))  # falls, then flat to the end: no turn, no minimum
    with pytest.raises(FastResnetError, match='never turned up again.*give --lr-min and --lr-max'): lr_bounds(LRS, falls, rule)
    noisy = falls * np.exp(np.random.default_rng(0).normal(0, 0.02, len(LRS)))
    with pytest.raises(FastResnetError, match='give --lr-min and --lr-max'): lr_bounds(LRS, noisy, rule)

@pytest.mark.parametrize('rule', ['floor', 'minimum', 'middle', 'knee', 'steep', 'valley'])
def test_present_feature(rule):
    from fast_resnet.lr import lr_bounds
    # falls, bottoms out at LR 1, turns up, and the test ends (stopped) at LR 100 without blowing up
    curve = 2.3 - 0.6 / (1 + np.exp(-3 * (X + 1))) + np.where(X > 0, 0.5 * X ** 2, 0)
    n = np.searchsorted(LRS, 100) + 1
    lo, hi, feature, feats = lr_bounds(LRS[:n], curve[:n], rule)
    assert hi < LRS[n - 1] / 10 and hi not in LRS[n - 5:n]
    assert feats['minimum'] == pytest.approx(1, rel=0.2)
    if rule != 'middle': assert hi <= feats['floor_end'] * 1.0001  # on the floor or below it; 'middle' reads towards the divergence
    assert 0 < lo < hi and hi / lo <= 25 * (1 + 1e-9)

def test_flat_raises():
    from fast_resnet.core import FastResnetError
    from fast_resnet.lr import lr_bounds
    with pytest.raises(FastResnetError, match='never fell by 5%'): lr_bounds(LRS, np.full(len(LRS), 2.3))

def test_fastai_suggestions_are_the_rule(tmp_path):
    "`learn.lr_find(suggest_funcs=(LRMIN, LRMAX))` returns fastai's `SuggestedLRs` with the LRs `find_lr_range` reads from the same batches"
    data = real_data()
    from fastai.vision.all import set_seed
    from fast_resnet.data import read_cifar
    from fast_resnet.fast_data import fast_dls
    from fast_resnet.learner import cifar_learner
    from fast_resnet.lr import LRMIN, LRMAX, BatchLosses, RangeTest, fastai_window
    set_seed(0)
    dls = fast_dls(read_cifar(data), bs=128, n_train=5120, n_test=100, device='cpu', seed=0, cache_dir=CACHE)
    learn = cifar_learner(dls, c=8, path=tmp_path)
    cb = BatchLosses()
    with learn.added_cbs(cb): s = learn.lr_find(start_lr=1e-5, end_lr=1e3, num_it=NUM_IT, show_plot=False, suggest_funcs=(LRMIN, LRMAX))
    assert type(s).__name__ == 'SuggestedLRs' and s._fields == ('LRMIN', 'LRMAX')
    raw = cb.values(); lrs = np.array([float(l) for l in learn.recorder.lrs[:len(raw)]])
    assert len(raw) < NUM_IT  # the loss diverged and fastai stopped the test
    t = RangeTest.read(lrs[fastai_window(len(raw), NUM_IT)], raw[fastai_window(len(raw), NUM_IT)], stop_lr=lrs[-1])
    assert s.LRMIN == pytest.approx(t.lr_min, rel=1e-6) and s.LRMAX == pytest.approx(t.lr_max, rel=1e-6), (s, t.lr_min, t.lr_max)
    assert 0 < s.LRMIN < s.LRMAX and s.LRMAX / s.LRMIN <= 25 * (1 + 1e-9)

def test_lr_find_then_lr_from(tmp_path, fake_data):
    "`fast_resnet lr-find` writes lr_find.json and lr_find.png; `train --lr-from` runs with those LRs and no range test"
    import json
    from conftest import cli_here as cli, assert_bad_input  # in this process: lr-find and train on the tiny data, no fastai import each
    small = ['--quick', '--width', '8', '--bs', '16', '--lr-find-iters', '60', '--seed', '0']
    r = cli('lr-find', '--data', fake_data, '--out', tmp_path/'lrs', *small)
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads((tmp_path/'lrs'/'lr_find.json').read_text())
    assert sorted(p.name for p in (tmp_path/'lrs').iterdir()) == ['lr_find.json', 'lr_find.png']
    assert rec['rule'] == 'floor' and 0 < rec['lr_min'] < rec['lr_max'] and len(rec['curve']['lrs']) == len(rec['curve']['losses'])
    assert rec['settings']['width'] == 8 and rec['seed'] == 0 and f"LRMAX {rec['lr_max']:.4g}" in r.stdout
    r = cli('train', '--data', fake_data, '--out', tmp_path/'run', *small, '--epochs', '2', '--peak-epoch', '1', '--lr-from', tmp_path/'lrs')
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = json.loads((tmp_path/'run'/'config.json').read_text())
    assert (cfg['lr_min'], cfg['lr_max'], cfg['lr_source']) == (rec['lr_min'], rec['lr_max'], 'lr_from')
    assert not (tmp_path/'run'/'lr_find.png').exists() and 'LR range test' not in r.stdout
    r = cli('train', '--data', fake_data, '--out', tmp_path/'run2', *small, '--width', '16', '--epochs', '2', '--peak-epoch', '1',
            '--lr-from', tmp_path/'lrs')
    assert r.returncode == 0 and r.stderr.count('warning: --lr-from') == 1 and 'width 8 there, 16 here' in r.stderr, r.stderr[-2000:]
    assert_bad_input(cli('lr-find', '--data', fake_data, '--out', tmp_path/'x', '--lr-max', '1'), 'unrecognized arguments: --lr-max')
