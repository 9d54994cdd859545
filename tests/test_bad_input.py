"Bad input on the command line: one line `error: ...`, exit code 2, no traceback, no output that looks complete."
import json, shutil
from pathlib import Path
import pytest
from conftest import cli, cli_here, assert_bad_input

# in this process (`cli_here`): the message and the exit code are the command's; `test_unknown_command` and the help run it for real
@pytest.mark.parametrize('args,msg', [
    (['--epochs', '0'], '--epochs must be positive'),
    (['--epochs', '-3'], '--epochs must be positive'),
    (['--epochs', 'ten'], '--epochs must be a number'),
    (['--epochs', '2.5'], '--epochs must be a whole number'),
    (['--bs', '0'], '--bs must be positive'),
    (['--bs', 'big'], '--bs must be a number'),
    (['--peak-epoch', '30'], '--peak-epoch 30 must lie inside the run'),
    (['--epochs', '5', '--peak-epoch', '5'], 'must lie inside the run'),
    (['--lr-min', '0.1', '--lr-max', '0.01'], '--lr-min 0.1 must be below --lr-max 0.01'),
    (['--lr-min', '0', '--lr-max', '0.01'], '--lr-min must be positive'),
    (['--lr-min', '-1', '--lr-max', '0.01'], '--lr-min must be positive'),
    (['--lr-min', '0.1', '--lr-max', '0.1'], 'must be below'),
    (['--lr-min', '0.001', '--lr-max', '0.1'], 'at most 25'),
    (['--lr-min', '0.01'], 'give both --lr-min and --lr-max'),
    (['--lr-max', '0.1'], 'give both --lr-min and --lr-max'),
    (['--lr-min', 'x', '--lr-max', '0.1'], '--lr-min must be a number'),
    (['--opt', 'rmsprop'], '--opt must be one of sgd, nesterov, adam'),
    (['--mom', '1.5'], "--mom must be 'cycle' or a momentum in [0, 1)"),
    (['--mom', 'fixed'], "--mom must be 'cycle' or a momentum"),
    (['--ema', '1'], '--ema must be in [0, 1)'),
    (['--label-smoothing', '-0.1'], '--label-smoothing must be in [0, 1)'),
    (['--fc-scale', '0'], '--fc-scale must be in (0, inf)'),
    (['--bn-mom', '2'], '--bn-mom must be in (0, 1]'),
    (['--bn-eps', 'tiny'], '--bn-eps must be a number'),
    (['--lr-rule', 'divergence'], '--lr-rule must be one of floor, minimum, middle, knee, steep, valley'),
    (['--precision', 'fp8'], '--precision must be one of auto, bf16, fp16, fp32'),
    (['--bias-lr', '0'], '--bias-lr must be in (0, inf)'),
    (['--opt', 'adam', '--bias-lr', '4'], '--bias-lr applies to --opt nesterov only'),
    (['--lr-from', '/nonexistent/lrs'], '--lr-from /nonexistent/lrs does not exist'),
    (['--loader', 'ffcv'], '--loader must be one of fast, datablock'),
    (['--valid', '--n-test', '6000'], '--n-test 6000 is more than the 5000 images --valid holds out'),
    (['--device', 'tpu'], '--device must be one of auto, cpu, cuda, mps'),
    (['--pad-mode', 'wrap'], '--pad-mode must be one of'),
    (['--seed', '-1'], '--seed must be in'),
    (['--bogus', '1'], 'unrecognized arguments: --bogus'),
    (['--epochs'], 'expected one argument'),
])
def test_bad_settings(args, msg, tmp_path):
    r = cli_here('train', '--out', tmp_path/'run', *args)
    assert_bad_input(r, msg)
    assert not (tmp_path/'run').exists()  # nothing written

def test_cuda_missing(tmp_path):
    import torch
    if torch.cuda.is_available(): pytest.skip('a CUDA GPU is visible here')
    assert_bad_input(cli_here('train', '--device', 'cuda', '--out', tmp_path/'run'), 'no CUDA GPU is visible')

def test_unknown_command(): assert_bad_input(cli('fly'), "unknown command 'fly'")  # the real command: a process of its own

def test_no_command():
    r = cli()
    assert r.returncode == 2 and 'usage: fast_resnet' in r.stdout

def test_help():
    r = cli('train', '--help')
    assert r.returncode == 0 and '--lr-min' in r.stdout and '--quick' in r.stdout

def test_help_types():
    "--help names each option's type or choices, not `(str)`, though `train_settings` checks the values (the tests above)"
    r = cli('train', '--help')
    assert r.returncode == 0 and '(str)' not in r.stdout, r.stdout
    for s in ('--data (path)', '--epochs (int)', '--lr-min (float)', '--opt (sgd|nesterov|adam)', '--mom (float|cycle)'): assert s in r.stdout, s

# The data folder: every case is answered before any training starts.
def test_data_missing(tmp_path): assert_bad_input(cli_here('train', '--data', tmp_path/'nope', '--out', tmp_path/'r'), 'does not exist')

def test_data_is_file(tmp_path):
    (tmp_path/'f.txt').write_text('x')
    assert_bad_input(cli_here('train', '--data', tmp_path/'f.txt', '--out', tmp_path/'r'), 'is a file')

def test_data_empty(tmp_path):
    (tmp_path/'empty').mkdir()
    assert_bad_input(cli_here('train', '--data', tmp_path/'empty', '--out', tmp_path/'r'), 'holds neither train/ and test/')

def test_data_no_test_split(tmp_path, fake_data):
    d = tmp_path/'d'; shutil.copytree(fake_data/'train', d/'train')
    assert_bad_input(cli_here('train', '--data', d, '--out', tmp_path/'r'), 'has train/ but no test/')

def test_data_empty_class(tmp_path, fake_data):
    d = tmp_path/'d'; shutil.copytree(fake_data, d)
    for f in (d/'test'/'cat').iterdir(): f.unlink()
    assert_bad_input(cli_here('train', '--data', d, '--out', tmp_path/'r'), 'holds no images')

def test_data_wrong_size(tmp_path, fake_data):
    from PIL import Image
    d = tmp_path/'d'; shutil.copytree(fake_data, d)
    Image.new('RGB', (40, 30)).save(d/'train'/'dog'/'big.png')
    r = cli_here('train', '--data', d, '--out', tmp_path/'r')
    assert_bad_input(r, 'is 40x30; CIFAR-10 images are 32x32')
    assert 'big.png' in r.stderr and not (tmp_path/'r').exists()

def test_data_unreadable(tmp_path, fake_data):
    d = tmp_path/'d'; shutil.copytree(fake_data, d)
    (d/'test'/'ship'/'broken.png').write_bytes(b'not an image')
    assert_bad_input(cli_here('train', '--data', d, '--out', tmp_path/'r'), 'cannot read image')

def test_bad_image_named_from_home(tmp_path, fake_data, monkeypatch):
    "An unreadable or wrong-size image is named as a person reads it (`~/...`), as every other path in the output"
    from PIL import Image
    monkeypatch.setenv('HOME', str(tmp_path))
    for name, make in [('big.png', lambda f: Image.new('RGB', (40, 30)).save(f)), ('broken.png', lambda f: f.write_bytes(b'x'))]:
        d = tmp_path/name.split('.')[0]; shutil.copytree(fake_data, d); make(d/'train'/'dog'/name)
        r = cli_here('train', '--data', d, '--out', tmp_path/'r')
        assert_bad_input(r, f'image ~/{d.name}/train/dog/{name} ')

def test_data_bad_pickle(tmp_path):
    p = tmp_path/'cifar-10-batches-py'; p.mkdir()
    (p/'data_batch_1').write_bytes(b'garbage')
    assert_bad_input(cli_here('train', '--data', tmp_path, '--out', tmp_path/'r'), 'cannot read')

# The run folder
def test_out_not_empty(tmp_path, fake_data):
    (tmp_path/'r').mkdir(); (tmp_path/'r'/'x').write_text('x')
    assert_bad_input(cli_here('train', '--data', fake_data, '--out', tmp_path/'r'), 'already holds files')

def test_out_is_file(tmp_path, fake_data):
    (tmp_path/'r').write_text('x')
    assert_bad_input(cli_here('train', '--data', fake_data, '--out', tmp_path/'r'), 'is a file')

@pytest.mark.parametrize('cmd', ['train', 'lr-find', 'study'])
def test_out_answered_first(cmd, tmp_path):
    "A bad --out is answered at once: before the data is checked (it does not exist here) and before torch or fastai is imported"
    import subprocess, sys
    (tmp_path/'r').write_text('x')
    code = ("import sys\nfrom fast_resnet.cli import run_command\ntry: run_command(sys.argv[1:])\n"
            "except Exception as e: print(type(e).__name__, 'torch' in sys.modules, 'fastai' in sys.modules, e)")
    r = subprocess.run([sys.executable, '-c', code, cmd, '--data', str(tmp_path/'nope'), '--out', str(tmp_path/'r')],
                       capture_output=True, text=True, timeout=120)
    assert r.stdout.startswith(f"FastResnetError False False --out {tmp_path/'r'} is a file"), r.stdout + r.stderr[-2000:]

def test_out_unwritable(tmp_path, fake_data):
    (tmp_path/'f').write_text('x')  # a folder cannot be made under a file, even by root
    assert_bad_input(cli_here('train', '--data', fake_data, '--out', tmp_path/'f'/'run'), 'cannot be written')

# predict
def test_predict_no_images(tmp_path): assert_bad_input(cli_here('predict', tmp_path), 'give at least one image')

def test_predict_no_model(tmp_path, fake_data):
    img = next((fake_data/'test'/'cat').iterdir())
    assert_bad_input(cli_here('predict', tmp_path/'none', img), 'no model at')

def test_predict_not_a_model(tmp_path, fake_data):
    (tmp_path/'model.pkl').write_bytes(b'nonsense')
    img = next((fake_data/'test'/'cat').iterdir())
    assert_bad_input(cli_here('predict', tmp_path, img), 'is not a model exported by fast_resnet')

# study: its own flags, and every train flag checked the same way, before any run starts
@pytest.mark.parametrize('args,msg', [
    (['--seeds', '0'], '--seeds must be 1 or more'),
    (['--seeds', 'two'], '--seeds must be a number'),
    (['--first-seed', '-1'], '--first-seed must be in'),
    (['--seed', '3'], 'unrecognized arguments: --seed 3'),
    (['--ema', '1.5'], '--ema must be in [0, 1)'),
    (['--epochs', '0'], '--epochs must be positive'),
])
def test_study_bad_settings(args, msg, tmp_path, fake_data):
    assert_bad_input(cli_here('study', '--data', fake_data, '--out', tmp_path/'s', *args), msg)
    assert not (tmp_path/'s').exists()

def test_study_bad_data(tmp_path): assert_bad_input(cli_here('study', '--data', tmp_path/'nope', '--out', tmp_path/'s'), 'does not exist')

def test_study_resume_nothing(tmp_path, fake_data):
    assert_bad_input(cli_here('study', '--data', fake_data, '--resume'), '--resume needs --out')
    (tmp_path/'s').mkdir()
    assert_bad_input(cli_here('study', '--data', fake_data, '--out', tmp_path/'s', '--resume'), 'holds no study to resume')

def test_study_out_not_empty(tmp_path, fake_data):
    (tmp_path/'s').mkdir(); (tmp_path/'s'/'x').write_text('x')
    assert_bad_input(cli_here('study', '--data', fake_data, '--out', tmp_path/'s'), 'already holds files')

def test_study_help():
    r = cli('study', '--help')
    assert r.returncode == 0 and '--seeds' in r.stdout and '--first-seed' in r.stdout and '--ema' in r.stdout and '--seed ' not in r.stdout
