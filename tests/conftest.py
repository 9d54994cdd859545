import os, subprocess, sys, tempfile
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
# The real CIFAR-10 in the folder layout, for the tests that train on it: $FAST_RESNET_DATA, else the copy beside the
# repository. `cli` does not pass $FAST_RESNET_DATA on: the tests name their data explicitly.
REAL_DATA = Path(os.environ.get('FAST_RESNET_DATA') or ROOT.parent/'shared'/'data'/'cifar10').expanduser()
NO_REAL_DATA = (f"no CIFAR-10 at {REAL_DATA}: set FAST_RESNET_DATA to a copy in the folder layout "
                "(train/<class>/*.png and test/<class>/*.png, as fastai's untar_data(URLs.CIFAR) unpacks it)")

def real_data() -> Path:
    "REAL_DATA, or skip the test saying how to give it"
    if not (REAL_DATA/'train').is_dir(): pytest.skip(NO_REAL_DATA)
    return REAL_DATA

# decoded images are cached here, not in the user's ~/.cache, and shared by the session's runs
CACHE = tempfile.mkdtemp(prefix='fast_resnet-test-cache-')

def cli(*args, cwd=None, env=None, timeout=900):
    "Run `python -m fast_resnet ARGS` as a user would, and return the completed process"
    e = {k: v for k, v in os.environ.items() if k != 'FAST_RESNET_DATA'}  # tests name their data explicitly
    e.update(PYTHONUNBUFFERED='1', MPLBACKEND='Agg', FAST_RESNET_CACHE=CACHE, **(env or {}))
    return subprocess.run([sys.executable, '-m', 'fast_resnet', *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=e, timeout=timeout)

def assert_bad_input(r, contains):
    "One line `error: ...` on stderr naming the fix, exit code 2, no traceback, nothing on stdout claiming success"
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), r.stderr
    assert contains in lines[0], lines[0]
    assert 'Traceback' not in r.stderr + r.stdout
    assert 'test accuracy' not in r.stdout

@pytest.fixture(scope='session')
def fake_data(tmp_path_factory):
    "A tiny random CIFAR-10 look-alike in the folder layout"
    from fast_resnet.data import make_fake_cifar
    return make_fake_cifar(tmp_path_factory.mktemp('data') / 'cifar', n_train=4, n_test=2)

@pytest.fixture(scope='session')
def quick_run(tmp_path_factory):
    "One real `--quick` run on the real CIFAR-10, shared by the tests that read its run folder"
    out = tmp_path_factory.mktemp('runs') / 'quick'
    r = cli('train', '--data', real_data(), '--out', out, '--quick', '--seed', '0')
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r
