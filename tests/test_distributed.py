"""Distributed training on CPU: DDP through accelerate launch (FSDP: test_fsdp.py)."""
import subprocess
import sys

import pytest

from _cli import REPO, accelerate_launch, assert_ok, env, max_abs_diff, run_train, weights

pytestmark = pytest.mark.slow

# SGD, not Adam: Adam's normalised first steps amplify float-summation-order noise. BatchNorm and
# the dynamic temperature use per-process batch statistics (as BN does under DDP
# without SyncBN), so the exact-equivalence runs switch them off; one energy per channel keeps the heads
# small, so SGD does not amplify float-summation-order noise past the tolerance below.
EXACT_KWARGS = '{"norm": "none", "temperature": "fixed", "goodness": "channel"}'


@pytest.mark.timeout(600)
@pytest.mark.parametrize('objective,mode', [('dtg', 'per_unit'), ('bp_deepsup', 'summed')])
def test_two_process_ddp_matches_one_process_on_the_same_global_batch(tmp_path, objective, mode):
    common = ('--model', 'dtgff_cnn_s', '--model-kwargs', EXACT_KWARGS, '--objective', objective,
              '--local-backward', mode, '--epochs', '1', '--max-train-steps', '4', '--sched', 'none', '--opt', 'sgd', '--lr', '0.05',
              '--weight-decay', '0')
    one = run_train(*common, '--output', tmp_path / 'one', '--batch-size', '32')
    assert_ok(one)
    two = run_train(*common, '--output', tmp_path / 'two', '--batch-size', '16',
                    launcher=accelerate_launch(2), ACCELERATE_USE_CPU='1')
    assert_ok(two)
    assert 'processes: 2 (DistributedType.MULTI_CPU)' in two.stdout
    # without gradient sync each process would follow its own half-batch and the weights would differ
    assert max_abs_diff(weights(tmp_path / 'one'), weights(tmp_path / 'two')) < 1e-4  # float-order noise; unsynced runs differ by ~5e-3


@pytest.mark.timeout(300)
def test_sync_bn_worker_running_stats_agree_across_ranks(tmp_path):
    """SyncBatchNorm equals BatchNorm on the global batch; with it BN running stats agree across the two
    ranks, without it they differ; t_history is rank 0's at every DDP forward and local afterwards."""
    worker = REPO / 'tests' / 'syncbn_worker.py'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', str(worker)]
    proc = subprocess.run(cmd, cwd=REPO, env=env(ACCELERATE_USE_CPU='1'), capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert 'SyncBN worker OK' in proc.stdout, proc.stdout[-3000:]


@pytest.mark.timeout(600)
def test_train_ff_sync_bn_on_two_processes(tmp_path):
    out = tmp_path / 'run'
    proc = run_train('--model', 'dtgff_cnn_s', '--sync-bn', '--epochs', '1', '--max-train-steps', '2', '--output', out,
                     launcher=accelerate_launch(2), ACCELERATE_USE_CPU='1')
    assert_ok(proc)
    assert 'sync-bn: 4 BatchNorm layers synchronised across 2 processes' in proc.stdout
    assert 'running_mean' in ' '.join(weights(out))  # saved as plain BatchNorm: loads with timm.create_model
