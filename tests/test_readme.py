"README.md is nbs/index.ipynb rendered by nbconvert (Quarto cannot be installed offline)."
import subprocess, sys
from conftest import ROOT

def test_readme_is_rendered_from_index(tmp_path):
    subprocess.run([sys.executable, '-m', 'nbconvert', '--to', 'markdown', str(ROOT/'nbs'/'index.ipynb'),
                    '--output-dir', str(tmp_path), '--output', 'README'], check=True, capture_output=True)
    assert (tmp_path/'README.md').read_text() == (ROOT/'README.md').read_text(), \
        "README.md is stale: jupyter nbconvert --to markdown nbs/index.ipynb --output-dir . --output README"
