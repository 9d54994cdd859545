"A real `--quick` run on the real CIFAR-10 (skipped, with the reason, where ../shared/data/cifar10 is absent)."
import csv, json, re
import numpy as np
from conftest import cli_here, REAL_DATA

RUN_FILES = ('config.json', 'history.csv', 'lr_schedule.csv', 'metrics.json', 'lr_find.png', 'one_cycle.png',
             'cyclic_lr.png', 'curves.png', 'batch.png', 'misclassified.png', 'confusion.png', 'model.pkl', 'model.pth', 'report.md')

def test_run_folder(quick_run):
    out, r = quick_run
    for f in RUN_FILES: assert (out/f).is_file() and (out/f).stat().st_size > 0, f
    m = json.loads((out/'metrics.json').read_text())
    assert m['complete'] is True
    last = max(out.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    assert (out/'metrics.json').stat().st_mtime_ns == last.stat().st_mtime_ns, last  # written last: a complete run says so last
    assert m['test_acc'] >= 0.35, m  # the bar for the quick run
    assert m['scored_on'] == 'test' and 0.35 <= m['tta_acc'] <= 1, m  # flip TTA scored too
    assert 'test accuracy' in r.stdout
    cfg = json.loads((out/'config.json').read_text())
    assert cfg['lr_source'] == 'lr_find' and cfg['seed'] == 0 and cfg['width'] == 16 and cfg['epochs'] == 5
    assert (cfg['loader'], cfg['opt'], cfg['mom'], cfg['fc_scale'], cfg['ema']) == ('fast', 'nesterov', 0.9, 0.125, 0)  # the defaults
    assert 'fastai' in cfg['versions']

def test_history(quick_run):
    out, _ = quick_run
    rows = list(csv.DictReader(open(out/'history.csv')))
    assert [int(r['epoch']) for r in rows] == [1, 2, 3, 4, 5]
    assert list(rows[0]) == ['epoch', 'lr', 'train_loss', 'train_acc', 'test_loss', 'test_acc', 'seconds']
    m = json.loads((out/'metrics.json').read_text())
    assert float(rows[-1]['test_acc']) == m['test_acc']

def test_lr_schedule_no_annihilation(quick_run):
    out, _ = quick_run
    cfg = json.loads((out/'config.json').read_text())
    lo, hi = cfg['lr_min'], cfg['lr_max']
    assert hi / lo <= 25 * (1 + 1e-9)
    lr = np.loadtxt(out/'lr_schedule.csv', delimiter=',', skiprows=1)[:, 1]
    n = len(lr)
    assert n == 5 * 39  # 5,000 images at batch 128, the last partial batch dropped
    assert np.isclose(lr[0], lo, rtol=1e-6)
    assert np.argmax(lr) == round(n * cfg['peak_epoch'] / cfg['epochs']) and np.isclose(lr.max(), hi, rtol=1e-6)
    assert lr.min() >= lo * (1 - 1e-9)  # never below LRMIN
    assert np.isclose(lr[-1], lo, rtol=0.01)  # ends back at LRMIN
    assert (np.diff(lr[np.argmax(lr):]) <= 1e-12).all()  # falls monotonically after the peak

def test_predict(quick_run):
    out, _ = quick_run
    imgs = sorted((REAL_DATA/'test').glob('*/*.png'))[::1000][:10]  # one per class
    r = cli_here('predict', out/'model.pkl', *imgs)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == len(imgs)
    vocab = (REAL_DATA/'labels.txt').read_text().split()
    right = 0
    for img, line in zip(imgs, lines):
        path, cls, conf = line.split('\t')
        assert path == str(img) and cls in vocab and 0.1 <= float(conf) <= 1
        right += cls == img.parent.name
    assert right >= 2  # better than chance (1 in 10) on images it never saw

def test_never_silent(quick_run):
    "Into a log (a pipe here), a line at least every 30 s from the range test's start to the last epoch, however loaded the machine: lines by time (every 5 s here) between the lines by batch"
    out, r = quick_run
    t, text = [s for s, _ in r.lines], [l for _, l in r.lines]
    first = next(i for i, l in enumerate(text) if l.startswith('LR range test: up to'))
    last = next(i for i, l in enumerate(text) if l.startswith('epoch 5/5 '))
    gaps = np.diff(t[first:last + 1])
    worst = int(np.argmax(gaps))
    print(f"quick run: {r.seconds:.0f} s, test accuracy {json.loads((out/'metrics.json').read_text())['test_acc']:.2%}; longest silence {max(np.diff([0] + t)):.1f} s in all, {gaps.max():.1f} s from the range test "
          f"to the last epoch (before: {text[first + worst]!r})")
    assert gaps.max() <= 30, (gaps.max(), text[first + worst], text[first + worst + 1])
    found = next(l for l in text if re.match(r'LR range test: \d+ batches to', l))
    secs = int(re.search(r' in (\d+) s', found).group(1))
    ticks = [l for l in text[first:] if re.fullmatch(r'LR range test: \d+ of up to \d+ batches, LR [0-9.e+-]+, loss [0-9.]+, \d+ s', l)]
    assert len(ticks) >= secs // 10 - 1, (secs, ticks)  # by time while the test runs: every 5 s, after the batch then running
    for row in csv.DictReader(open(out/'history.csv')):  # and inside each epoch long enough for one
        if float(row['seconds']) >= 12:
            assert any(re.fullmatch(rf"epoch {row['epoch']}/5: \d+ of 39 batches, \d+ s", l) for l in text), (row, text)
