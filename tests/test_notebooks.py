"""The notebooks as nbdev's docs processing sees them, and their committed outputs as a reader sees them.

`nbdev-docs` processes every notebook before Quarto renders it (`nbdev.serve_drv.main` with nbdev's
`FilterDefaults`, from the project's root): it adds a `show_doc` entry after each exported name and *executes* the
cells it needs for them. It decides which by `nbdev.processors._do_eval`: every exported cell, every `show_doc`, and
every cell holding an import, whatever else the cell does and whatever its flags (`#| slow` is nbdev-test's flag,
`tst_flags`; the processing never reads it; only `#| eval: false` stops it). A cell that mixes imports with other
code is run without the cells above it (a NameError) or runs a long computation, and nbdev warns "Found cells
containing imports and other code". So imports get cells of their own, and the processing runs nothing but imports,
exported code and `show_doc`: a second or so per notebook.
"""
import ast, json, os, re, subprocess, sys, warnings
from pathlib import Path
import pytest
from conftest import ROOT

NBS = ROOT/'nbs'

def notebooks():
    return sorted(f for f in NBS.rglob('*.ipynb') if not any(p.startswith(('.', '_')) for p in f.relative_to(NBS).parts))

def _cells(fn):
    "nbdev's view of the code cells of `fn` (directives parsed), with their index"
    from nbdev.process import NBProcessor
    nb = NBProcessor(fn, rm_directives=False).nb
    return [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == 'code']

def _is_import(t): return isinstance(t, (ast.Import, ast.ImportFrom))

def test_processing_runs_only_imports_exports_and_show_doc():
    "Every cell nbdev's processing would execute is an exported cell, a show_doc, or imports alone; never a slow cell"
    from nbdev.config import get_config
    from nbdev.processors import _do_eval, _want_doc, _show_docs
    flags = get_config().tst_flags
    flags = set(flags.split() if isinstance(flags, str) else flags) or {'slow'}
    bad = []
    for fn in notebooks():
        cells = _cells(fn)
        # as exec_show_docs decides: a notebook with nothing exported and no show_doc has no cell run at all
        if not any(_want_doc(c) or _show_docs(c.parsed_() or []) for _, c in cells): continue
        for i, c in cells:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')  # nbdev's own warning is what this test reports, with the cell named
                runs = _do_eval(c)
            if not runs: continue
            d, top = c.directives_, c.parsed_() or []
            where = f'{fn.relative_to(ROOT)} cell {i}: {c.source.strip().splitlines()[0][:70]!r}'
            if flags & d.keys(): bad.append(f'{where}: flagged {sorted(flags & d.keys())} but the docs processing runs it (it holds an import)')
            elif d.keys() & {'export', 'exports', 'exporti', 'exec_doc'}: continue
            elif all(_is_import(t) for t in top): continue
            elif len(top) == 1 and isinstance(top[0], ast.Expr) and getattr(top[0].value, 'func', None) is not None \
                    and getattr(top[0].value.func, 'id', '') == 'show_doc': continue
            else: bad.append(f'{where}: the docs processing runs it (it holds an import): give its imports a cell of their own')
    assert not bad, '\n'.join(bad)

# nbdev-docs' own worker on each notebook, in one process (imports are shared, so the whole set takes seconds)
PROCESS = r'''
import json, os, sys, time, warnings
from pathlib import Path
import nbdev.serve_drv
from nbdev.processors import FilterDefaults
out = Path(sys.argv[1])
for src in map(Path, sys.argv[2:]):
    t = time.time()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        try: nbdev.serve_drv.main((src, out/src.name, FilterDefaults)); err = None
        except Exception as e: err = f'{type(e).__name__}: {e}'[-1500:]
    print(json.dumps(dict(nb=src.name, seconds=round(time.time() - t, 1), error=err,
                          warnings=[str(x.message)[:300] for x in w if 'imports and other code' in str(x.message)])), flush=True)
'''

def test_nbdev_docs_processing(tmp_path):
    "nbdev's docs processing (the step nbdev-docs runs before Quarto) passes on every notebook, without its warning"
    env = {**os.environ, 'MPLBACKEND': 'Agg', 'OMP_NUM_THREADS': '1'}
    r = subprocess.run([sys.executable, '-c', PROCESS, str(tmp_path), *map(str, notebooks())], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = [json.loads(l) for l in r.stdout.splitlines() if l.startswith('{')]
    assert [x['nb'] for x in res] == [f.name for f in notebooks()], r.stderr[-3000:]
    problems = [f"{x['nb']}: {x['error']}" for x in res if x['error']]
    problems += [f"{x['nb']}: nbdev warns: {m}" for x in res for m in x['warnings']]
    assert not problems, '\n\n'.join(problems)
    # it gave the exported names their entries: the learner's page documents CifarLearner
    from fastcore.nbio import read_nb
    learner = read_nb(tmp_path/'04_learner.ipynb')
    assert any(c.source.endswith('show_doc(CifarLearner)') for c in learner.cells if c.cell_type == 'code')

# What a committed output must not show: a machine's absolute path (a home, a user name, the interpreter's
# site-packages, a temporary folder), or a warning printed by the environment (a library's FutureWarning)
MACHINE = re.compile(r'(?<![\w.:/~-])/(?:work|root|home|Users|tmp|private|var/folders|opt|usr|mnt|srv|scratch)(?=/|\b)'
                     r'|site-packages|dist-packages|\.pyenv|\bconda\b/|[A-Za-z]:\\\\')
ENV_WARNING = re.compile(r'^\S+\.py:\d+: \w*Warning: ', re.M)

def _output_text(o):
    if o.get('output_type') == 'stream': return ''.join(o.get('text', ''))
    if o.get('output_type') == 'error': return '\n'.join(o.get('traceback', [])) + f"\n{o.get('ename')}: {o.get('evalue')}"
    return '\n'.join(''.join(v) if isinstance(v, list) else str(v) for k, v in o.get('data', {}).items()
                     if k.startswith('text/') or k.endswith('json'))

def output_problems(fn):
    nb = json.loads(Path(fn).read_text())
    res = []
    for i, c in enumerate(nb['cells']):
        for o in c.get('outputs', []):
            txt = _output_text(o)
            for m in [*MACHINE.finditer(txt), *ENV_WARNING.finditer(txt)]:
                line = txt[txt.rfind('\n', 0, m.start()) + 1:].split('\n', 1)[0]
                res.append(f'{Path(fn).relative_to(ROOT)} cell {i}: {line.strip()[:160]}')
    return res

def test_output_scan_finds_paths():
    "The scan itself: it finds what it is for, and leaves URLs and relative paths alone"
    assert MACHINE.search('CifarData(folder: 40 train, /tmp/tmp9kti6ab3/folder)')
    assert MACHINE.search('decoding 120 images once (later runs read them from /root/.cache/fast_resnet)')
    assert MACHINE.search('/usr/lib/python3/dist-packages/torch/jit/_script.py:1491: FutureWarning: x')
    assert MACHINE.search(r'C:\\Users\\ana\\data')
    assert ENV_WARNING.search('torch/jit/_script.py:1491: FutureWarning: `torch.jit.script` is deprecated')
    for ok in ('https://github.com/fast-resnet/fast_resnet/tmp/x', 'runs/tmp/x', '../shared/data/cifar10',
               '~/.cache/fast_resnet', 'lr 1e-3/step', 'data/range_tests_mid.json'):
        assert not MACHINE.search(ok), ok

@pytest.mark.parametrize('fn', notebooks(), ids=lambda f: f.name)
def test_no_machine_paths_in_outputs(fn):
    "No committed output shows a machine's path or an environment's warning (tools/run-notebooks makes them)"
    problems = output_problems(fn)
    assert not problems, 'outputs show a machine path or an environment warning (fix the print, re-run the notebook):\n' + '\n'.join(problems)
