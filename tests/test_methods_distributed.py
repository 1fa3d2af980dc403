"""Every registered method under the pipeline and DDP: the pipeline accepts each layer-local method and refuses each
non-local one with one clear error; the methods whose forward and loss differ most from plain dtg train through
train_ff.py on two gloo CPU processes, both data parallel (DDP) and as a two-stage pipeline, and save one model
that plain timm loads."""
import json

import pytest
import timm
import torch

from timm_ff import ConfigError, create_objective, get_method
from timm_ff.methods import list_methods
from timm_ff.pipeline import check_pipeline

from _cli import accelerate_launch, assert_ok, run_train, weights

# a pipeline run that every setting but the objective allows: 2 stages on 2 processes, 4 units, the tensor data path
PIPELINE_OK = dict(stages=2, num_processes=2, num_units=4, grad_accum_steps=1, mixed_precision='no',
                   data_pipeline='tensor')


def objective_of(name: str):
    """The objective train_ff.py --method NAME builds: the method's objective with the method's objective kwargs."""
    method = get_method(name)
    return create_objective(method.objective, **method.objective_kwargs)


@pytest.mark.parametrize('name', list_methods())
def test_pipeline_takes_every_local_method_and_refuses_the_others_in_one_line(name):
    method, objective = get_method(name), objective_of(name)
    assert objective.local == method.local, f'{name}: the registry and its objective disagree on locality'
    if method.local:
        check_pipeline(objective=objective, **PIPELINE_OK)  # a layer-local method must pipeline
        return
    with pytest.raises(ConfigError) as err:
        check_pipeline(objective=objective, **PIPELINE_OK)
    message = str(err.value)
    assert '\n' not in message and message.startswith('--pipeline-stages: ')
    assert f'objective {method.objective!r}' in message and 'drop --pipeline-stages' in message
    if objective.nonlocal_setting:  # a local objective made non-local by one setting names that setting
        assert objective.nonlocal_setting in message, message
    else:
        assert 'backpropagates end to end' in message, message


def test_the_non_local_methods_are_the_known_ones():
    """A new non-local method is a deliberate change: it cannot pipeline (the test above says how it is refused)."""
    assert sorted(n for n in list_methods() if not get_method(n).local) == ['bp', 'bp_deepsup', 'trifecta_olu']


# ------------------------------------------------------------------------------------- real runs
TINY = [8, 8, 16, 16]
# the methods whose forward / loss path differs most from plain dtg, each on a small model it accepts
RUNS = {
    'scff': ('dtgff_cnn_s', dict(channels=TINY)),  # pairs of images, no label in the units
    'predsim': ('dtgff_cnn_s', dict(channels=[8, 16, 32, 64])),  # the similarity conv beside the prediction head
    'infopro': ('dtgff_cnn_s', dict(channels=TINY)),  # reconstruction decoders inside the unit's forward
    'cwcomp': ('dtgff_cnn_s', dict(channels=[10, 20, 30, 40])),  # K channel groups: a multiple of 10 per unit
    'ff': ('ff_cnn_s', dict(channels=TINY)),  # classic FF: the label in the input, negatives, every label at eval
}
MODES = {
    'ddp': [],
    'pipeline': ['--pipeline-stages', '2', '--local-backward', 'per_unit'],
}


# every method in both modes but cwcomp under DDP (~10 s a run on 2 cores, nearly all of it process start-up): its
# DDP step is dtg's (one dense loss per unit, every parameter used); its channel groups are trained in the pipeline
CASES = [(name, mode) for name in RUNS for mode in MODES if (name, mode) != ('cwcomp', 'ddp')]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize('name,mode', CASES, ids=[f'{n}-{m}' for n, m in CASES])
def test_method_trains_on_two_processes(name, mode, tmp_path):
    model_name, model_kwargs = RUNS[name]
    out = tmp_path / 'run'
    proc = run_train('--method', name, '--model', model_name, '--model-kwargs', json.dumps(model_kwargs),
                     '--epochs', '1', '--max-train-steps', '2', '--data-pipeline', 'tensor', *MODES[mode],
                     '--output', out, launcher=accelerate_launch(2), ACCELERATE_USE_CPU='1')
    assert_ok(proc)
    assert 'processes: 2 (DistributedType.MULTI_CPU)' in proc.stdout, proc.stdout[-2000:]
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['method'] == name and metrics['local'] is True and metrics['global_step'] == 2
    assert 0 <= metrics['accuracy'] <= 100 and len(metrics['unit_accuracy']) == 4
    if mode == 'pipeline':
        assert 'pipeline: stage 0 units 0-' in proc.stdout and metrics['pipeline']['stages'] == 2
    else:
        assert 'pipeline' not in metrics and metrics['num_processes'] == 2
    # one model from both processes (both stages), without training-only parts, that plain timm loads exactly
    saved = weights(out)
    assert not any('decoder' in k for k in saved)
    model = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    assert model.state_dict().keys() == saved.keys()
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()

