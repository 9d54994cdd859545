"""What a training step costs the host: reads from the device counted on `train`'s own loop (none inside a step, at most
0.05 per step between steps), a counter that catches an added `.item()`, and the checkpoint written while training goes on."""
import pytest, torch
from fastai.vision.all import Callback

@pytest.fixture(scope='module', autouse=True)
def one_thread():
    "One thread: at width 1 a second one only waits for the first (and on a busy machine, for much longer)"
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

@pytest.fixture(scope='module')
def dls(tmp_path_factory):
    from fast_resnet.data import make_fake_cifar, read_cifar
    from fast_resnet.fast_data import fast_dls
    tmp = tmp_path_factory.mktemp('host')
    data = read_cifar(make_fake_cifar(tmp/'fake', n_train=103, n_test=2))  # 1,030 images: 128 steps of 8 an epoch
    return fast_dls(data, bs=8, device='cpu', seed=0, cache_dir=tmp/'cache')

def count_reads(dls, path, ema=0., extra=()):
    "`(reads per step, reads inside the step)` of 2 epochs of `train`'s loop (its learner and callbacks) at width 1"
    from fast_resnet.core import train_settings
    from fast_resnet.host import train_loop, DeviceReads, ReadPhases
    from fast_resnet.lr import one_cycle_kwargs
    s = train_settings(width=1, bs=8, epochs=2, peak_epoch=1, lr_min=0.004, lr_max=0.1, ema=ema, device='cpu', seed=0)
    path.mkdir()
    learn, cbs, _ = train_loop(dls, s, path)
    reads = DeviceReads('cpu')
    with reads: learn.fit_one_cycle(2, cbs=cbs + list(extra) + [ph := ReadPhases(reads)], **one_cycle_kwargs(0.004, 0.1, 2, 1))
    assert ph.steps == 2 * len(dls.train) == 256
    return (reads.counts['step'] + reads.counts['between steps']) / ph.steps, reads.counts['step'] / ph.steps, reads

@pytest.mark.parametrize('ema', [0., 0.99])
def test_reads_per_step(dls, tmp_path, ema):
    per_step, in_step, reads = count_reads(dls, tmp_path/'run', ema)
    assert in_step == 0, reads.where  # nothing inside a step waits for the device
    assert 0 < per_step <= 0.05, reads.where  # the divergence check, every 64 steps

class ItemAfterBatch(Callback):
    "A per-batch callback that reads the loss from the device, as fastai's stock progress bar does"
    def after_batch(self):
        if self.training: self.learn.loss.item()

class ItemBeforeStep(Callback):
    def before_step(self): float(self.learn.loss)

def test_counter_sees_an_item(dls, tmp_path):
    per_step, in_step, _ = count_reads(dls, tmp_path/'a', extra=[ItemAfterBatch()])
    assert per_step >= 1 and in_step == 0
    per_step, in_step, _ = count_reads(dls, tmp_path/'b', extra=[ItemBeforeStep()])
    assert in_step >= 1

def test_checkpoint_waits_little(dls, tmp_path):
    "Training waits for the host copy of the state, not for the disk: the write is in a thread, finished before the fit ends"
    import os, time
    from fast_resnet.checkpoint import Checkpoint, CHECKPOINT, SLOW_WRITE
    from fast_resnet.learner import cifar_learner
    learn = cifar_learner(dls, c=8, path=tmp_path)
    ck = Checkpoint(tmp_path)
    os.environ[SLOW_WRITE] = '1'  # each write takes a second longer before its rename
    try:
        t = time.perf_counter()
        learn.fit(2, 1e-3, cbs=ck)
        fit = time.perf_counter() - t
    finally: del os.environ[SLOW_WRITE]
    assert max(ck.blocking[:1]) < 0.5, ck.blocking  # the first epoch's end did not wait for its write
    assert fit >= 2  # the last write finished (slowly) before the fit returned
    assert torch.load(tmp_path/CHECKPOINT, weights_only=False)['epoch'] == 2 and ck.saved == 2
    assert not (tmp_path/(CHECKPOINT + '.tmp')).exists()
