"""A user's own local rule, registered from outside the package and trained with train_ff.py --import.

The module below is the example of docs/objectives.md: a goodness mode (``register_goodness``) and a local objective
(``register_objective``) defined in a file of the user's, next to which train_ff.py is run.
"""
import json
import subprocess
import sys

import pytest

from _cli import QUICK, TRAIN, assert_ok, env

pytestmark = pytest.mark.slow

USER_MODULE = '''
"""My local rules: per-channel peak goodness and a margin cross-entropy per unit."""
import torch.nn.functional as F

import timm_ff
from timm_ff.objectives import Objective

CALLS = {'loss': 0}


@timm_ff.register_goodness('peak', num_values=lambda in_chs, groups, patches: in_chs)
def peak_goodness(h, groups, patches, reduce):
    """The largest squared activation of each channel."""
    return h.float().square().flatten(2).amax(2)


@timm_ff.register_objective('margin_ce')
class MarginCE(Objective):
    """Each unit: cross-entropy after subtracting ``margin`` from the true class's logit (local)."""
    local = True
    label_embed = False

    def __init__(self, margin: float = 0.5):
        self.margin = margin

    def unit_loss(self, u, num_units, out, targets):
        CALLS['loss'] += 1
        z = out.float() - self.margin * F.one_hot(targets, out.shape[1])
        return F.cross_entropy(z, targets)
'''


def _py(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', code], cwd=cwd, env=env(), capture_output=True, text=True, timeout=300)


@pytest.mark.timeout(600)
def test_a_user_objective_and_goodness_train_and_load_back(tmp_path):
    (tmp_path / 'my_rules.py').write_text(USER_MODULE)
    out = tmp_path / 'run'
    cmd = [sys.executable, TRAIN, *QUICK, '--import', 'my_rules', '--model', 'dtgff_cnn_s',
           '--model-kwargs', '{"goodness": "peak"}', '--objective', 'margin_ce', '--objective-kwargs', '{"margin": 0.3}',
           '--epochs', '1', '--max-train-steps', '4', '--fusion-check-images', '0', '--output', str(out)]
    assert_ok(subprocess.run(cmd, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=600))
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['objective'] == 'margin_ce' and metrics['global_step'] == 4
    cfg = json.loads((out / 'config.json').read_text())
    assert cfg['model_args']['goodness'] == 'peak'
    assert cfg['timm_ff']['recipe']['imports'] == ['my_rules']  # a resumed run imports it again
    # the head reads one peak energy per channel (dtgff_cnn_s units: 32, 64, 128, 256 channels)
    probe = f'''
import timm, torch, timm_ff, timm_ff.task, my_rules
m = timm.create_model("local-dir:{out}", pretrained=True).eval()
assert [u.head.num_goodness for u in m.units] == [32, 64, 128, 256]
x = torch.randn(2, 3, 32, 32)
obj = timm_ff.create_objective("margin_ce", margin=0.3)
task = timm_ff.task.LocalTask(m.local_units(), obj, 10, fusion=m.fusion)
task.step(x, torch.tensor([1, 2]), lambda loss: loss.backward())
assert my_rules.CALLS["loss"] == 4, my_rules.CALLS
print(tuple(m(x).shape))
'''
    proc = _py(probe, tmp_path)
    assert_ok(proc)
    assert proc.stdout.strip() == '(2, 10)'
    # without the user's module the goodness mode is unknown: one clear error naming it
    proc = _py(f'import timm, timm_ff; timm.create_model("local-dir:{out}", pretrained=True)', tmp_path)
    assert proc.returncode != 0 and "unknown value for goodness 'peak'" in proc.stderr


@pytest.mark.timeout(120)
def test_an_import_that_fails_is_one_clear_line(tmp_path):
    proc = subprocess.run([sys.executable, TRAIN, *QUICK, '--import', 'no_such_rules', '--output', str(tmp_path / 'r')],
                          cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --import 'no_such_rules': cannot import it")
    assert 'Traceback' not in proc.stderr
