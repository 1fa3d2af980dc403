"""timm_ff.hub: publish runs as timm models, load them back through a real local Hub, integrity checks.

The Hub side is olah (a Hub mirror serving git repos) behind a small write server
(``tests/_hub_server.py``); nothing touches the internet. The test process itself stays offline
(``HF_HUB_OFFLINE=1`` from conftest), so everything that talks to the local Hub runs in a
subprocess with its own ``HF_ENDPOINT`` / ``HF_HOME``. olah comes from ``$OLAH_CLI``, PATH, or is
installed from PyPI into ``.venv-olah`` on first use.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file, save_file

import timm_ff
from timm_ff import CheckpointError, HubError, hub
from timm_ff.data import SAMPLE_DIR

from _cli import REPO, assert_ok, run_train
from _hub_server import LocalHub, client_env, find_olah_cli, free_port

ORG = 'testorg'
LOOP_REPO = f'{ORG}/loop'
TAG = 'dtgff_cnn_s.cifar10'
TAG_REPO = f'{ORG}/{TAG}'
RUN_FILES = ('config.json', 'model.safetensors', 'metrics.json', 'run_info.json', 'recipe.yaml')
OFFLINE_HINTS = ('local-dir:PATH', 'pretrained_cfg_overlay=dict(file=')
pytestmark = pytest.mark.xdist_group('hub')  # one pytest-xdist worker: the session's Hub, trained run and olah venv


# --------------------------------------------------------------------------------------- helpers
def copy_run(src: Path, dst: Path) -> Path:
    """A copy of a run folder's publishable files (no checkpoints or logs)."""
    dst.mkdir(parents=True)
    for name in RUN_FILES:
        shutil.copyfile(src / name, dst / name)
    return dst


def reference_model(folder: Path) -> torch.nn.Module:
    """The folder's model rebuilt from config.json and its raw safetensors, without timm_ff.hub."""
    cfg = json.loads((folder / 'config.json').read_text())
    model = timm.create_model(cfg['architecture'], **cfg['model_args'])
    model.load_state_dict(load_file(str(folder / 'model.safetensors')), strict=True)
    return model.eval()


def logits_of(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def run_py(code: str, *args, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', code, *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def front_matter(card: str) -> dict:
    assert card.startswith('---\n')
    return yaml.safe_load(card.split('---\n')[1])


# -------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope='session')
def trained_run(tmp_path_factory) -> Path:
    """A tiny real train_ff.py run (2 steps on the bundled CIFAR-10 sample)."""
    out = tmp_path_factory.mktemp('runs') / 'cnn-run'
    assert_ok(run_train('--model', 'dtgff_cnn_s', '--epochs', '1', '--max-train-steps', '2', '--output', out))
    return out


@pytest.fixture(scope='session')
def fixed_input(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp('input') / 'x.pt'
    torch.save(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(123)), path)
    return path


@pytest.fixture(scope='session')
def dev_run(trained_run, tmp_path_factory) -> Path:
    """The trained run with other weights (a head scaled), for the ``dev`` branch."""
    run = copy_run(trained_run, tmp_path_factory.mktemp('dev') / 'dev-run')
    state = load_file(str(run / 'model.safetensors'))
    for k in state:
        if k.endswith('head.proj.weight'):
            state[k] = state[k] * 1.5
    save_file(state, str(run / 'model.safetensors'))
    return run


@pytest.fixture(scope='session')
def local_hub(tmp_path_factory):
    cli = find_olah_cli()
    if cli is None:  # only when $OLAH_CLI names a missing file; otherwise olah is installed from PyPI
        pytest.fail(f"OLAH_CLI={os.environ.get('OLAH_CLI')!r} does not exist; unset it to install olah")
    hub_ = LocalHub(tmp_path_factory.mktemp('local_hub'), cli).start()
    yield hub_
    hub_.stop()


@pytest.fixture(scope='session')
def published(local_hub, trained_run, dev_run, tmp_path_factory):
    """Push through the CLI and publish_run, in a subprocess that talks to the local Hub."""
    code = (
        'import sys\n'
        'from timm_ff.hub import main, publish_run\n'
        'run, dev_run = sys.argv[1:3]\n'
        f"assert main(['push', run, '{LOOP_REPO}', '--private']) == 0\n"
        f"assert main(['push', dev_run, '{LOOP_REPO}', '--revision', 'dev']) == 0\n"
        f"print(publish_run(run, '{TAG_REPO}'))\n"
    )
    env = local_hub.env(tmp_path_factory.mktemp('hf_home_push'), TIMM_FF_HUB_ORG=ORG)
    proc = run_py(code, trained_run, dev_run, env=env)
    assert_ok(proc)
    return proc


@pytest.fixture(scope='session')
def pull_home(tmp_path_factory) -> Path:
    """HF_HOME of the process that downloads through the local Hub (its cache is reused offline)."""
    return tmp_path_factory.mktemp('hf_home_pull')


@pytest.fixture(scope='session')
def downloads(local_hub, published, fixed_input, pull_home, tmp_path_factory) -> Path:
    """Everything loaded back through olah, in one subprocess (timm, huggingface_hub, timm_ff.hub)."""
    out = tmp_path_factory.mktemp('downloads')
    code = f'''
import json, sys
from pathlib import Path
import timm, timm_ff, torch
from huggingface_hub import snapshot_download
from timm_ff import HubError, hub
out, x = Path(sys.argv[1]), torch.load(sys.argv[2])
def save(name, model):
    with torch.no_grad():
        torch.save(model.eval()(x), out / f'{{name}}.pt')
    return model
res = {{}}
m = save('hf_hub', timm.create_model('hf-hub:{LOOP_REPO}', pretrained=True))
res['hf_hub_id'] = m.pretrained_cfg.get('hf_hub_id')
save('create_pretrained', hub.create_pretrained('hf-hub:{LOOP_REPO}'))
m = save('tag', timm.create_model('{TAG}', pretrained=True))
res['tag_hub_id'] = m.pretrained_cfg.get('hf_hub_id')
save('dev', timm.create_model('hf-hub:{LOOP_REPO}@dev', pretrained=True))
fresh = timm.create_model('dtgff_cnn_s')
hub.load_initial_checkpoint(fresh, 'hf-hub:{LOOP_REPO}')
torch.save(fresh.state_dict(), out / 'initial.pt')
res['recipe'] = str(hub.fetch_recipe('hf-hub:{LOOP_REPO}'))
res['readme'] = hub.hub_download('{LOOP_REPO}', 'README.md').read_text()
res['snapshot'] = sorted(p.name for p in Path(snapshot_download('{LOOP_REPO}')).iterdir())
try:
    hub.fetch_recipe('hf-hub:{ORG}/no-such-repo')
except HubError as e:
    res['missing_repo'] = str(e)
(out / 'result.json').write_text(json.dumps(res))
'''
    env = local_hub.env(pull_home, TIMM_FF_HUB_ORG=ORG)
    assert_ok(run_py(code, out, fixed_input, env=env))
    return out


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    return copy_run(trained_run, tmp_path / 'run')


# ----------------------------------------------------------------------- dry run and model card
def test_dry_run_folder_holds_exactly_the_timm_files(trained_run, tmp_path):
    folder = hub.publish_run(trained_run, 'someorg/some-model', dry_run=True, out_dir=tmp_path / 'up')
    assert sorted(p.name for p in folder.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    assert (folder / 'model.safetensors').read_bytes() == (trained_run / 'model.safetensors').read_bytes()
    cfg = json.loads((folder / 'config.json').read_text())
    assert cfg['architecture'] == 'dtgff_cnn_s' and cfg['num_classes'] == 10
    assert cfg['model_args']['channels'] == [32, 64, 128, 256] and 'pretrained_cfg' in cfg
    recipe = yaml.safe_load((trained_run / 'recipe.yaml').read_text())
    assert cfg['timm_ff']['recipe'] == recipe and recipe['max_train_steps'] == 2
    # the run's own config names its folder; the upload folder's names no local path
    assert str(trained_run) in (trained_run / 'config.json').read_text()
    text = (folder / 'config.json').read_text()
    assert str(trained_run) not in text and str(REPO) not in text and f'<local>/{trained_run.name}' in text
    # the folder itself loads with plain timm and with the validating loader, to the same weights
    model = hub.load_model_folder(folder)
    assert all(torch.equal(v, load_file(str(trained_run / 'model.safetensors'))[k])
               for k, v in model.state_dict().items())


def test_model_card_states_metrics_command_commit_and_sha256(trained_run, tmp_path):
    folder = hub.publish_run(trained_run, 'someorg/some-model', dry_run=True, out_dir=tmp_path / 'up')
    card = (folder / 'README.md').read_text()
    meta = front_matter(card)
    assert meta['library_name'] == 'timm' and meta['license'] == 'apache-2.0'
    assert set(meta['tags']) >= {'image-classification', 'timm', 'forward-forward', 'timm_ff'}
    assert meta['datasets'] == ['uoft-cs/cifar10']
    assert hub.sha256_file(folder / 'model.safetensors') in card
    metrics = json.loads((trained_run / 'metrics.json').read_text())
    assert f"| Fused top-1 accuracy (%) | {metrics['accuracy']:.2f} |" in card
    for u, acc in enumerate(metrics['unit_accuracy']):
        assert f'| Unit {u} top-1 accuracy (%) | {acc:.2f} |' in card
    run_info = json.loads((trained_run / 'run_info.json').read_text())
    from timm_ff.hub.card import scrub_paths
    assert scrub_paths(run_info['command']) in card and run_info['git_commit'] in card
    recipe_section = card.split('\n### Recipe\n', 1)[1]
    commit = run_info['git_commit'].removesuffix('-dirty')
    assert f'Trained at git commit `{commit}`' in recipe_section and f'git checkout {commit}' in recipe_section
    assert f"```yaml\n# trained at git commit {run_info['git_commit']}\n" in recipe_section
    assert 'No recipe key is known to have changed meaning' in recipe_section  # a run of today's code
    assert str(trained_run) not in card and '/tmp/' not in card  # no local paths in a published card
    assert 'import timm_ff, timm' in card
    assert "timm.create_model('hf-hub:someorg/some-model', pretrained=True)" in card
    assert '`import timm_ff` is required' in card and 'Apache License 2.0' in card
    # says which data were really used: kind, splits, sizes and a content hash of the decoded images
    assert "bundled sample copy of `cifar10`; train split `train` (855 images, blake2b-128:" in card
    assert run_info['data']['eval_content_hash'] in card and 'labels `label` (10 classes)' in card


def test_cli_card_and_dry_run(trained_run, tmp_path, capsys):
    assert hub.main(['card', str(trained_run), '--repo-id', 'someorg/x']) == 0
    printed = capsys.readouterr().out
    assert printed == hub.model_card(trained_run, 'someorg/x')
    assert hub.main(['push', str(trained_run), 'someorg/x', '--dry-run', str(tmp_path / 'dry')]) == 0
    assert 'dry run' in capsys.readouterr().out
    assert (tmp_path / 'dry' / 'README.md').read_text() == printed


@pytest.mark.parametrize('argv,match', [
    (['push', '{missing}', 'someorg/x', '--dry-run', '{tmp}/d'], 'no such run folder'),
    (['push', '{run}', 'not-a-repo-id', '--dry-run', '{tmp}/d'], 'bad Hub repo id'),
    (['push', '{run}', 'someorg/x'], 'HF_HUB_OFFLINE=1'),  # conftest keeps this process offline
    (['card', '{missing}'], 'no config.json'),
    (['release', '--runs', '{tmp}', '--out', '{tmp}/r', '--recipes', '{tmp}/none'], None),
    (['frobnicate'], 'invalid choice'),
    (['push'], 'required'),
])
def test_cli_errors_are_one_line(argv, match, trained_run, tmp_path, capsys):
    argv = [a.format(missing=tmp_path / 'missing', tmp=tmp_path, run=trained_run) for a in argv]
    code = hub.main(argv)
    err = capsys.readouterr().err
    if match is None:  # an empty release is not an error
        assert code == 0 and err == ''
        return
    assert code == 2
    assert err.startswith('error: ') and err.count('\n') == 1 and match in err, err



@pytest.mark.parametrize('repo_id', ['someorg/name-', 'someorg/a--b', 'someorg/model.git', 'someorg/' + 'x' * 97])
def test_repo_ids_huggingface_hub_rejects_are_one_clear_error(repo_id):
    with pytest.raises(HubError, match=rf"^bad Hub repo id '{repo_id}': expected ORG/NAME .*huggingface_hub says: "):
        hub.check_repo_id(repo_id)
    assert hub.check_repo_id('someorg/name-1.x_y') == 'someorg/name-1.x_y'


def test_cli_entry_point_exits_2_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, '-m', 'timm_ff.hub', 'push', str(tmp_path / 'nope'), 'a/b'],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith('error: ') and 'Traceback' not in proc.stderr


# ------------------------------------------------------------------------------------- integrity
def _truncate(run: Path, keep: int) -> None:
    data = (run / 'model.safetensors').read_bytes()
    (run / 'model.safetensors').write_bytes(data[:keep])


def _edit_config(run: Path, **changes) -> None:
    cfg = json.loads((run / 'config.json').read_text())
    for key, value in changes.items():
        if key == 'model_args':
            cfg['model_args'].update(value)
        else:
            cfg[key] = value
    (run / 'config.json').write_text(json.dumps(cfg))


def _corrupt_header(run: Path) -> None:
    data = bytearray((run / 'model.safetensors').read_bytes())
    data[8:40] = b'\xff' * 32
    (run / 'model.safetensors').write_bytes(bytes(data))


def _drop_key(run: Path) -> None:
    state = load_file(str(run / 'model.safetensors'))
    state.pop(sorted(state)[0])
    save_file(state, str(run / 'model.safetensors'))


def _flip_byte_with_card(run: Path) -> None:
    (run / 'README.md').write_text(hub.model_card(run, 'someorg/x'))
    data = bytearray((run / 'model.safetensors').read_bytes())
    data[-10] ^= 0xFF
    (run / 'model.safetensors').write_bytes(bytes(data))


def _pickle_only(run: Path) -> None:
    torch.save(load_file(str(run / 'model.safetensors')), run / 'pytorch_model.bin')
    (run / 'model.safetensors').unlink()


BROKEN = {
    'truncated': (lambda r: _truncate(r, -1000), 'truncated'),
    'truncated_in_header': (lambda r: _truncate(r, 100), 'truncated'),
    'trailing_bytes': (lambda r: (r / 'model.safetensors').open('ab').write(b'\0' * 16), 'trailing bytes'),
    'corrupt_header': (_corrupt_header, 'not valid JSON'),
    'unknown_architecture': (lambda r: _edit_config(r, architecture='resnet18'), 'not a timm_ff model'),
    'weights_of_another_shape': (lambda r: _edit_config(r, model_args={'channels': [16, 32, 64, 128]}),
                                 'of another shape'),
    'missing_key': (_drop_key, 'missing'),
    'bad_model_args': (lambda r: _edit_config(r, model_args={'no_such_kwarg': 1}), 'model_args do not build'),
    'sha256_mismatch': (_flip_byte_with_card, 'sha256'),
    'pickle_only': (_pickle_only, 'pickled weights are not loaded'),
}


@pytest.mark.parametrize('case', sorted(BROKEN))
def test_broken_model_folder_is_a_clear_checkpoint_error(case, run_copy, tmp_path):
    breaker, match = BROKEN[case]
    breaker(run_copy)
    with pytest.raises(CheckpointError, match=match) as info:
        hub.load_model_folder(run_copy)
    if case == 'unknown_architecture':
        assert 'dtgff_cnn_s' in str(info.value) and 'ff_resnet18' in str(info.value)
    # publishing validates the same way and writes nothing
    with pytest.raises(CheckpointError, match=match):
        hub.publish_run(run_copy, 'someorg/x', dry_run=True, out_dir=tmp_path / 'up')
    assert not (tmp_path / 'up').exists()


def test_unfinished_run_is_not_publishable(run_copy, tmp_path):
    (run_copy / 'metrics.json').unlink()
    with pytest.raises(CheckpointError, match='not a finished run'):
        hub.publish_run(run_copy, 'someorg/x', dry_run=True, out_dir=tmp_path / 'up')


def test_load_initial_checkpoint_local(run_copy):
    ref = load_file(str(run_copy / 'model.safetensors'))
    for source in (str(run_copy), str(run_copy / 'model.safetensors'), f'local-dir:{run_copy}'):
        model = timm.create_model('dtgff_cnn_s')
        hub.load_initial_checkpoint(model, source)
        assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
    # another class count: only the unit heads keep their fresh init
    model = timm.create_model('dtgff_cnn_s', num_classes=7)
    hub.load_initial_checkpoint(model, str(run_copy))
    for k, v in model.state_dict().items():
        if 'head.proj' in k:
            assert v.shape != ref[k].shape, k
        else:
            assert torch.equal(v, ref[k]), k
    with pytest.raises(CheckpointError, match='does not fit'):
        hub.load_initial_checkpoint(timm.create_model('dtgff_cnn_m'), str(run_copy))
    _truncate(run_copy, -10)
    with pytest.raises(CheckpointError, match='truncated'):
        hub.load_initial_checkpoint(timm.create_model('dtgff_cnn_s'), str(run_copy))
    with pytest.raises(CheckpointError, match='no such file'):
        hub.load_initial_checkpoint(timm.create_model('dtgff_cnn_s'), str(run_copy / 'nope'))


# --------------------------------------------------------------------------------------- offline
@pytest.mark.parametrize('call', ['tag', 'hf_hub', 'fetch_recipe', 'initial_checkpoint', 'hub_download'])
def test_offline_download_fails_at_once_naming_the_alternative(call):
    repo = f'{timm_ff.HUB_ORG}/{TAG}'
    calls = {
        'tag': lambda: hub.create_pretrained(TAG),
        'hf_hub': lambda: hub.create_pretrained(f'hf-hub:{repo}'),
        'fetch_recipe': lambda: hub.fetch_recipe(f'hf-hub:{repo}'),
        'initial_checkpoint': lambda: hub.load_initial_checkpoint(timm.create_model('dtgff_cnn_s'),
                                                                  f'hf-hub:{repo}'),
        'hub_download': lambda: hub.hub_download(repo, 'model.safetensors'),
    }
    start = time.monotonic()
    with pytest.raises(HubError) as info:
        calls[call]()
    assert time.monotonic() - start < 10
    msg = str(info.value)
    assert repo in msg and 'HF_HUB_OFFLINE=1' in msg and all(h in msg for h in OFFLINE_HINTS), msg


UNPUBLISHED_TAG = 'dtgff_resnet18.cifar10'  # a tag with a recipe but no released weights


def assert_one_line_tag_error(msg: str, tag: str, reason: str):
    """The pretrained-tag error: one line naming the tag, why, the released tags and the local way out."""
    assert '\n' not in msg, msg
    assert f"pretrained tag '{tag}'" in msg and reason in msg, msg
    assert 'local-dir:' in msg and "pretrained_cfg_overlay=dict(file=" in msg, msg
    released = [p.name for p in sorted((REPO / 'release').glob('*.*')) if p.is_dir()]
    assert released and all(name in msg for name in released), msg


@pytest.mark.parametrize('load', ['timm', 'create_pretrained'])
@pytest.mark.parametrize('tag', [UNPUBLISHED_TAG, 'dtgff_cnn_s.cifar10'])
def test_offline_pretrained_tag_is_one_hub_error_naming_the_released_tags(load, tag):
    """Plain ``timm.create_model(tag, pretrained=True)`` (this process is offline) says what create_pretrained says."""
    create = {'timm': lambda: timm.create_model(tag, pretrained=True),
              'create_pretrained': lambda: hub.create_pretrained(tag)}[load]
    start = time.monotonic()
    with pytest.raises(RuntimeError) as info:  # what a timm user catches; HubError derives from it
        create()
    assert time.monotonic() - start < 10
    assert isinstance(info.value, HubError), repr(info.value)
    assert_one_line_tag_error(str(info.value), tag, 'HF_HUB_OFFLINE=1 is set and the file is not in the cache')
    assert f'{timm_ff.HUB_ORG}/{tag}' in str(info.value)


def test_released_tags_constant_matches_the_release_folder():
    from timm_ff.models._hub_org import RELEASED_TAGS
    manifest = json.loads((REPO / 'release' / 'release.json').read_text())
    assert sorted(RELEASED_TAGS) == sorted(manifest['released']) == [p.name for p in RELEASES]
    assert all(name in timm.list_pretrained() for name in RELEASED_TAGS)


@pytest.mark.parametrize('name', ['dtgff_cnn_s.cifar10', 'dtgff_cnn_s', 'dtgff_resnet18'])
def test_pretrained_weights_from_a_missing_file_name_the_file(tmp_path, name):
    """Only a failed Hub download becomes the tag HubError; a missing local file stays timm's FileNotFoundError,
    with a message naming the path and what was expected there."""
    missing = str(tmp_path / 'missing.safetensors')
    with pytest.raises(FileNotFoundError) as info:
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=missing))
    assert not isinstance(info.value, HubError), repr(info.value)
    arch = name.split('.')[0]
    assert str(info.value) == (f"pretrained weights file {missing!r} for model {arch!r} does not exist: "
                               "pretrained_cfg_overlay=dict(file=...) expects a .safetensors, .pth or .bin file of "
                               "the model's weights")
    with pytest.raises(FileNotFoundError, match=rf"^pretrained weights file '{tmp_path}' for model '{arch}' is a "
                                                rf"folder: .*use timm.create_model\('local-dir:{tmp_path}', "):
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path)))


def test_unreachable_hub_fails_at_once(trained_run, tmp_path):
    """Not offline, but nothing listens at HF_ENDPOINT: no 25-46 s of retries."""
    code = f'''
import json, sys, time
from timm_ff import HubError, hub
res = {{}}
for name, fn in [('tag', lambda: hub.create_pretrained('{TAG}')),
                 ('hf_hub', lambda: hub.create_pretrained('hf-hub:{ORG}/x')),
                 ('fetch_recipe', lambda: hub.fetch_recipe('hf-hub:{ORG}/x')),
                 ('push', lambda: hub.publish_run(sys.argv[1], '{ORG}/x'))]:
    t = time.monotonic()
    try:
        fn()
        res[name] = ['no error', 0.0]
    except HubError as e:
        res[name] = [str(e), time.monotonic() - t]
print(json.dumps(res))
'''
    env = client_env(f'http://127.0.0.1:{free_port()}', tmp_path / 'hf_home')
    proc = run_py(code, trained_run, env=env, timeout=120)
    assert_ok(proc)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (msg, seconds) in res.items():
        assert seconds < 10, (name, seconds)
        assert 'cannot be reached' in msg, (name, msg)
        if name != 'push':
            assert all(h in msg for h in OFFLINE_HINTS), msg


def test_dropped_connection_is_a_hub_error(trained_run, tmp_path):
    """The Hub accepts the connection, then drops it: every call ends in a HubError, not a client traceback."""
    code = f'''
import json, os, socket, sys, threading
server = socket.create_server(('127.0.0.1', 0))

def drop():
    while True:
        conn, _ = server.accept()
        conn.recv(100)
        conn.close()

threading.Thread(target=drop, daemon=True).start()
os.environ['HF_ENDPOINT'] = 'http://127.0.0.1:%d' % server.getsockname()[1]
from timm_ff import HubError, hub
res = {{}}
for name, fn in [('push', lambda: hub.publish_run(sys.argv[1], '{ORG}/x', token='hf_test')),
                 ('hf_hub', lambda: hub.create_pretrained('hf-hub:{ORG}/x')),
                 ('download', lambda: hub.hub_download('{ORG}/x', 'config.json'))]:
    try:
        fn()
        res[name] = 'no error'
    except HubError as e:
        res[name] = str(e)
print(json.dumps(res))
'''
    env = client_env('http://127.0.0.1:1', tmp_path / 'hf_home', HF_HUB_ETAG_TIMEOUT='5', HF_HUB_DOWNLOAD_TIMEOUT='5')
    proc = run_py(code, trained_run, env=env, timeout=240)
    assert_ok(proc)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(res) == {'push', 'hf_hub', 'download'}
    for name, msg in res.items():
        assert f'{ORG}/x' in msg, (name, msg)


# ----------------------------------------------------------------------------- through the Hub
def test_train_publish_download_gives_identical_outputs(trained_run, fixed_input, downloads, local_hub):
    """The closed loop: train -> publish_run/CLI push -> olah -> timm.create_model('hf-hub:...')."""
    expected = logits_of(reference_model(trained_run), torch.load(fixed_input))
    assert torch.equal(torch.load(downloads / 'hf_hub.pt'), expected)
    assert torch.equal(torch.load(downloads / 'create_pretrained.pt'), expected)
    res = json.loads((downloads / 'result.json').read_text())
    assert res['hf_hub_id'] == LOOP_REPO
    assert res['snapshot'] == ['.gitattributes', 'README.md', 'config.json', 'model.safetensors']
    assert res['readme'] == hub.model_card(trained_run, LOOP_REPO)
    assert local_hub.store.created[LOOP_REPO].get('visibility') == 'private'  # --private reached create_repo
    assert f'{ORG}/no-such-repo' in res['missing_repo'] and 'not found' in res['missing_repo']
    assert not [line for line in local_hub.log if ' -> 5' in line], local_hub.log


def test_train_ff_push_to_hub(local_hub, tmp_path):
    """train_ff.py --push-to-hub publishes the finished run; the Hub then serves its exact files."""
    repo, out = f'{ORG}/cli-push', tmp_path / 'run'
    hub_env = {k: v for k, v in local_hub.env(tmp_path / 'hf_home').items() if k.startswith('HF_')}
    proc = run_train('--model', 'dtgff_cnn_s', '--epochs', '1', '--max-train-steps', '2', '--data-dir', SAMPLE_DIR,
                     '--output', out, '--push-to-hub', repo, **hub_env)
    assert_ok(proc)
    assert f'pushed to {repo}' in proc.stdout
    code = f'''
from timm_ff import hub
for name in ('model.safetensors', 'config.json', 'README.md'):
    print(hub.hub_download('{repo}', name))
'''
    proc = run_py(code, env=local_hub.env(tmp_path / 'hf_home_pull'))
    assert_ok(proc)
    weights, config, card = (Path(p) for p in proc.stdout.strip().splitlines()[-3:])
    assert weights.read_bytes() == (out / 'model.safetensors').read_bytes()
    pulled, local = json.loads(config.read_text()), json.loads((out / 'config.json').read_text())
    assert {k: v for k, v in pulled.items() if k != 'timm_ff'} == {k: v for k, v in local.items() if k != 'timm_ff'}
    # the recipe block is the run's, with the local paths (data folder, output folder) scrubbed
    assert pulled['timm_ff']['recipe']['data_dir'] == '<local>/' + Path(SAMPLE_DIR).name
    assert str(tmp_path) not in config.read_text() and str(tmp_path) in (out / 'config.json').read_text()
    assert front_matter(card.read_text())['library_name'] == 'timm'


def test_train_ff_failed_push_keeps_the_run(tmp_path):
    """A push that cannot happen ends in one error line saying how to publish later; the run is complete."""
    out = tmp_path / 'run'
    dead = client_env(f'http://127.0.0.1:{free_port()}', tmp_path / 'hf_home')
    proc = run_train('--model', 'dtgff_cnn_s', '--epochs', '1', '--max-train-steps', '2', '--data-dir', SAMPLE_DIR,
                     '--output', out, '--push-to-hub', f'{ORG}/x', '--hub-revision', 'dev',
                     **{k: v for k, v in dead.items() if k.startswith('HF_')})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'cannot be reached' in errors[0], proc.stderr[-3000:]
    assert f'python -m timm_ff.hub push {out} {ORG}/x --revision dev' in errors[0]
    assert (out / 'metrics.json').is_file() and (out / 'model.safetensors').is_file()


def test_pretrained_tag_resolves_through_the_local_hub(trained_run, fixed_input, downloads):
    expected = logits_of(reference_model(trained_run), torch.load(fixed_input))
    assert torch.equal(torch.load(downloads / 'tag.pt'), expected)
    assert json.loads((downloads / 'result.json').read_text())['tag_hub_id'] == TAG_REPO


def test_offline_loads_from_the_cache(trained_run, fixed_input, downloads, pull_home, tmp_path):
    """After one download, HF_HUB_OFFLINE=1 still loads from the cache; what is not cached fails at once."""
    code = f'''
import json, sys, time, torch
from timm_ff import HubError, hub
x = torch.load(sys.argv[1])
res = {{}}
with torch.no_grad():
    res['hf_hub'] = hub.create_pretrained('hf-hub:{LOOP_REPO}').eval()(x).tolist()
    res['tag'] = hub.create_pretrained('{TAG}').eval()(x).tolist()
res['recipe'] = str(hub.fetch_recipe('hf-hub:{LOOP_REPO}'))
t = time.monotonic()
try:
    hub.create_pretrained('hf-hub:{ORG}/never-downloaded')
except HubError as e:
    res['uncached'] = [str(e), time.monotonic() - t]
print(json.dumps(res))
'''
    env = client_env('http://127.0.0.1:9', pull_home, HF_HUB_OFFLINE='1', TIMM_FF_HUB_ORG=ORG)
    proc = run_py(code, fixed_input, env=env, timeout=120)
    assert_ok(proc)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = logits_of(reference_model(trained_run), torch.load(fixed_input))
    assert torch.equal(torch.tensor(res['hf_hub']), expected)
    assert torch.equal(torch.tensor(res['tag']), expected)
    assert Path(res['recipe']).is_file()
    msg, seconds = res['uncached']
    assert seconds < 10 and f'{ORG}/never-downloaded' in msg and all(h in msg for h in OFFLINE_HINTS), msg


def test_revision_goes_to_its_own_branch(trained_run, dev_run, fixed_input, downloads, local_hub):
    x = torch.load(fixed_input)
    dev = torch.load(downloads / 'dev.pt')
    assert torch.equal(dev, logits_of(reference_model(dev_run), x))
    assert not torch.equal(dev, torch.load(downloads / 'hf_hub.pt'))  # main kept the trained weights
    branches = {(repo, branch) for repo, branch, _ in local_hub.commits}
    assert {(LOOP_REPO, 'main'), (LOOP_REPO, 'dev'), (TAG_REPO, 'main')} <= branches


def test_initial_checkpoint_from_the_hub(trained_run, downloads):
    state = torch.load(downloads / 'initial.pt')
    ref = load_file(str(trained_run / 'model.safetensors'))
    assert state.keys() == ref.keys() and all(torch.equal(state[k], ref[k]) for k in ref)


def test_fetch_recipe_round_trip(trained_run, downloads):
    import train_ff
    path = Path(json.loads((downloads / 'result.json').read_text())['recipe'])
    fetched = yaml.safe_load(path.read_text())
    assert fetched == yaml.safe_load((trained_run / 'recipe.yaml').read_text())
    args = train_ff.parse_args(['-c', str(path)])
    assert args.model == 'dtgff_cnn_s' and args.max_train_steps == 2 and args.epochs == 1


def test_fetch_recipe_local_sources(trained_run, tmp_path):
    assert hub.fetch_recipe(str(trained_run)) == trained_run / 'recipe.yaml'
    assert hub.fetch_recipe(str(tmp_path / 'r.yaml')) == tmp_path / 'r.yaml'


# --------------------------------------------------------------------------------------- release
def test_build_release(trained_run, tmp_path, capsys):
    recipes = tmp_path / 'hub_configs'
    recipes.mkdir()
    (recipes / 'dtgff_cnn_s.cifar10.yaml').write_text('model: dtgff_cnn_s\ndataset: cifar10\nepochs: 1\n')
    (recipes / 'dtgff_cnn_s.cifar100.yaml').write_text('model: dtgff_cnn_s\ndataset: cifar100\n')
    (recipes / 'ff_cnn_s.cifar10.yaml').write_text('model: ff_cnn_s\ndataset: cifar10\n')
    runs = tmp_path / 'runs'
    copy_run(trained_run, runs / 'some-run')
    (copy_run(trained_run, runs / 'unfinished') / 'metrics.json').unlink()
    copy_run(trained_run, runs / 'dtgff_cnn_s.cifar100')  # right name, but 10 classes: not the tag's
    folders = hub.build_release(runs, tmp_path / 'out', org=ORG, recipes_dir=recipes)
    assert folders == [tmp_path / 'out' / 'dtgff_cnn_s.cifar10']
    assert sorted(p.name for p in folders[0].iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    card = (folders[0] / 'README.md').read_text()
    assert f"timm.create_model('hf-hub:{TAG_REPO}', pretrained=True)" in card
    manifest = json.loads((tmp_path / 'out' / 'release.json').read_text())
    assert manifest['missing_runs'] == ['dtgff_cnn_s.cifar100', 'ff_cnn_s.cifar10']
    why = 'run dtgff_cnn_s.cifar100: weights do not match tag dtgff_cnn_s.cifar100: num_classes=10 (tag: 100)'
    assert manifest['rejected_runs'] == {'dtgff_cnn_s.cifar100': why}
    assert manifest['released'][TAG]['repo_id'] == TAG_REPO
    assert hub.main(['release', '--runs', str(runs), '--out', str(tmp_path / 'out2'), '--org', ORG,
                     '--recipes', str(recipes)]) == 0
    out = capsys.readouterr().out
    assert f'{TAG_REPO}:' in out and 'no finished run for recipe ff_cnn_s.cifar10' in out
    assert f'error: {why}' in out


def test_every_pretrained_tag_has_a_recipe_and_every_recipe_a_tag():
    import train_ff
    from timm_ff.recipe import check_recipe_keys, load_recipe
    tags = set(timm.list_pretrained(['ff_*', 'dtgff_*']))
    files = sorted((REPO / 'hub_configs').glob('*.yaml'))
    recipes = {p.stem for p in files}
    assert not tags - recipes, f'tags without hub_configs/<arch>.<tag>.yaml: {sorted(tags - recipes)}'
    assert not recipes - tags, f'recipes without a pretrained tag: {sorted(recipes - tags)}'
    allowed = {a.dest for a in train_ff.build_parser()._actions} - set(train_ff._NOT_IN_RECIPE) - {'help'}
    for path in files:
        recipe = load_recipe(str(path))
        check_recipe_keys(recipe, allowed, str(path))
        assert timm.models.split_model_name_tag(recipe.get('model', path.stem))[0] == path.stem.split('.')[0]



# ------------------------------------------------------------------------------------- release/
RELEASES = sorted(p for p in (REPO / 'release').glob('*.*') if p.is_dir())
RELEASE_ORG = 'releaseorg'


def test_release_folder_holds_the_cpu_checkpoints():
    names = {p.name for p in RELEASES}
    assert {'dtgff_cnn_s.cifar10', 'ff_cnn_s.cifar10', 'dtgff_mlp.mnist', 'ff_mlp.mnist', 'dtgff_resnet18.cifar10'} <= names
    manifest = json.loads((REPO / 'release' / 'release.json').read_text())
    for folder in RELEASES:
        assert sorted(p.name for p in folder.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
        assert manifest['released'][folder.name]['sha256'] == hub.sha256_file(folder / 'model.safetensors')
        card = (folder / 'README.md').read_text()
        assert '/work/' not in card and '/tmp/' not in card and '/root/' not in card  # no local paths
    # the ResNet-18 release is stored in float16 (half the file) and its card says so, with the accuracy cost measured
    stored = load_file(str(REPO / 'release' / 'dtgff_resnet18.cifar10' / 'model.safetensors'))
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}
    assert 'the weights are stored in float16' in (REPO / 'release' / 'dtgff_resnet18.cifar10' / 'README.md').read_text()


def test_every_release_card_names_the_commit_that_trained_it():
    """Each card's recipe section names the git commit its config.json records (whose code reproduces the
    release from the recipe), in its text and atop the YAML, and the recipe keys that changed meaning since."""
    import re
    from timm_ff.hub.card import changed_recipe_keys
    git = shutil.which('git') and (REPO / '.git').exists() and subprocess.run(
        ['git', 'rev-parse', '--is-shallow-repository'], cwd=REPO, capture_output=True,
        text=True).stdout.strip() == 'false'
    changed = set()
    for folder in RELEASES:
        block = json.loads((folder / 'config.json').read_text())['timm_ff']
        commit = block['run_info']['git_commit']
        assert re.fullmatch('[0-9a-f]{40}', commit), (folder.name, commit)  # a clean checkout, fully recorded
        card = (folder / 'README.md').read_text()
        section = card.split('\n### Recipe\n', 1)[1].split('\n## ', 1)[0]
        assert f'Trained at git commit `{commit}`: with the code of that commit' in section, folder.name
        assert f'`train_ff.py -c hf-hub:timm-ff/{folder.name}` re-runs this recipe' in section, folder.name
        assert f'```yaml\n# trained at git commit {commit}\n' in section, folder.name
        notes = changed_recipe_keys(block['recipe'], block['run_info'])
        assert all(note in section for note in notes), folder.name
        assert notes or 'No recipe key is known to have changed meaning' in section, folder.name
        changed |= {folder.name} if notes else set()
        if git:  # the commit is in this repository's history
            assert subprocess.run(['git', 'merge-base', '--is-ancestor', commit, 'HEAD'], cwd=REPO).returncode == 0
    # trained before 12a87af, when --fusion-check-images judged on trained-on images: their recipes' 10000 now holds
    # images out of training
    assert changed == {'dtgff_cnn_s.cifar10', 'dtgff_mlp.mnist', 'ff_mlp.mnist'}


def test_changed_recipe_keys_read_from_what_the_run_recorded():
    from timm_ff.hub.card import changed_recipe_keys
    recipe = {'fusion_check_images': 10000}
    old = {'data_source': "local parquet folder 'x'", 'data': {'train_rows': 50000}}
    notes = changed_recipe_keys(recipe, old)
    assert len(notes) == 1 and notes[0].startswith('`fusion_check_images`: this run trained on all 50000 training')
    for source in ("local parquet folder 'x' (5000 training images held out for the fusion check)",
                   "bundled sample (too few training images to hold out one per class for the fusion check: no "
                   "fusion check)"):
        assert changed_recipe_keys(recipe, dict(old, data_source=source)) == []
    assert changed_recipe_keys({'fusion_check_images': 0}, old) == [] and changed_recipe_keys(recipe, {}) == []


def test_unpublished_tag_on_the_hub_is_one_hub_error(local_hub, tmp_path):
    """Online, a tag whose repo the Hub does not have fails through plain timm with the same one line."""
    code = f'''
import json
import timm, timm_ff
try:
    timm.create_model('{UNPUBLISHED_TAG}', pretrained=True)
except RuntimeError as e:
    print(json.dumps(dict(type=type(e).__name__, hub_error=isinstance(e, timm_ff.HubError), msg=str(e))))
'''
    env = local_hub.env(tmp_path / 'hf_home', TIMM_FF_HUB_ORG='emptyorg')
    proc = run_py(code, env=env, timeout=120)
    assert_ok(proc)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res['hub_error'], res
    assert_one_line_tag_error(res['msg'], UNPUBLISHED_TAG, 'the repo does not exist at')
    assert f'emptyorg/{UNPUBLISHED_TAG}' in res['msg'] and local_hub.endpoint in res['msg'], res['msg']


@pytest.mark.timeout(600)
def test_released_checkpoints_load_by_tag_from_the_hub_and_reproduce_their_card(local_hub, tmp_path):
    for folder in RELEASES:
        repo = f'{RELEASE_ORG}/{folder.name}'
        local_hub.store.create(repo, {})
        local_hub.store.commit(repo, 'main', 'release', [('file', p.name, p.read_bytes()) for p in folder.iterdir()])
    code = '''
import json, sys
import timm, timm_ff
from timm_ff.data import sample_accuracy
res = {}
for name in sys.argv[1:]:
    model = timm.create_model(name, pretrained=True)
    res[name] = dict(hub_id=model.pretrained_cfg.get('hf_hub_id'), check=sample_accuracy(model, name.split('.')[1]))
print(json.dumps(res))
'''
    env = local_hub.env(tmp_path / 'hf_home', TIMM_FF_HUB_ORG=RELEASE_ORG)
    proc = run_py(code, *[p.name for p in RELEASES], env=env, timeout=500)
    assert_ok(proc)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    for folder in RELEASES:
        got = res[folder.name]
        assert got['hub_id'] == f'{RELEASE_ORG}/{folder.name}'
        card = (folder / 'README.md').read_text()
        assert f"**{got['check']['accuracy']:.2f}%**" in card, (folder.name, got['check'])
