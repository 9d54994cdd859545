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

def cli_here(*args, env=None):
    """`cli(*args)` in this process: `fast_resnet.cli.main` as the command runs it, its exit code, stdout and stderr, without
    the seconds a new process spends importing fastai. For what the message and the exit code prove; `cli` for what only a
    real process shows (signals, forked workers, the launcher)."""
    import contextlib, io
    from unittest import mock
    from fast_resnet.cli import main
    out, err = io.StringIO(), io.StringIO()
    e = {k: v for k, v in os.environ.items() if k != 'FAST_RESNET_DATA'}
    e.update(MPLBACKEND='Agg', FAST_RESNET_CACHE=CACHE, **(env or {}))
    with mock.patch.dict(os.environ, e, clear=True), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: main(list(map(str, args))); code = 0
        except SystemExit as x: code = x.code if isinstance(x.code, int) else 1
    return subprocess.CompletedProcess(['fast_resnet', *map(str, args)], code, out.getvalue(), err.getvalue())

def cli_timed(*args, env=None, timeout=900):
    "`cli(*args)` with each line of stdout stamped as it comes (`r.lines`: (seconds since the start, line)), as a log file receives them"
    import threading, time
    e = {k: v for k, v in os.environ.items() if k != 'FAST_RESNET_DATA'}
    e.update(PYTHONUNBUFFERED='1', MPLBACKEND='Agg', FAST_RESNET_CACHE=CACHE, **(env or {}))
    cmd = [sys.executable, '-m', 'fast_resnet', *map(str, args)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=e)
    err = []
    t = threading.Thread(target=lambda: err.append(p.stderr.read()), daemon=True); t.start()
    t0, lines = time.monotonic(), []
    for line in p.stdout: lines.append((time.monotonic() - t0, line.rstrip('\n')))
    p.wait(timeout=timeout); t.join(timeout=60)
    r = subprocess.CompletedProcess(cmd, p.returncode, ''.join(l + '\n' for _, l in lines), ''.join(err))
    r.lines, r.seconds = lines, time.monotonic() - t0
    return r

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
    # a progress line every 5 s of wall time (default 15), so that the range test's and the epochs' lines by time show here too
    r = cli_timed('train', '--data', real_data(), '--out', out, '--quick', '--seed', '0', env=dict(FAST_RESNET_PROGRESS_SECS='5'))
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r
