"""Images that cannot be read, however they are broken, are one line naming the file (`FastResnetError`; on the
command line `error: ...` and exit code 2), both given to `predict` and inside a data folder given to `train` with
either loader. A PNG cut short keeps its header whole: only decoding it finds the missing pixels."""
import shutil
import pytest
from conftest import cli, cli_here, assert_bad_input

# a short run on the tiny fake data: no LR range test (both LRs given), two epochs
QUICK = ['--epochs', 2, '--peak-epoch', 1, '--bs', 8, '--width', 8, '--lr-min', 0.004, '--lr-max', 0.1]

def broken(png:bytes) -> dict:
    "File name -> bytes of each way an image can be unreadable"
    return {'cut300.png': png[:300], 'cut1200.png': png[:1200], 'empty.png': b'', 'text.png': b'not an image'}

@pytest.fixture(scope='module')
def model(tmp_path_factory, fake_data):
    "A run folder with a model trained on the fake data"
    out = tmp_path_factory.mktemp('model') / 'run'
    r = cli_here('train', '--data', fake_data, '--out', out, *QUICK)
    assert r.returncode == 0, r.stderr[-3000:]
    return out

def _files(tmp_path, fake_data):
    png = next((fake_data/'test'/'cat').iterdir()).read_bytes()
    assert len(png) > 1200  # so that both cuts lose pixels
    fs = {**broken(png), 'notes.txt': b'a note, not an image', 'png.jpg': png}
    for name, b in fs.items(): (tmp_path/name).write_bytes(b)
    return tmp_path

@pytest.mark.parametrize('name', ['cut300.png', 'cut1200.png', 'empty.png', 'text.png', 'notes.txt'])
def test_predict_cli(name, model, fake_data, tmp_path):
    d = _files(tmp_path, fake_data)
    assert_bad_input(cli_here('predict', model, d/'png.jpg', d/name), f'cannot read image {d/name} (')

def test_predict_command(model, fake_data, tmp_path):
    "The same from the real command, in a process of its own"
    d = _files(tmp_path, fake_data)
    assert_bad_input(cli('predict', model, d/'png.jpg', d/'cut1200.png'), f"cannot read image {d/'cut1200.png'} (")

def test_predict_api(model, fake_data, tmp_path):
    import fast_resnet
    d, learn = _files(tmp_path, fake_data), fast_resnet.load(model)
    for name in ('cut300.png', 'cut1200.png', 'empty.png', 'text.png', 'notes.txt'):
        with pytest.raises(fast_resnet.FastResnetError, match=f'cannot read image .*{name} '): fast_resnet.predict(learn, [d/'png.jpg', d/name])
    (cls, conf), = fast_resnet.predict(learn, [d/'png.jpg'])  # a PNG named .jpg is read by its content
    assert cls in learn.dls.vocab and 0 < conf <= 1

def test_predict_png_named_jpg(model, fake_data, tmp_path):
    d = _files(tmp_path, fake_data)
    r = cli_here('predict', model, d/'png.jpg')
    assert r.returncode == 0 and r.stdout.startswith(f'{d/"png.jpg"}\t'), r.stderr[-2000:]

@pytest.mark.parametrize('loader', ['fast', 'datablock'])
@pytest.mark.parametrize('name', ['cut300.png', 'cut1200.png', 'empty.png', 'text.png'])
def test_train_data_folder(name, loader, fake_data, tmp_path):
    "Found before training starts and before the run folder is made: by decoding up front (datablock) or when the fast loader decodes"
    d = tmp_path/'data'; shutil.copytree(fake_data, d)
    bad = d/'train'/'dog'/name
    bad.write_bytes(broken(next((d/'test'/'cat').iterdir()).read_bytes())[name])
    # the fast loader's decoding processes (forked) in a real command; the other cases in this process
    run, workers = (cli, ['--workers', 2]) if loader == 'fast' and name == 'cut1200.png' else (cli_here, [])
    r = run('train', '--data', d, '--out', tmp_path/'run', '--loader', loader, *QUICK, *workers)
    assert_bad_input(r, f'cannot read image {bad} (')
    assert not (tmp_path/'run').exists()
