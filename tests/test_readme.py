"README.md is nbs/index.ipynb rendered by nbconvert (Quarto cannot be installed offline)."
import subprocess, sys
from conftest import ROOT

def test_readme_is_rendered_from_index(tmp_path):
    subprocess.run([sys.executable, '-m', 'nbconvert', '--to', 'markdown', str(ROOT/'nbs'/'index.ipynb'),
                    '--output-dir', str(tmp_path), '--output', 'README'], check=True, capture_output=True)
    assert (tmp_path/'README.md').read_text() == (ROOT/'README.md').read_text(), \
        "README.md is stale: jupyter nbconvert --to markdown nbs/index.ipynb --output-dir . --output README"

def test_ci_fails_when_a_notebook_fails(tmp_path):
    "`.ci/run` with every command it calls stubbed: a failing nbdev-test fails CI, and the tests after it still run"
    import os, shutil, stat
    (tmp_path/'.ci').mkdir(); shutil.copy(ROOT/'.ci'/'run', tmp_path/'.ci'/'run')
    (tmp_path/'tools').mkdir(); bin_ = tmp_path/'bin'; bin_.mkdir()
    log = tmp_path/'calls.log'
    def stub(path, code=0):
        path.write_text(f'#!/bin/sh\necho "$(basename "$0") $*" >> {log}\nexit {code}\n')
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    for name in ('python3', 'nbdev-export', 'git', 'chromium'): stub(bin_/name)
    stub(bin_/'nbdev-test', 1); stub(tmp_path/'tools'/'gpu-programme')
    r = subprocess.run(['bash', str(tmp_path/'.ci'/'run')], capture_output=True, text=True,
                       env={**os.environ, 'PATH': f"{bin_}:{os.environ['PATH']}"})
    assert r.returncode == 1 and 'CI failed in: nbdev-test' in r.stdout, (r.returncode, r.stdout, r.stderr)
    calls = log.read_text().splitlines()
    assert calls[-3:] == ['nbdev-test ', 'python3 -m pytest -q', 'python3 -m pytest -q -m wheel or slow'], calls
