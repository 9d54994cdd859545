"""tools/gpu-programme's CPU side, without a GPU and in seconds: `plan` (the dry run) keeps to 13 of the session's 15
device-minutes, and `check` passes on a well-formed staging and fails, with a one-line error, on a broken one. The
staging here is a small fake built by the test (wheels that only name themselves, a 10-image CIFAR-10 in three zip
parts); the real one in .device-data/ is checked too where `tools/gpu-programme stage` made it."""
import hashlib, importlib.machinery, importlib.util, json, os, re, shutil, subprocess, sys, tarfile, time, zipfile
from pathlib import Path
import pytest
from conftest import ROOT

TOOL = ROOT/'tools'/'gpu-programme'
DD = ROOT/'.device-data'
CHECK_CIFAR = ROOT.parent/'shared'/'tools'/'check-cifar'

def prog(*args, timeout=120):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=timeout)

@pytest.fixture(scope='module')
def gp():
    "tools/gpu-programme as a module (it has no .py suffix)"
    loader = importlib.machinery.SourceFileLoader('gpu_programme', str(TOOL))
    m = importlib.util.module_from_spec(importlib.util.spec_from_loader('gpu_programme', loader))
    loader.exec_module(m)
    return m

def test_plan_within_13_minutes(gp):
    "Every call counted at its timeout_s, the machine's start and the idle waits too: at most 13 minutes; speed figures first"
    r = prog('plan')
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    total = float(re.search(r'^total: ([\d.]+) planned minutes of 13: OK$', out, re.M).group(1))
    assert total <= 13
    blocks = [b.strip('\n').split('\n\n')[0] for b in re.split(r'^call \d$', out, flags=re.M)[1:]]
    assert len(blocks) == 3
    carries = [json.loads(re.search(r'^  carry +(\[.*\])$', b, re.M).group(1)) for b in blocks]
    assert carries == [['.device-data/wheels', '.device-data/part1'], ['.device-data/part2'], ['.device-data/part3']]
    subs = []
    for i, b in enumerate(blocks):
        assert f'  command    PYTHONUNBUFFERED=1 python3 tools/gpu-programme run {i + 1}' in b
        t = int(re.search(r'^  timeout_s  (\d+)$', b, re.M).group(1))
        assert 0 < t <= 600
        items = [float(x) for x in re.findall(r'^ +([\d.]+) min  ', b, re.M)]
        assert abs(sum(items[:-1]) - items[-1]) < 0.02, items  # the call's line is the sum of its items
        first = 1.5 if i == 0 else 0.2  # the machine's start, or the idle wait before the call
        assert items[0] == first and abs(items[-1] - (first + 0.3 + t / 60)) < 0.02  # its timeout_s counted in full
        subs.append(items[-1])
    assert 'machine start' in blocks[0] and 'machine start' not in blocks[1] + blocks[2]
    assert abs(sum(subs) + gp.GIVE_BACK - total) < 0.02
    # speed figures first, then one process's start and the CUDA tests in parallel; the real images in call 3
    order = [re.search(rf'^ +[\d.]+ min  {n}: ', blocks[0], re.M).start() for n in ('bench', 'host', 'peer', 'start', 'tests')]
    assert order == sorted(order)
    assert 'bench --synthetic --device cuda' in blocks[0] and 'bench --host --synthetic' in blocks[0] and 'airbench-peer --synthetic' in blocks[0]
    assert 'pytest -n 8 ' in blocks[0] and 'tests/test_cuda.py' in blocks[0]
    assert 'train --data .device-data/cifar10 --seed 0' in blocks[2] and f'study --data .device-data/cifar10 --seeds {gp.SEEDS} ' in blocks[2]
    assert gp.total(gp.SEEDS) <= gp.PLAN_LIMIT < gp.total(gp.SEEDS + 1) or gp.SEEDS == gp.MAX_SEEDS

def test_plan_over_limit_fails(gp, capsys, monkeypatch):
    monkeypatch.setattr(gp, 'PLAN_LIMIT', 8.)
    assert gp.plan() == 1
    out, err = capsys.readouterr()
    assert 'OVER' in out and err.startswith('error: ') and len(err.strip().splitlines()) == 1

def test_script_is_short():
    "The programme reads in minutes: a table of steps and their minutes, the staging, the runner"
    assert len(TOOL.read_text().splitlines()) < 300

# ---------------------------------------------------------------- a fake staging

def _wheel(d:Path, name:str, ver:str):
    "A valid, empty pure-Python wheel: pip installs it (dry) like a real one"
    dist = re.sub(r'[-.]+', '_', name)
    di = f'{dist}-{ver}.dist-info'
    files = {f'{dist}/__init__.py': b'', f'{di}/METADATA': f'Metadata-Version: 2.1\nName: {name}\nVersion: {ver}\n'.encode(),
             f'{di}/WHEEL': b'Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n'}
    with zipfile.ZipFile(d/f'{dist}-{ver}-py3-none-any.whl', 'w') as zf:
        for k, v in files.items(): zf.writestr(k, v)
        zf.writestr(f'{di}/RECORD', ''.join(f'{k},,\n' for k in files) + f'{di}/RECORD,,\n')

def _digest(root:Path) -> str:
    "check-cifar's digest of a folder (the tool's own, where it is beside the checkout)"
    if CHECK_CIFAR.is_file():
        r = subprocess.run([sys.executable, str(CHECK_CIFAR), str(root)], capture_output=True, text=True)
        return re.search(r'digest ([0-9a-f]{64})', r.stdout).group(1)
    h = hashlib.sha256()
    for p in sorted(str(f.relative_to(root)) for f in root.rglob('*.png')):
        h.update(p.encode() + b'\0' + hashlib.sha256((root/p).read_bytes()).digest())
    return h.hexdigest()

@pytest.fixture
def fake(tmp_path, gp):
    "A staging folder like .device-data (every listed wheel once, 10 PNGs in three parts), and its expected digest"
    from packaging.requirements import Requirement
    dd = tmp_path/'dd'
    (dd/'wheels').mkdir(parents=True)
    for spec in gp.wheel_specs()[0]:
        r = Requirement(spec)
        exact = [s.version for s in r.specifier if s.operator == '==']
        _wheel(dd/'wheels', r.name, exact[0] if exact else '1.0.0')
    src = tmp_path/'src'/'cifar10'
    files = ['labels.txt']
    (src).mkdir(parents=True); (src/'labels.txt').write_text('cat\ndog\n')
    for split, n in (('train', 3), ('test', 2)):
        for cls in ('cat', 'dog'):
            (src/split/cls).mkdir(parents=True)
            for i in range(n):
                (src/split/cls/f'{i}.png').write_bytes(os.urandom(64)); files.append(f'{split}/{cls}/{i}.png')
    for k in (1, 2, 3):
        (dd/f'part{k}').mkdir()
        with zipfile.ZipFile(dd/f'part{k}'/f'cifar10-part{k}.zip', 'w') as zf:
            for f in files[k - 1::3]: zf.write(src/f, f'cifar10/{f}')
    (dd/'part3'/'check-cifar').write_text('# stands in for ../shared/tools/check-cifar\n')
    return dd, ['--dd', dd, '--expect-images', 10, '--expect-digest', _digest(src)]

def test_check_passes_on_fake_staging(fake):
    dd, args = fake
    r = prog('check', *args)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    assert all(l.startswith('ok  ') for l in lines[:-1]) and lines[-1].startswith('all staged files complete'), r.stdout
    for what in ('wheels:', 'wheels install:', 'part1:', 'part2:', 'part3:', 'CIFAR-10:', 'call 1 size:', 'call 3 size:'):
        assert any(what in l for l in lines), what
    assert '10 PNGs' in r.stdout and r.stderr == ''

def _corrupt(p:Path):
    "Flip bytes inside the first PNG's data (the zip still opens; reading the PNG fails its CRC)"
    with zipfile.ZipFile(p) as zf: info = next(i for i in zf.infolist() if i.filename.endswith('.png'))
    b = bytearray(p.read_bytes())
    at = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    b[at:at + 8] = bytes(x ^ 0xff for x in b[at:at + 8])
    p.write_bytes(bytes(b))

@pytest.mark.parametrize('broken', ['missing part', 'corrupted part', 'missing wheel', 'other digest', 'no staging'])
def test_check_fails_on_broken_staging(fake, broken):
    dd, args = fake
    if broken == 'missing part': (dd/'part2'/'cifar10-part2.zip').unlink()
    if broken == 'corrupted part': _corrupt(dd/'part1'/'cifar10-part1.zip')
    if broken == 'missing wheel': next((dd/'wheels').glob('fastcore-*.whl')).unlink()
    if broken == 'other digest': args = args[:-1] + ['0' * 64]
    if broken == 'no staging': shutil.rmtree(dd)
    r = prog('check', *args)
    assert r.returncode == 1, r.stdout + r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: ') and 'tools/gpu-programme stage' in err[0], r.stderr
    assert 'Traceback' not in r.stdout + r.stderr
    failed = [l for l in r.stdout.splitlines() if l.startswith('FAIL')]
    expect = {'missing part': 'part2:', 'corrupted part': 'CIFAR-10:', 'missing wheel': 'wheels:', 'other digest': 'CIFAR-10:',
              'no staging': 'staging:'}[broken]
    assert any(l.startswith(f'FAIL  {expect}') for l in failed), r.stdout

def _tool(path:Path, body:str):
    path.write_text('#!/usr/bin/env bash\nset -euo pipefail\n' + body + '\n'); path.chmod(0o755)

@pytest.mark.parametrize('fetch_ok', [True, False])
def test_stage_in_a_clone_without_git_info(gp, tmp_path, monkeypatch, capsys, fetch_ok):
    "CI's clone has a .git with no info/ (fetch-gpu-wheels appends to info/exclude): stage makes it; a tool that fails is one error line"
    root, shared = tmp_path/'main', tmp_path/'shared'/'tools'
    (root/'.git').mkdir(parents=True); shared.mkdir(parents=True)
    # fetch-gpu-wheels' own line, as ../shared has it, then a fake download (no network in a test)
    line = next(l for l in (CHECK_CIFAR.parent/'fetch-gpu-wheels').read_text().splitlines() if '.git/info/exclude' in l)
    _tool(shared/'fetch-gpu-wheels', 'top=$PWD\n' + line + '\nmkdir -p .device-data/wheels; touch .device-data/wheels/fastai-2.8.12-py3-none-any.whl'
          + ('' if fetch_ok else '\nexit 3'))
    (shared/'split-cifar').write_text('from pathlib import Path\nfor i in (1, 2, 3):\n    d = Path(f".device-data/part{i}"); d.mkdir(parents=True)\n'
                                      '    (d/f"cifar10-part{i}.zip").touch()\n')  # split-cifar is Python, run by python
    (root/'.device-data'/'wheels').mkdir(parents=True); (root/'.device-data'/'wheels'/'airbench-0.1.8-py3-none-any.whl').touch()
    for k, v in dict(ROOT=root, DD=root/'.device-data', SHARED=shared, check=lambda a: 0).items(): monkeypatch.setattr(gp, k, v)
    if fetch_ok:
        assert gp.main(['stage']) == 0
        assert (root/'.git'/'info'/'exclude').read_text() == '/.device-data/\n'
        assert all((root/'.device-data'/f'part{i}'/f'cifar10-part{i}.zip').exists() for i in (1, 2, 3))
    else:
        with pytest.raises(SystemExit) as e: gp.main(['stage'])
        assert str(e.value).startswith('error: ../shared/tools/fetch-gpu-wheels failed (exit 3') and '\n' not in str(e.value)
        assert not (root/'.device-data'/'part1').exists()  # nothing after the failed step ran

@pytest.mark.skipif(not DD.is_dir(), reason='no .device-data here: tools/gpu-programme stage makes it')
def test_check_real_staging():
    r = prog('check')
    assert r.returncode == 0, r.stdout + r.stderr
    assert '60,000 PNGs' in r.stdout and 'all staged files complete' in r.stdout

def test_airbench_peer_data_or_synthetic():
    "The peer takes the real images or the synthetic ones, one of them (checked before torch is imported)"
    for args in ([], ['--data', 'x', '--synthetic']):
        r = subprocess.run([sys.executable, str(ROOT/'tools'/'airbench-peer'), *args, '--work', 'w', '--out', 'o.json'],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert r.returncode == 2 and 'give --data DIR or --synthetic' in r.stderr, r.stderr

def test_runner_cuts_at_the_deadline(gp, tmp_path, monkeypatch, capsys):
    "A call runs its steps in order, stops the one its deadline cuts, skips what no longer fits, returns its records and names the next call"
    monkeypatch.setattr(gp, 'DD', tmp_path/'dd')
    monkeypatch.setattr(gp, 'IMPORTS', 'print("imports ok")')
    monkeypatch.setattr(gp, 'STEPS', [('quick', 1, 0.01, 'py -c "print(42)"'), ('slow', 1, 0.05, 'py -c "import time; time.sleep(60)"'),
                                      ('late', 1, 1.0, 'py -c "print(1)"'), ('elsewhere', 3, 1.0, 'py -c "print(1)"')])
    out = tmp_path/'out'
    t = time.time()
    assert gp.main(['run', '1', '--device', 'cpu', '--work', str(tmp_path/'fr'), '--out', str(out), '--budget', '3']) == 0
    assert time.time() - t < 20
    state = json.loads((out/'summary.json').read_text())
    assert {k: v['state'] for k, v in state['steps'].items()} == {'quick': 'done', 'slow': 'cut at the deadline', 'late': 'not run'}
    log = (out/'programme.log').read_text()
    assert '42' in log and 'NEXT: call 2: PYTHONUNBUFFERED=1 python3 tools/gpu-programme run 2, timeout_s ' in log
    assert 're-plan: ' in log
    with tarfile.open(out/'results.tar.gz') as tf: assert 'state.json' in tf.getnames()

def test_replan_from_measurements(gp, tmp_path):
    "Call 1's re-plan: call 3's study seeds from the measured start and 24-epoch fit, within call 3's planned timeout_s"
    (tmp_path/'bench').mkdir()
    said = []
    def seeds(fit, start):
        (tmp_path/'bench'/'bench.json').write_text(json.dumps(dict(fit_seconds=fit)))
        st = dict(steps=dict(start=dict(seconds=start), tests=dict(seconds=90, planned=120)), seeds=gp.SEEDS)
        gp.replan(st, tmp_path, said.append)
        return st['seeds']
    fast, slow = seeds(4., 5.), seeds(40., 12.)
    assert gp.MAX_SEEDS >= fast > slow >= 1
    assert 'a process starts in 12.0 s; the tests took 90 s (planned 120 s)' in said[-1] and 'fits study-test with' in said[-1]
