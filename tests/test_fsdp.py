"""FSDP through train_ff.py and LocalTrainer on 2 CPU processes (gloo), and the launches that cannot run it.

Accelerate's FSDP plugin needs GPUs; ``--fsdp`` runs the same trainer path on CPU: every unit is its own
FSDP2 ``fully_shard`` group (timm_ff/fsdp.py), checkpoints hold each process's shards.
"""
import json
import subprocess
import sys

import pytest
import timm
import torch

import timm_ff  # noqa: F401  (registers the models)
from _cli import REPO, accelerate_launch, assert_ok, env, max_abs_diff, run_train, same_weights, weights

pytestmark = pytest.mark.slow

# as in test_distributed: per-process batch statistics (BatchNorm, dynamic temperature) differ from one process's
# statistics on the whole batch, so the runs that must match one process switch them off
EXACT_KWARGS = '{"norm": "none", "temperature": "fixed", "goodness": "channel"}'


def _common(objective, mode):
    # timm's sgd keeps a momentum buffer per parameter: optimizer state that FSDP must shard too
    return ('--model', 'dtgff_cnn_s', '--model-kwargs', EXACT_KWARGS, '--objective', objective, '--local-backward', mode,
            '--epochs', '1', '--sched', 'none', '--opt', 'sgd', '--lr', '0.05', '--weight-decay', '0')


def _fsdp(*args, **env):
    return run_train(*args, '--batch-size', '16', '--fsdp', launcher=accelerate_launch(2), ACCELERATE_USE_CPU='1', **env)


def _metrics(run):
    return json.loads((run / 'metrics.json').read_text())


@pytest.mark.timeout(900)
@pytest.mark.parametrize('objective,mode', [('dtg', 'per_unit'), ('bp_deepsup', 'summed')])
def test_fsdp_two_processes_match_one_process_hold_half_the_state_and_resume(tmp_path, objective, mode):
    common = _common(objective, mode)
    one = run_train(*common, '--max-train-steps', '4', '--output', tmp_path / 'one', '--batch-size', '32')
    assert_ok(one)
    two = _fsdp(*common, '--max-train-steps', '4', '--output', tmp_path / 'two')
    assert_ok(two)
    assert 'processes: 2 (DistributedType.MULTI_CPU)' in two.stdout
    assert 'fsdp: 4 units and the fusion sharded over 2 processes' in two.stdout
    # without the reduce-scatter each process would follow its own half-batch (differences of ~5e-3)
    if mode == 'per_unit':
        assert max_abs_diff(weights(tmp_path / 'one'), weights(tmp_path / 'two')) < 1e-5
    else:  # end-to-end BP carries float-order noise down to the stem (1.2e-5 here): FSDP must equal DDP instead
        ddp = run_train(*common, '--max-train-steps', '4', '--output', tmp_path / 'ddp', '--batch-size', '16',
                        launcher=accelerate_launch(2), ACCELERATE_USE_CPU='1')
        assert_ok(ddp)
        assert max_abs_diff(weights(tmp_path / 'ddp'), weights(tmp_path / 'two')) < 1e-6
        assert max_abs_diff(weights(tmp_path / 'one'), weights(tmp_path / 'two')) < 1e-4

    # each process holds its shards only: about half of what one process (= one DDP process) holds
    ref, got = _metrics(tmp_path / 'one'), _metrics(tmp_path / 'two')
    ddp_rank = ref['param_bytes_per_process'][0] + ref['optimizer_bytes_per_process'][0]
    assert ref['optimizer_bytes_per_process'][0] >= ref['param_bytes_per_process'][0] > 0  # momentum was kept
    per_rank = [p + o for p, o in zip(got['param_bytes_per_process'], got['optimizer_bytes_per_process'])]
    assert len(per_rank) == 2 and all(b <= 0.55 * ddp_rank for b in per_rank), (per_rank, ddp_rank)

    # the assembled timm checkpoint loads with plain timm and holds the trained weights
    model = timm.create_model(f'local-dir:{tmp_path / "two"}', pretrained=True)
    assert same_weights({k: v.detach() for k, v in model.state_dict().items()}, weights(tmp_path / 'two'))
    if mode == 'summed':
        return
    # killed after step 2 (a sharded checkpoint), resumed to step 4: the uninterrupted run's weights
    cut = tmp_path / 'cut'
    assert_ok(_fsdp(*common, '--max-train-steps', '2', '--checkpoint-steps', '2', '--output', cut))
    assert sorted(p.name for p in (cut / 'checkpoints' / 'step_00000002' / 'fsdp').glob('*.distcp')) == \
        ['__0_0.distcp', '__1_0.distcp']
    assert not same_weights(weights(cut), weights(tmp_path / 'two'))
    resumed = _fsdp(*common, '--max-train-steps', '4', '--output', cut, '--resume', cut)
    assert_ok(resumed)
    assert 'resumed from' in resumed.stdout
    assert max_abs_diff(weights(cut), weights(tmp_path / 'two')) < 1e-7

    # a run without FSDP cannot take the shards: one line saying how to resume
    single = run_train(*common, '--max-train-steps', '6', '--batch-size', '32', '--output', cut, '--resume', cut)
    assert single.returncode == 2
    assert single.stderr.count('error: ') == 1 and 'written by an FSDP run' in single.stderr
    assert 'Traceback' not in single.stderr


@pytest.mark.timeout(300)
def test_fsdp_processes_use_process_0s_buffers_through_the_trainer():
    """Buffers are not sharded: every process scores and saves with process 0's (a control run without the broadcast
    must drift, else the check could not fail)."""
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           str(REPO / 'tests' / 'fsdp_buffers_worker.py')]
    proc = subprocess.run(cmd, cwd=REPO, env=env(ACCELERATE_USE_CPU='1'), capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert 'FSDP buffers OK' in proc.stdout


@pytest.mark.timeout(600)
def test_fsdp_trains_in_bf16(tmp_path):
    out = tmp_path / 'run'
    proc = _fsdp('--model', 'dtgff_cnn_s', '--objective', 'dtg', '--epochs', '1', '--max-train-steps', '2',
                 '--mixed-precision', 'bf16', '--output', out)
    assert_ok(proc)
    assert 'fsdp: 4 units' in proc.stdout
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights(out).values() if v.is_floating_point())


def _launch(*extra_launch, **env):
    launcher = [sys.executable, '-m', 'accelerate.commands.launch', *extra_launch, '--num_processes', '2',
                '--num_machines', '1', '--mixed_precision', 'no', '--dynamo_backend', 'no', '--main_process_port', '0']
    return run_train('--model', 'dtgff_cnn_s', '--epochs', '1', '--max-train-steps', '1', launcher=launcher, **env)


@pytest.mark.timeout(300)
def test_fsdp_launch_without_a_process_group_is_one_line(tmp_path):
    # on a machine without GPUs accelerate starts two processes that each run alone (DistributedType.NO)
    proc = _launch('--use_fsdp', '--fsdp_version', '2')
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
    assert len(ours) == 1, proc.stderr[-3000:]
    assert 'one of 2 launched processes' in ours[0] and 'ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu' in ours[0]
    assert 'Parent directory' not in proc.stderr and 'epoch 0' not in proc.stdout


@pytest.mark.timeout(300)
def test_fsdp_asked_for_while_accelerate_runs_ddp_is_one_line(tmp_path):
    proc = _launch('--use_fsdp', '--fsdp_version', '2', ACCELERATE_USE_CPU='1')
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
    assert len(ours) == 1, proc.stderr[-3000:]
    assert 'FSDP was asked for' in ours[0] and 'MULTI_CPU' in ours[0] and 'train_ff.py --fsdp' in ours[0]
    assert 'epoch 0' not in proc.stdout


def test_fsdp_with_the_pipeline_is_one_line(tmp_path):
    proc = run_train('--fsdp', '--pipeline-stages', '2', '--epochs', '1', '--output', tmp_path / 'run')
    assert proc.returncode == 2
    ours = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
    assert len(ours) == 1 and '--pipeline-stages' in ours[0] and 'FSDP' in ours[0]
    assert 'Traceback' not in proc.stderr
