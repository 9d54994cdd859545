"The LR range test on real CIFAR-10: LRMIN/LRMAX are read from the curve, so they move with the settings (issue 9)."
import numpy as np
import pytest
from conftest import REAL_DATA

# (width, batch size, optimizer, logit scale): each differs from the first in one setting
SETTINGS = dict(base=(8, 128, 'nesterov', 0.125), wide=(16, 128, 'nesterov', 0.125), bs512=(8, 512, 'nesterov', 0.125),
                adam=(8, 128, 'adam', 0.125), fc1=(8, 128, 'nesterov', 1.))

@pytest.fixture(scope='module')
def tests_by_setting(tmp_path_factory):
    if not REAL_DATA.is_dir(): pytest.skip(f'the real CIFAR-10 is not at {REAL_DATA}')
    import torch
    from fastai.vision.all import set_seed
    from fast_resnet.data import read_cifar
    from fast_resnet.fast_data import fast_dls
    from fast_resnet.learner import cifar_learner
    from fast_resnet.lr import find_lr_range
    data, tmp = read_cifar(REAL_DATA), tmp_path_factory.mktemp('lr')
    res = {}
    for name, (width, bs, opt, fc) in SETTINGS.items():
        set_seed(0)
        dls = fast_dls(data, bs=bs, n_train=5120, n_test=100, device='cpu', seed=0, cache_dir=tmp/'cache')
        learn = cifar_learner(dls, c=width, opt=opt, fc_scale=fc, path=tmp/name)
        res[name] = find_lr_range(learn)
    return res

def test_found_lrs_move_with_the_settings(tests_by_setting):
    lr_max = {k: t.lr_max for k, t in tests_by_setting.items()}
    assert len(set(lr_max.values())) > 1, lr_max  # not a constant of the test
    for k, t in tests_by_setting.items():
        assert t.lr_max not in t.lrs[-5:] and t.lr_max < t.lrs[-1] / 10, (k, t.lr_max, t.lrs[-1])  # never the end of the range
        assert t.feature in t.features and t.features[t.feature] == t.lr_max
        assert 'rise' in t.features and t.lr_max < t.features['rise']  # read below where the loss turns up
        assert 0 < t.lr_min < t.lr_max and t.lr_max / t.lr_min <= 25 * (1 + 1e-9)

def test_adam_turns_earlier_than_sgd(tests_by_setting):
    t = tests_by_setting
    assert t['adam'].lr_max < t['base'].lr_max / 3, (t['adam'].lr_max, t['base'].lr_max)
    assert t['adam'].features['rise'] < t['base'].features['rise']

def test_record(tests_by_setting, tmp_path):
    import json
    t = tests_by_setting['base']
    r = json.loads(json.dumps(t.record()))  # what config.json keeps
    assert r['rule'] == 'minimum' and r['feature'] == 'minimum' and r['feature_lr'] == t.lr_max
    assert r['start_lr'] == 1e-5 and r['end_lr'] == 1e3 and r['iterations'] == len(t.lrs) and r['stopped'] in ('diverged', 'reached end_lr')
    t.plot().savefig(tmp_path/'lr_find.png')
    assert (tmp_path/'lr_find.png').stat().st_size > 10_000

# lr_bounds on synthetic curves: a feature that is there, or a one-line error; never the end of the range
LRS = np.logspace(-5, 3, 121)
X = np.log10(LRS)

@pytest.mark.parametrize('rule', ['minimum', 'knee', 'steep', 'valley'])
def test_no_divergence_raises(rule):
    from fast_resnet.core import FastResnetError
    from fast_resnet.lr import lr_bounds
    falls = 2.3 - 0.6 / (1 + np.exp(-3 * (X + 1)))  # falls, then flat to the end: no turn, no minimum
    with pytest.raises(FastResnetError, match='never turned up again.*give --lr-min and --lr-max'): lr_bounds(LRS, falls, rule)
    noisy = falls * np.exp(np.random.default_rng(0).normal(0, 0.02, len(LRS)))
    with pytest.raises(FastResnetError, match='give --lr-min and --lr-max'): lr_bounds(LRS, noisy, rule)

@pytest.mark.parametrize('rule', ['minimum', 'knee', 'steep', 'valley'])
def test_present_feature(rule):
    from fast_resnet.lr import lr_bounds
    # falls, bottoms out at LR 1, turns up, and the test ends (stopped) at LR 100 without blowing up
    curve = 2.3 - 0.6 / (1 + np.exp(-3 * (X + 1))) + np.where(X > 0, 0.5 * X ** 2, 0)
    n = np.searchsorted(LRS, 100) + 1
    lo, hi, feature, feats = lr_bounds(LRS[:n], curve[:n], rule)
    assert hi < LRS[n - 1] / 10 and hi not in LRS[n - 5:n]
    assert feats['minimum'] == pytest.approx(1, rel=0.2) and hi <= feats['minimum'] * 1.0001
    assert 0 < lo < hi and hi / lo <= 25 * (1 + 1e-9)

def test_flat_raises():
    from fast_resnet.core import FastResnetError
    from fast_resnet.lr import lr_bounds
    with pytest.raises(FastResnetError, match='never fell by 5%'): lr_bounds(LRS, np.full(len(LRS), 2.3))
