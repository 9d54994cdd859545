"`report.md`: written by a real quick run with every picture linked; `fast_resnet report` rewrites it, also for a run that did not finish, and refuses a folder that holds no run."
import json, re, shutil
from conftest import cli, assert_bad_input

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
    r = cli('report', d)
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
    assert cli('report', d).returncode == 0
    assert (d/'report.md').read_text() == (out/'report.md').read_text()  # the same write-up as train's

def test_report_not_a_run(tmp_path, fake_data):
    assert_bad_input(cli('report', fake_data), 'is not a run folder (no config.json)')
    assert_bad_input(cli('report', tmp_path/'nope'), 'is not a folder')
    assert_bad_input(cli('report'), 'the following arguments are required: run')
    (tmp_path/'config.json').write_text('{"epochs": 5')
    assert_bad_input(cli('report', tmp_path), 'holds a record that cannot be read')

def test_report_diverged(tmp_path, fake_data):
    out = tmp_path/'div'
    r = cli('train', '--data', fake_data, '--out', out, '--epochs', '2', '--peak-epoch', '1', '--bs', '16', '--width', '8',
            '--lr-min', '1e19', '--lr-max', '1e20', '--seed', '0')
    assert r.returncode == 3, (r.returncode, r.stderr)
    top = (out/'report.md').read_text().splitlines()[2]  # written by train before it stopped
    assert top.startswith('**This run did not finish: it diverged** in epoch 1') and '0 of 2 epochs finished' in top, top
