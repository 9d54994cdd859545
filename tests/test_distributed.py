"Data-parallel runs and studies on 2 CPU processes (gloo): one run folder, one process's schedule, each test image once, resume after SIGKILL, faults."
import csv, json, os, re, signal, socket, subprocess, sys, time
import pytest
from conftest import ROOT, CACHE, cli, assert_bad_input

pytest.importorskip('accelerate', reason="the `distributed` extra (pip install -e '.[dev]' installs it)")

EPOCHS = 6
# the LR range test runs (on rank 0, with the whole batch) in these runs; the fault tests give the LRs
ARGS = ['--epochs', str(EPOCHS), '--peak-epoch', '2', '--bs', '32', '--width', '8', '--lr-find-iters', '60', '--seed', '1', '--device', 'cpu']
GIVEN = ['--epochs', '40', '--peak-epoch', '2', '--bs', '32', '--width', '8', '--lr-min', '0.004', '--lr-max', '0.1', '--seed', '1', '--device', 'cpu']
N_TEST = 50  # the fake test set: 5 images of each of the 10 classes
# one thread per process (the CI machine's cores are shared); a short process-group timeout bounds any hang
CLI_ENV = dict(OMP_NUM_THREADS='1', FAST_RESNET_DIST_TIMEOUT='60')  # what `cli` adds to these
ENV = dict(CLI_ENV, MPLBACKEND='Agg', PYTHONUNBUFFERED='1', FAST_RESNET_CACHE=CACHE)

def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def launch_cmd(*args, n=2, launcher='torchrun'):
    "The command line that starts `fast_resnet ARGS` in `n` processes with `launcher`, as a user would"
    if launcher == 'torchrun': pre = ['torch.distributed.run', '--standalone', '--nproc_per_node', str(n)]
    else: pre = ['accelerate.commands.launch', '--multi_gpu', '--num_processes', str(n), '--num_machines', '1',
                 '--mixed_precision', 'no', '--dynamo_backend', 'no', '--main_process_port', str(free_port())]
    return [sys.executable, '-m', *pre, '-m', 'fast_resnet', *map(str, args)]

def env(**kw):
    e = {k: v for k, v in os.environ.items() if k not in ('FAST_RESNET_DATA', 'WORLD_SIZE', 'RANK', 'LOCAL_RANK')}
    return {**e, **ENV, **kw}

def launch(*args, n=2, launcher='torchrun', timeout=600, **kw):
    return subprocess.run(launch_cmd(*args, n=n, launcher=launcher), capture_output=True, text=True, cwd=ROOT, env=env(**kw), timeout=timeout)

def rows(path): return list(csv.DictReader(open(path)))
def history(run): return [{k: v for k, v in r.items() if k != 'seconds'} for r in rows(run/'history.csv')]
def errors(stderr): return [l for l in stderr.splitlines() if l.startswith('error: ')]

@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from fast_resnet.data import make_fake_cifar
    return make_fake_cifar(tmp_path_factory.mktemp('ddp') / 'cifar', n_train=20, n_test=N_TEST // 10)

@pytest.fixture(scope='module')
def two(data, tmp_path_factory):
    "An uninterrupted 2-process run started by `accelerate launch`, and the same settings in one process"
    base = tmp_path_factory.mktemp('two')
    t0 = time.time()
    r2 = launch('train', '--data', data, '--out', base/'two', *ARGS, launcher='accelerate')
    t2 = time.time() - t0
    assert r2.returncode == 0, r2.stderr[-3000:]
    t0 = time.time()
    r1 = cli('train', '--data', data, '--out', base/'one', *ARGS, env=CLI_ENV)
    t1 = time.time() - t0
    assert r1.returncode == 0, r1.stderr[-3000:]
    print(f"wall time: 2 processes {t2:.1f} s, 1 process {t1:.1f} s (ratio {t2 / t1:.2f})")
    return base, r2

def test_one_run_folder(two):
    base, r = two
    assert sorted(p.name for p in base.iterdir()) == ['one', 'two']  # no second folder from the other process
    out = base/'two'
    names = {p.name for p in out.iterdir()}
    for f in ('config.json', 'history.csv', 'lr_schedule.csv', 'checkpoint.pth', 'model.pkl', 'model.pth', 'report.md',
              'metrics.json', 'lr_find.png', 'batch.png', 'curves.png', 'one_cycle.png', 'confusion.png'): assert f in names, f
    assert not any(n.endswith('.tmp') for n in names)
    m = json.loads((out/'metrics.json').read_text())
    assert m['complete'] is True and m['world_size'] == 2
    cfg = json.loads((out/'config.json').read_text())
    assert (cfg['world_size'], cfg['backend'], cfg['bs']) == (2, 'gloo', 32)
    assert [int(x['epoch']) for x in rows(out/'history.csv')] == list(range(1, EPOCHS + 1))  # written once, by rank 0
    assert r.stdout.count('test accuracy') == 1  # rank 0 reports, once
    assert 'Traceback' not in r.stderr

def test_same_schedule_as_one_process(two):
    base, _ = two
    c1, c2 = (json.loads((base/o/'config.json').read_text()) for o in ('one', 'two'))
    assert c1['lr_source'] == c2['lr_source'] == 'lr_find'
    assert (c1['lr_min'], c1['lr_max']) == (c2['lr_min'], c2['lr_max'])  # the range test once, as in one process
    a, b = ((base/o/'lr_schedule.csv').read_text() for o in ('one', 'two'))
    assert a == b and len(a.splitlines()) == 1 + EPOCHS * (200 // 32)  # iterations of the global batch, LR for LR

def test_each_test_image_counted_once(two, data):
    base, _ = two
    m = json.loads((base/'two'/'metrics.json').read_text())
    assert m['n_scored'] == N_TEST
    assert json.loads((base/'one'/'metrics.json').read_text())['n_scored'] == N_TEST
    # the exported network, in one CPU process, scores the test set as the 2-process evaluation did
    files = sorted((data/'test').glob('*/*.png'))
    r = cli('predict', base/'two', *files, env=CLI_ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    preds = [l.split('\t') for l in r.stdout.splitlines()]
    assert len(preds) == N_TEST
    acc = sum(p[1] == p[0].split('/')[-2] for p in preds) / N_TEST
    assert abs(acc - m['test_acc']) <= 1 / N_TEST, (acc, m['test_acc'])  # one near-tie of the two input paths at most

def test_python_api_in_a_launched_script(data, tmp_path):
    "`fast_resnet.train` in a script that a launcher starts: one run, its metrics returned in every process (with the EMA lever)"
    script = tmp_path/'script.py'
    script.write_text(f"""
import json, fast_resnet
learn, m = fast_resnet.train(data={str(data)!r}, out={str(tmp_path/'api')!r}, epochs=2, peak_epoch=1, bs=32, width=8,
                             lr_min=0.004, lr_max=0.1, seed=3, device='cpu', ema=0.9)
from fast_resnet.distributed import rank
# each process its own file: two processes' lines on one shared stdout can interleave
with open(f'rank{{rank()}}.json', 'w') as f: json.dump(dict(rank=rank(), n_scored=m['n_scored'], test_acc=m['test_acc'], model=type(learn.model).__name__), f)
""")
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', str(script)],
                       capture_output=True, text=True, cwd=tmp_path, env=env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    outs = [json.loads((tmp_path/f'rank{i}.json').read_text()) for i in (0, 1)]
    assert [o['rank'] for o in outs] == [0, 1] and outs[0]['test_acc'] == outs[1]['test_acc']  # rank 0's metrics, everywhere
    assert all(o['n_scored'] == N_TEST and o['model'] == 'CustomResNet' for o in outs)  # unwrapped after the fit
    assert sorted(p.name for p in tmp_path.iterdir()) == ['api', 'rank0.json', 'rank1.json', 'script.py']  # one run folder
    assert json.loads((tmp_path/'api'/'metrics.json').read_text())['complete'] is True

@pytest.mark.slow  # kill-and-resume of one process is in the default tests (test_resume.py); a resume in one process below
def test_sigkill_then_resume(two, data, tmp_path):
    base, _ = two
    out = tmp_path/'killed'
    p = subprocess.Popen(launch_cmd('train', '--data', data, '--out', out, *ARGS), cwd=ROOT, env=env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while time.time() - t0 < 300:  # kill the launcher and both processes once an epoch is checkpointed
        if (out/'checkpoint.pth').exists() or p.poll() is not None: break
        time.sleep(0.02)
    import psutil  # accelerate's dependency
    procs = psutil.Process(p.pid).children(recursive=True)  # torchrun starts its workers in sessions of their own
    assert len([q for q in procs if 'fast_resnet' in ' '.join(q.cmdline())]) == 2, "the run ended before it could be killed"
    for q in [psutil.Process(p.pid)] + procs: q.send_signal(signal.SIGKILL)
    p.wait(); psutil.wait_procs(procs, timeout=30)
    assert p.returncode == -signal.SIGKILL and not any(q.is_running() and q.status() != psutil.STATUS_ZOMBIE for q in procs)
    assert not (out/'metrics.json').exists()
    import torch
    done = torch.load(out/'checkpoint.pth', weights_only=False)['epoch']
    assert 1 <= done < EPOCHS
    r = launch('train', '--data', data, '--out', out, '--resume', *ARGS)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [int(x['epoch']) for x in rows(out/'history.csv')] == list(range(1, EPOCHS + 1))  # every epoch once
    assert (out/'lr_schedule.csv').read_text() == (base/'one'/'lr_schedule.csv').read_text()  # the same schedule
    assert history(out) == history(base/'two')  # and the uninterrupted 2-process run's figures: every process's state came back
    cfg = json.loads((out/'config.json').read_text())
    assert cfg['resumed'] == [dict(epoch=done, world_size=2, backend='gloo')]

def test_resume_with_one_process(two, data, tmp_path):
    "The schedule depends on the global batch only: a 2-process run goes on in one process"
    import shutil, torch
    base, _ = two
    out = tmp_path/'more'
    shutil.copytree(base/'two', out)
    ck = torch.load(out/'checkpoint.pth', weights_only=False)
    assert len(ck['rng_ranks']) == 2 and 'module.' not in next(iter(ck['model']))  # every process's states; the bare network
    ck['epoch'] = 3; torch.save(ck, out/'checkpoint.pth')  # as if stopped after epoch 3 (weights aside)
    (out/'metrics.json').unlink()
    r = cli('train', '--data', data, '--out', out, '--resume', *ARGS, env=CLI_ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [int(x['epoch']) for x in rows(out/'history.csv')] == list(range(1, EPOCHS + 1))
    assert (out/'lr_schedule.csv').read_text() == (base/'one'/'lr_schedule.csv').read_text()
    assert json.loads((out/'metrics.json').read_text())['world_size'] == 1

def test_a_failing_process_stops_the_run(data, tmp_path):
    out = tmp_path/'fault'
    t0 = time.time()
    r = launch('train', '--data', data, '--out', out, *GIVEN, FAST_RESNET_FAULT='1:2')  # test hook: rank 1 raises in epoch 2
    took = time.time() - t0
    assert r.returncode != 0
    assert took < 120, took  # not the process-group timeout of a hung peer, nor NCCL's 10 minutes
    failed = [l for l in errors(r.stderr) if l.startswith('error: rank 1 of 2 failed: RuntimeError')]
    assert len(failed) == 1 and 'FAST_RESNET_FAULT=1:2' in failed[0] and 'keeps 1 finished epoch' in failed[0], r.stderr[-3000:]
    assert [int(x['epoch']) for x in rows(out/'history.csv')] == [1]  # the finished epoch is kept
    import torch
    assert torch.load(out/'checkpoint.pth', weights_only=False)['epoch'] == 1
    m = json.loads((out/'metrics.json').read_text())  # rank 0 wrote what finished: not complete
    assert m['complete'] is False and m['epochs_done'] == 1 and m['stopped']['epoch'] == 2, m

@pytest.mark.slow  # a second fault: a process killed (the default tests: one that raises, and the launcher's SIGTERM)
def test_a_dying_process_stops_the_run(data, tmp_path):
    import psutil, torch
    out = tmp_path/'dies'
    p = subprocess.Popen(launch_cmd('train', '--data', data, '--out', out, *GIVEN), cwd=ROOT, env=env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while time.time() - t0 < 300 and not (out/'checkpoint.pth').exists() and p.poll() is None: time.sleep(0.02)
    workers = [q for q in psutil.Process(p.pid).children(recursive=True) if 'fast_resnet' in ' '.join(q.cmdline())]
    rank1 = [q for q in workers if q.environ().get('RANK') == '1']
    assert len(workers) == 2 and len(rank1) == 1, "the run ended before a process could be killed"
    rank1[0].send_signal(signal.SIGKILL)
    t0 = time.time()
    _, stderr = p.communicate(timeout=300)
    assert p.returncode != 0 and time.time() - t0 < 60, time.time() - t0  # the others stop; no hang
    # what rank 0 sees first is a race: its collective breaking on the dead process's socket, or the launcher's SIGTERM
    # (torchrun's monitor saw the death first: CI's run of this test); either way one line, and the finished epochs kept
    stopped = [l for l in errors(stderr) if l.startswith('error: rank 0 of 2 stopped: ')]
    assert len(stopped) == 1 and '--resume continues it' in stopped[0], stderr[-3000:]
    assert any(why in stopped[0] for why in ('another process of the run failed, was killed or hung', 'the launcher sent SIGTERM')), stopped
    assert 'LauncherStopped' not in stderr  # the launcher's SIGTERM after the line above ends the process quietly
    assert 'rank      : 1 (local_rank: 1)' in stderr and 'SIGKILL' in stderr  # the launcher names the process that died
    done = torch.load(out/'checkpoint.pth', weights_only=False)['epoch']
    assert done >= 1 and len(rows(out/'history.csv')) == done
    assert json.loads((out/'metrics.json').read_text())['complete'] is False

def test_study_shares_seeds(data, tmp_path):
    out = tmp_path/'study'
    args = ['--epochs', '2', '--peak-epoch', '1', '--bs', '32', '--width', '8', '--lr-find-iters', '60', '--device', 'cpu']
    r = launch('study', '--data', data, '--out', out, '--seeds', '4', *args)
    assert r.returncode == 0, r.stderr[-3000:]
    for seed, rank in ((0, 0), (1, 1), (2, 0), (3, 1)):  # rank k takes seeds k, k + 2
        assert f"rank {rank} of 2: run {seed + 1} of 4, seed {seed}" in r.stdout
    res = json.loads((out/'study.json').read_text())
    assert res['complete'] is True and [x['seed'] for x in res['runs']] == [0, 1, 2, 3]
    cfgs = [json.loads((out/f'seed-{i}'/'config.json').read_text()) for i in range(4)]
    assert [c['seed'] for c in cfgs] == [0, 1, 2, 3] and [c['world_size'] for c in cfgs] == [1] * 4  # whole runs, one process each
    assert [c['lr_source'] for c in cfgs] == ['lr_find', 'given', 'given', 'given']  # the range test once, its LRs for all
    assert all((c['lr_min'], c['lr_max']) == (res['lr_min'], res['lr_max']) for c in cfgs)
    for i in range(4):
        assert [int(x['epoch']) for x in rows(out/f'seed-{i}'/'history.csv')] == [1, 2]  # each trained once
        m = json.loads((out/f'seed-{i}'/'metrics.json').read_text())
        assert (m['test_acc'], m['tta_acc']) == (res['runs'][i]['test_acc'], res['runs'][i]['tta_acc'])
    # --resume goes on with the missing seeds whatever the number of processes: here one
    import shutil
    shutil.rmtree(out/'seed-3')
    kept = (out/'seed-2'/'metrics.json').read_text()
    r = cli('study', '--data', data, '--out', out, '--seeds', '4', '--resume', *args, env=CLI_ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'run 4 of 4, seed 3' in r.stdout and 'run 3 of 4' not in r.stdout  # only the missing seed ran
    assert (out/'seed-2'/'metrics.json').read_text() == kept
    res = json.loads((out/'study.json').read_text())
    assert res['complete'] is True and [x['seed'] for x in res['runs']] == [0, 1, 2, 3]

def test_bad_input_said_once(data, tmp_path):
    # what each launched process does before anything starts: one line, exit 2
    e = dict(CLI_ENV, WORLD_SIZE='2', RANK='0')
    assert_bad_input(cli('train', '--data', data, '--out', tmp_path/'x', *ARGS[:4], '--bs', '33', env=e),
                     '--bs 33 does not split over the 2 processes (each takes --bs / 2): give a multiple of 2, such as 32 or 34')
    assert_bad_input(cli('train', '--data', data, '--out', tmp_path/'x', '--loader', 'datablock', env=e),
                     '--loader datablock does not run data-parallel')
    # under the launcher: said once (by rank 0), and the launch fails
    r = launch('train', '--data', data, '--out', tmp_path/'x', '--bs', '33', '--device', 'cpu')
    assert r.returncode != 0 and not (tmp_path/'x').exists()
    assert errors(r.stderr) == ["error: --bs 33 does not split over the 2 processes (each takes --bs / 2): give a multiple of 2, such as 32 or 34"]
    r = launch('train', '--data', tmp_path/'nope', '--out', tmp_path/'x', '--device', 'cpu')  # every process checks the data
    assert errors(r.stderr) == [f"error: --data {tmp_path/'nope'} does not exist: point --data at a CIFAR-10 folder "
                                "(train/<class>/*.png or cifar-10-batches-py/)"], r.stderr[-2000:]
    # what rank 0 checks and tells the others (the run folder): said once too
    (tmp_path/'full').mkdir(); (tmp_path/'full'/'x').write_text('x')
    r = launch('train', '--data', data, '--out', tmp_path/'full', *GIVEN)
    assert r.returncode != 0
    assert errors(r.stderr) == [f"error: --out {tmp_path/'full'} already holds files: name a new or empty folder"], r.stderr[-2000:]
    # the others waited for rank 0 to say it and exit: the launcher names rank 0's exit 2 as the cause (when one exited
    # first, the launcher's SIGTERM could reach rank 0 before its line: 'stopped by SIGTERM' instead, in CI once)
    cause = r.stderr.split('Root Cause')[-1]
    assert re.search(r'rank\s*: 0 \(local_rank: 0\)\s*exitcode\s*: 2\b', cause), cause

def test_sigterm_from_the_launcher(data, tmp_path):
    "A launcher stops the processes with SIGTERM once one has failed: the process says so in one line, exits 1, keeps its epochs"
    out = tmp_path/'term'
    e = env(WORLD_SIZE='1', RANK='0', LOCAL_RANK='0', LOCAL_WORLD_SIZE='1', MASTER_ADDR='127.0.0.1', MASTER_PORT=str(free_port()))
    p = subprocess.Popen([sys.executable, '-m', 'fast_resnet', 'train', '--data', str(data), '--out', str(out), *GIVEN],
                         cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while time.time() - t0 < 300 and p.poll() is None:  # as torchrun's agent does, after one finished epoch
        if (out/'history.csv').exists() and len((out/'history.csv').read_text().splitlines()) >= 2: break
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 1, (p.returncode, err[-3000:])
    lines = errors(err)
    assert len(lines) == 1 and 'rank 0 of 1 stopped: the launcher sent SIGTERM' in lines[0] and '--resume continues it' in lines[0], err[-3000:]
    assert 'Traceback' not in err
    m = json.loads((out/'metrics.json').read_text())
    assert (out/'checkpoint.pth').exists() and m['complete'] is False and m['stopped']['signal'] == 'SIGTERM', m
    assert (out/'report.md').read_text().splitlines()[2].startswith('**This run did not finish: it was stopped by SIGTERM**')
