"""The wheel as a user gets it: `python -m build` makes a wheel and an sdist that `twine check` passes, holding the
package and nothing else; the wheel installed into a fresh venv gives `import fast_resnet` and a `fast_resnet`
command that trains on the real CIFAR-10 and predicts, from a folder far from the checkout.

The venv sees the packages of the Python running the tests, in a virtualenv too (`make_venv`): a venv of its
own would copy torch (~5.5 GB, minutes) for nothing this test checks. The wheel is installed into the venv itself
and every command checks that `fast_resnet` is imported from the venv, not from the checkout. The wheel's declared
dependencies are checked against what the venv sees. The README's `pip install -e .` is checked too, from beside
the clone. Marked `wheel` (a few minutes on 2 CPU cores): `pytest -m "not wheel"` leaves it out locally; CI runs it.
"""
import json, os, site, subprocess, sys, tarfile, venv, zipfile
from pathlib import Path
import pytest
from conftest import CACHE, ROOT, real_data

pytestmark = pytest.mark.wheel

def run(*args, cwd, env=None, timeout=600):
    r = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f'{args}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}'
    return r

def make_venv(path) -> Path:
    "A venv at `path`, without pip, that sees the packages of the Python running the tests; its python"
    # --system-site-packages would show the base Python's packages, not a virtualenv's where the tests run in one.
    # This Python's site folders are listed in a .pth instead, after the venv's own; their .pth files are not read,
    # so an editable install of the checkout there stays out of the venv.
    venv.create(path, with_pip=False)
    py = Path(path)/'bin'/'python'
    purelib = run(py, '-c', 'import sysconfig; print(sysconfig.get_path("purelib"))', cwd=path).stdout.strip()
    dirs = site.getsitepackages() + [site.getusersitepackages()] * bool(site.ENABLE_USER_SITE)
    (Path(purelib)/'_tests_see.pth').write_text(''.join(f'{d}\n' for d in dirs if Path(d).is_dir()))
    return py

@pytest.fixture(scope='module')
def dist(tmp_path_factory):
    "`python -m build` into a temporary folder: the wheel and the sdist"
    out = tmp_path_factory.mktemp('dist')
    run(sys.executable, '-m', 'build', '--outdir', out, ROOT, cwd=ROOT)
    whl, sdist = list(out.glob('*.whl')), list(out.glob('*.tar.gz'))
    assert len(whl) == 1 and len(sdist) == 1, list(out.iterdir())
    return whl[0], sdist[0]

def test_twine_check(dist):
    r = run(sys.executable, '-m', 'twine', 'check', '--strict', *dist, cwd=ROOT)
    assert r.stdout.count('PASSED') == 2, r.stdout

def test_contents(dist):
    whl, sdist = dist
    names = zipfile.ZipFile(whl).namelist()
    mods = {Path(n).name for n in names if n.startswith('fast_resnet/')}
    assert mods == {p.name for p in (ROOT/'fast_resnet').glob('*.py')}, mods  # the whole package, nothing else
    assert all(n.startswith(('fast_resnet/', 'fast_resnet-')) for n in names), names
    meta = zipfile.ZipFile(whl).read(next(n for n in names if n.endswith('.dist-info/METADATA'))).decode()
    assert 'License-Expression: Apache-2.0' in meta and '# fast_resnet' in meta  # the license, the README as description
    assert 'fast_resnet = fast_resnet.cli:main' in zipfile.ZipFile(whl).read(next(n for n in names if n.endswith('entry_points.txt'))).decode()
    files = [n.split('/', 1)[1] for n in tarfile.open(sdist).getnames() if '/' in n]
    assert {'pyproject.toml', 'README.md', 'PKG-INFO', 'fast_resnet/__init__.py'} <= set(files), files
    bad = [f for f in files if f.split('/')[0] not in ('fast_resnet', 'fast_resnet.egg-info')
           and f not in ('pyproject.toml', 'README.md', 'PKG-INFO', 'setup.cfg', 'MANIFEST.in')]
    assert not bad, f'the sdist holds more than the package: {bad}'  # no notebooks, their outputs, tests or data

@pytest.fixture(scope='module')
def env(dist, tmp_path_factory):
    "A fresh venv with the wheel installed, and an environment with nothing pointing at the checkout"
    whl, _ = dist
    home = tmp_path_factory.mktemp('user')
    py = make_venv(home/'venv')
    run(sys.executable, '-m', 'pip', '--python', py, 'install', '-q', '--no-index', '--no-deps', '--force-reinstall', whl, cwd=home)
    e = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'FAST_RESNET_DATA', 'VIRTUAL_ENV')}
    e.update(PATH=f'{home/"venv"/"bin"}{os.pathsep}{e.get("PATH", "")}', MPLBACKEND='Agg', FAST_RESNET_CACHE=CACHE, PYTHONUNBUFFERED='1')
    return home, py, e

CHECK = """import importlib.metadata as md, json, sys
from packaging.requirements import Requirement
import fast_resnet, fast_resnet.cli
missing = []
for r in map(Requirement, md.requires('fast_resnet') or []):
    if r.marker and not r.marker.evaluate({'extra': ''}): continue
    try: v = md.version(r.name)
    except md.PackageNotFoundError: v = None
    if v is None or not r.specifier.contains(v, prereleases=True): missing.append(f'{r} (found {v})')
print(json.dumps(dict(file=fast_resnet.cli.__file__, version=fast_resnet.__version__, dist=str(md.distribution('fast_resnet')._path), missing=missing)))
"""

def test_import_from_the_venv(env):
    home, py, e = env
    r = json.loads(run(py, '-c', CHECK, cwd=home, env=e).stdout)
    venv_dir = (home/'venv').resolve()
    assert Path(r['file']).resolve().is_relative_to(venv_dir), f"fast_resnet imported from {r['file']}, not the venv"
    assert Path(r['dist']).resolve().is_relative_to(venv_dir), r
    assert not r['missing'], f"the wheel's dependencies are not met: {r['missing']}"

def test_command_trains_and_predicts(env):
    "`fast_resnet train --quick` on the real data (2 epochs, not 5, to keep CI short), then `fast_resnet predict`"
    REAL_DATA = real_data()
    home, py, e = env
    cmd = home/'venv'/'bin'/'fast_resnet'
    assert cmd.is_file()
    first = cmd.read_text().splitlines()[0]
    assert first == f'#!{py}', first  # the venv's Python runs the command
    r = run(cmd, 'train', '--data', REAL_DATA, '--out', home/'run', '--quick', '--epochs', 2, '--peak-epoch', 1, '--seed', 0,
            cwd=home, env=e)
    assert 'test accuracy' in r.stdout, r.stdout
    m = json.loads((home/'run'/'metrics.json').read_text())
    assert m['complete'] is True and m['epochs'] == 2 and 0.2 < m['test_acc'] <= 1, m  # chance is 0.1
    imgs = sorted((REAL_DATA/'test'/'cat').glob('*.png'))[:2] + sorted((REAL_DATA/'test'/'ship').glob('*.png'))[:1]
    r = run(cmd, 'predict', home/'run'/'model.pkl', *imgs, cwd=home, env=e)
    lines = r.stdout.strip().splitlines()
    vocab = {d.name for d in (REAL_DATA/'test').iterdir() if d.is_dir()}
    assert len(lines) == len(imgs), r.stdout
    for line, img in zip(lines, imgs):
        f, cls, conf = line.split('\t')  # image, class, confidence
        assert f == str(img) and cls in vocab and 0 < float(conf) <= 1, line

def test_editable_beside_the_clone(tmp_path):
    """The README's `pip install -e .`, then Python started in the clone's parent folder, where the clone's own folder
    `fast_resnet/` (no __init__.py) is on sys.path: `import fast_resnet` is still the checkout's package, not that folder
    as an empty namespace package"""
    py = make_venv(tmp_path/'venv')
    run(sys.executable, '-m', 'pip', '--python', py, 'install', '-q', '--no-deps', '--no-build-isolation', '-e', ROOT, cwd=tmp_path)
    (tmp_path/'parent'/'fast_resnet').mkdir(parents=True)
    e = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'VIRTUAL_ENV')}
    r = run(py, '-c', 'import fast_resnet; fast_resnet.train; print(fast_resnet.__file__)', cwd=tmp_path/'parent', env=e)
    assert Path(r.stdout.strip()) == ROOT/'fast_resnet'/'__init__.py', r.stdout
