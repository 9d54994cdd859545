"`report.md`: written by a real quick run with every picture linked; `fast_resnet report` rewrites it, also for a run that did not finish, and refuses a folder that holds no run."
import json, os, re, shutil, signal, subprocess, sys, time
import pytest
from conftest import ROOT, CACHE, cli, cli_here, assert_bad_input

LINK = re.compile(r'!\[[^\]]*\]\(([^)]+)\)')
EPOCH_ROW = re.compile(r'^\| \d+ \| [0-9.e+-]+ \| ', re.M)  # a row of the per-epoch table: epoch, then its LR

def test_quick_run_report(quick_run):
    out, _ = quick_run
    text = (out/'report.md').read_text()
    links = LINK.findall(text)
    assert sorted(links) == sorted(p.name for p in out.glob('*.png')) and len(links) == 7, links  # every picture, once
    for l in links: assert (out/l).is_file(), l  # relative links that resolve from the run folder
    m = json.loads((out/'metrics.json').read_text())
    assert text.splitlines()[2].startswith(f"**Test accuracy {m['test_acc']:.2%}** (with flip TTA {m['tta_acc']:.2%}) after 5 epochs")
    for sec in ('## Settings', '## LRMIN and LRMAX', '## The model', '## Training', '## Results', '## Machine and versions'): assert sec in text, sec
    assert "found by the LR range test (fastai's `lr_find`)" in text
    assert len(EPOCH_ROW.findall(text)) == 5
    assert '| total |  |  | ' in text and '| fastai | ' in text

def test_report_unfinished(quick_run, tmp_path):
    "A run killed in its third epoch: no metrics.json, no final pictures, two epochs in history.csv"
    out, _ = quick_run
    d = tmp_path/'killed'
    shutil.copytree(out, d, ignore=shutil.ignore_patterns('model.p*', 'models', 'report.md', 'metrics.json', 'one_cycle.png',
                                                          'curves.png', 'misclassified.png', 'confusion.png'))
    rows = (d/'history.csv').read_text().splitlines()
    (d/'history.csv').write_text('\n'.join(rows[:3]) + '\n')
    r = cli_here('report', d)
    assert r.returncode == 0 and str(d/'report.md') in r.stdout, r.stderr
    text = (d/'report.md').read_text()
    top = text.splitlines()[2]
    assert top.startswith('**This run did not finish**: it has no metrics.json') and '2 of 5 epochs finished' in top, top
    assert len(EPOCH_ROW.findall(text)) == 2 and '## Results' not in text and 'Test accuracy' not in text
    links = LINK.findall(text)
    assert links and all((d/l).is_file() for l in links) and 'curves.png' not in links, links

def test_report_rewrites(quick_run, tmp_path):
    out, _ = quick_run
    d = tmp_path/out.name  # the report's title is the folder's name
    shutil.copytree(out, d, ignore=shutil.ignore_patterns('model.p*', 'models', 'checkpoint.pth'))
    (d/'report.md').unlink()
    assert cli_here('report', d).returncode == 0
    assert (d/'report.md').read_text() == (out/'report.md').read_text()  # the same write-up as train's

def test_report_not_a_run(tmp_path, fake_data):
    assert_bad_input(cli_here('report', fake_data), 'is not a run folder (no config.json)')
    assert_bad_input(cli_here('report', tmp_path/'nope'), 'is not a folder')
    assert_bad_input(cli_here('report'), 'the following arguments are required: run')
    (tmp_path/'config.json').write_text('{"epochs": 5')
    assert_bad_input(cli_here('report', tmp_path), 'holds a record that cannot be read')

def test_report_diverged(tmp_path, fake_data):
    out = tmp_path/'div'
    r = cli_here('train', '--data', fake_data, '--out', out, '--epochs', '2', '--peak-epoch', '1', '--bs', '16', '--width', '8',
            '--lr-min', '1e19', '--lr-max', '1e20', '--seed', '0')
    assert r.returncode == 3, (r.returncode, r.stderr)
    top = (out/'report.md').read_text().splitlines()[2]  # written by train before it stopped
    assert top.startswith('**This run did not finish: it diverged** in epoch 1') and '0 of 2 epochs finished' in top, top

STOPPED = re.compile(r'^\*\*This run did not finish: it was (.+?)\*\* in epoch (\d+)\. (\d+) of (\d+) epochs finished')

def _stopped(out, how:str, epochs:int):
    "metrics.json says `complete: false` and why; report.md says so at its top, with the finished epochs' table"
    m = json.loads((out/'metrics.json').read_text())
    rows = (out/'history.csv').read_text().splitlines()[1:]
    assert m['complete'] is False and m['epochs_done'] == len(rows) >= 1 and m['stopped']['epoch'] == len(rows) + 1, m
    text = (out/'report.md').read_text()
    top = STOPPED.match(text.splitlines()[2])
    assert top and top.group(1).startswith(how) and int(top.group(3)) == len(rows) and int(top.group(4)) == epochs, text[:600]
    assert len(EPOCH_ROW.findall(text)) == len(rows) and '## Results' not in text and '--resume' in text.splitlines()[2]
    return m

def test_main_puts_sigterm_back(monkeypatch):
    "`main` turns SIGTERM into `Terminated` while it runs and puts the caller's handler back (a notebook's kernel), also when an error it does not know goes through"
    from fast_resnet import cli
    seen = []
    def run_command(argv):
        seen.append(signal.getsignal(signal.SIGTERM))
        if argv == ['boom']: raise RuntimeError('not a fast_resnet error')
        return 0
    monkeypatch.setattr(cli, 'run_command', run_command)
    def mine(signum, frame): pass
    old = signal.signal(signal.SIGTERM, mine)
    try:
        with pytest.raises(SystemExit): cli.main(['fine'])
        assert signal.getsignal(signal.SIGTERM) is mine
        with pytest.raises(RuntimeError): cli.main(['boom'])
        assert signal.getsignal(signal.SIGTERM) is mine
        assert seen == [cli._terminated] * 2
    finally: signal.signal(signal.SIGTERM, old)

@pytest.mark.parametrize('sig', ['SIGINT', 'SIGTERM'])
def test_interrupted_run(sig, fake_data, tmp_path):
    "Ctrl-C (SIGINT) or `kill` (SIGTERM) after the first epoch's checkpoint: one line, exit 130 or 143, and both records say the run did not finish"
    out = tmp_path/'stopped'
    env = {k: v for k, v in os.environ.items() if k != 'FAST_RESNET_DATA'}
    env.update(MPLBACKEND='Agg', FAST_RESNET_CACHE=CACHE, PYTHONUNBUFFERED='1')
    p = subprocess.Popen([sys.executable, '-m', 'fast_resnet', 'train', '--data', str(fake_data), '--out', str(out), '--epochs', '60',
                          '--peak-epoch', '2', '--bs', '8', '--width', '8', '--lr-min', '0.004', '--lr-max', '0.1', '--seed', '0'],
                         cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # a background shell's SIGINT is ignored
    t0 = time.time()
    while time.time() - t0 < 300 and p.poll() is None and not (out/'checkpoint.pth').exists(): time.sleep(0.02)
    p.send_signal(getattr(signal, sig))
    _, err = p.communicate(timeout=120)
    assert p.returncode == dict(SIGINT=130, SIGTERM=143)[sig], (p.returncode, err[-3000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and 'Traceback' not in err, err[-3000:]
    m = _stopped(out, dict(SIGINT='interrupted (Ctrl-C, SIGINT)', SIGTERM='stopped by SIGTERM')[sig], 60)
    assert m['stopped']['signal'] == sig

def test_error_after_training_started(fake_data, tmp_path, monkeypatch):
    "An exception in the fit: it reaches the caller, and the records say which error stopped the run in which epoch"
    import fast_resnet.run as run
    from fastai.vision.all import Callback
    class Boom(Callback):
        order = 50  # before the run log writes the epoch
        def after_epoch(self):
            if self.epoch == 1: raise RuntimeError('the disk is full')
    made = run.run_callbacks
    def with_boom(*a, **kw):
        cbs, ck, stop = made(*a, **kw)
        return cbs + [Boom()], ck, stop
    monkeypatch.setattr(run, 'run_callbacks', with_boom)
    with pytest.raises(RuntimeError, match='the disk is full'):
        run.train(data=fake_data, out=tmp_path/'err', epochs=3, peak_epoch=1, bs=8, width=8, lr_min=0.004, lr_max=0.1, seed=0,
                  device='cpu', figures=False, show=False)
    m = _stopped(tmp_path/'err', 'stopped by an error (RuntimeError: ', 3)  # fastai's message names the callback, then the error's
    assert m['stopped']['signal'] is None and m['stopped']['error'].endswith('the disk is full'), m
    assert 'the disk is full' in (tmp_path/'err'/'report.md').read_text().splitlines()[2]
