"""Tests for timm_ff.data: registry, dataset loading (sample, parquet, imagefolder) and loaders."""

import pytest
import torch
from datasets import load_dataset

from timm_ff.data import sources
from timm_ff.data import (
    SAMPLE_DIR, ImageData, create_loaders, get_dataset_spec, list_datasets, load_image_datasets, make_transform,
)
from timm_ff.errors import DataError

CIFAR_CONFIG = {'input_size': (3, 32, 32), 'interpolation': 'bilinear', 'mean': (0.4914, 0.4822, 0.4465),
                'std': (0.2470, 0.2435, 0.2616), 'crop_pct': 1.0, 'crop_mode': 'center'}
CIFAR_CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']


@pytest.fixture
def offline(monkeypatch):
    """Make every Hub load in timm_ff.data.sources fail as HF_HUB_OFFLINE=1 does; local loads still work."""
    real = sources.load_dataset

    def fake(path, *args, **kwargs):
        if path in ('parquet', 'imagefolder'):
            return real(path, *args, **kwargs)
        raise ConnectionError(f"Couldn't reach {path!r} on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(sources, 'load_dataset', fake)


@pytest.fixture(scope='module')
def sample():
    return load_dataset('parquet', data_files={
        'train': str(SAMPLE_DIR / 'train-00000-of-00001.parquet'),
        'test': str(SAMPLE_DIR / 'test-00000-of-00001.parquet')})


@pytest.fixture
def parquet_dir(tmp_path, sample):
    """A small HF-style parquet folder: 40 train / 20 test rows, with a second integer label column."""
    root = tmp_path / 'pq'
    root.mkdir()
    for split, n in (('train', 40), ('test', 20)):
        ds = sample[split].select(range(n)).map(lambda ex: {'parity': ex['label'] % 2})
        ds.to_parquet(str(root / f'{split}-00000-of-00001.parquet'))
    return root


def test_registry():
    names = list_datasets()
    assert names == sorted(names)
    assert {'cifar10', 'cifar100', 'imagenet100', 'mnist', 'fashion_mnist', 'svhn', 'stl10',
            'tiny_imagenet'} <= set(names)
    assert get_dataset_spec('cifar100').label_columns == ('fine_label', 'coarse_label')
    assert get_dataset_spec('mnist').in_chans == 1 and get_dataset_spec('cifar10').in_chans == 3
    assert get_dataset_spec('svhn').config == 'cropped_digits'
    assert get_dataset_spec('imagenet100').eval_split == 'validation'
    with pytest.raises(DataError, match=r"unknown dataset 'nope'.*cifar10.*mnist"):
        get_dataset_spec('nope')


def test_sample_fallback_when_offline(offline):
    data = load_image_datasets('cifar10')
    assert isinstance(data, ImageData) and data.is_sample
    assert (len(data.train), len(data.eval)) == (950, 500)
    assert (data.image_column, data.label_column, data.num_classes) == ('img', 'label', 10)
    assert data.class_names == CIFAR_CLASSES
    assert 'bundled CIFAR-10 sample (950 train / 500 test images)' in data.source
    assert 'could not be loaded (HF_HUB_OFFLINE=1 is set and it is not in the datasets cache)' in data.source


def test_unreachable_hub_uses_cache_only(monkeypatch):
    """Without HF_HUB_OFFLINE, an unreachable Hub is found by a probe and datasets asked for its cache only."""
    import huggingface_hub.constants
    dead = 'http://127.0.0.1:9'
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(huggingface_hub.constants, 'ENDPOINT', dead)
    monkeypatch.setattr(sources.datasets.config, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(sources.datasets.config, 'HF_ENDPOINT', dead)
    real, offline_during_call = sources.load_dataset, []

    def spy(path, *args, **kwargs):
        if path not in ('parquet', 'imagefolder'):
            offline_during_call.append(sources.datasets.config.HF_HUB_OFFLINE)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(sources, 'load_dataset', spy)
    data = load_image_datasets('cifar10')
    assert data.is_sample and offline_during_call == [True]
    assert f'the Hub at {dead} cannot be reached' in data.source
    assert sources.datasets.config.HF_HUB_OFFLINE is False


@pytest.mark.parametrize('kwargs', [
    {'name': 'cifar10', 'allow_sample_fallback': False},
    {'name': 'cifar10', 'label_column': 'orig_index'},
    {'name': 'cifar100'},
])
def test_no_fallback_gives_clear_error(offline, kwargs):
    with pytest.raises(DataError, match=r"could not be loaded.*--data-dir.*parquet folder or image folder.*shared/data"):
        load_image_datasets(**kwargs)


def test_no_name_no_dir():
    with pytest.raises(DataError, match='no dataset given.*cifar10.*--data-dir'):
        load_image_datasets()


def test_local_parquet_dir(parquet_dir):
    data = load_image_datasets(data_dir=str(parquet_dir))
    assert not data.is_sample and str(parquet_dir) in data.source
    assert (len(data.train), len(data.eval)) == (40, 20)
    assert (data.image_column, data.label_column) == ('img', 'label')
    assert data.num_classes == 10 and data.class_names == CIFAR_CLASSES


def test_parquet_in_data_subfolder_and_plain_split_names(tmp_path, sample):
    (tmp_path / 'data').mkdir()
    sample['train'].select(range(12)).to_parquet(str(tmp_path / 'data' / 'train.parquet'))
    sample['test'].select(range(8)).to_parquet(str(tmp_path / 'data' / 'validation.parquet'))
    data = load_image_datasets('cifar10', data_dir=str(tmp_path))
    assert (len(data.train), len(data.eval)) == (12, 8)


def test_label_column_selection(parquet_dir):
    data = load_image_datasets(data_dir=str(parquet_dir), label_column='parity')
    assert data.label_column == 'parity'
    assert data.num_classes == 2 and data.class_names is None  # plain int column: max label + 1


def test_bad_label_column_message(parquet_dir):
    with pytest.raises(DataError) as err:
        load_image_datasets('cifar10', data_dir=str(parquet_dir), label_column='coarse_label')
    msg = str(err.value)
    assert "'coarse_label'" in msg and 'label' in msg and 'parity' in msg and 'img' in msg


def test_bad_image_column(parquet_dir):
    with pytest.raises(DataError, match=r"image column 'label' is not an image column.*img"):
        load_image_datasets(data_dir=str(parquet_dir), image_column='label')


def test_no_image_column(tmp_path, sample):
    sample['train'].select(range(5)).remove_columns('img').to_parquet(str(tmp_path / 'train.parquet'))
    sample['test'].select(range(5)).remove_columns('img').to_parquet(str(tmp_path / 'test.parquet'))
    with pytest.raises(DataError, match=r'no image column.*label, orig_index'):
        load_image_datasets(data_dir=str(tmp_path))


def test_missing_and_empty_dirs(tmp_path):
    with pytest.raises(DataError, match=r'does not exist.*parquet.*image folder'):
        load_image_datasets(data_dir=str(tmp_path / 'missing'))
    with pytest.raises(DataError, match=r'is empty.*parquet'):
        load_image_datasets(data_dir=str(tmp_path))
    (tmp_path / 'notes.txt').write_text('nothing useful')
    with pytest.raises(DataError, match=r'no recognisable layout.*<split>/<class>'):
        load_image_datasets(data_dir=str(tmp_path))


def test_single_split_folder(tmp_path, sample):
    sample['test'].select(range(10)).to_parquet(str(tmp_path / 'validation-00000-of-00001.parquet'))
    with pytest.raises(DataError, match=r"splits found: validation.*explicitly"):
        load_image_datasets(data_dir=str(tmp_path))
    data = load_image_datasets(data_dir=str(tmp_path), train_split='validation', eval_split='validation')
    assert len(data.train) == len(data.eval) == 10
    with pytest.raises(DataError, match=r"eval split 'test' not found.*validation"):
        load_image_datasets(data_dir=str(tmp_path), train_split='validation', eval_split='test')


def test_imagefolder_layout(tmp_path, sample):
    names = sample['train'].features['label'].names
    for split, ds in (('fit', sample['train']), ('holdout', sample['test'])):
        for i, ex in enumerate(ds.select(range(12))):
            folder = tmp_path / split / names[ex['label']]
            folder.mkdir(parents=True, exist_ok=True)
            ex['img'].save(folder / f'{i}.png')
    with pytest.raises(DataError, match='eval split'):
        load_image_datasets(data_dir=str(tmp_path), train_split='fit')
    data = load_image_datasets(data_dir=str(tmp_path), train_split='fit', eval_split='holdout')
    assert (data.image_column, data.label_column) == ('image', 'label')
    assert (len(data.train), len(data.eval)) == (12, 12)
    assert data.num_classes == len(data.class_names) and set(data.class_names) <= set(names)
    assert data.train[0]['image'].size == (32, 32)



def test_class_folder_layout_is_one_train_split(tmp_path):
    """torchvision's ImageFolder layout <dir>/<class>/*.png loads as a train split; the eval split is held out."""
    from PIL import Image
    colours = {'cat': (255, 0, 0), 'dog': (0, 0, 255)}
    for name, colour in colours.items():
        (tmp_path / name).mkdir()
        for i in range(6):
            Image.new('RGB', (8, 8), colour).save(tmp_path / name / f'{i}.png')
    with pytest.raises(DataError, match=r"no eval split in local image folder .*splits found: train;.*--holdout"):
        load_image_datasets(data_dir=str(tmp_path))
    data = load_image_datasets(data_dir=str(tmp_path), holdout=0.5)
    assert (data.image_column, data.label_column, data.class_names) == ('image', 'label', ['cat', 'dog'])
    assert (len(data.train), len(data.eval)) == (6, 6)
    assert sorted(data.eval['label']) == [0, 0, 0, 1, 1, 1]  # stratified
    for split in (data.train, data.eval):
        for ex in split:
            assert ex['image'].getpixel((0, 0)) == colours[data.class_names[ex['label']]]


def test_split_folders_without_class_folders_are_one_clear_error(tmp_path):
    from PIL import Image
    for split in ('train', 'test'):
        (tmp_path / split).mkdir()
        Image.new('RGB', (8, 8)).save(tmp_path / split / '0.png')
    with pytest.raises(DataError, match=r"holds images directly in split folders \(test, train\) with no class "
                                        r"folders inside; expected .*<dir>/<split>/<class>/\*\.png"):
        load_image_datasets(data_dir=str(tmp_path))


def test_loaders_shapes_and_dtypes(parquet_dir):
    data = load_image_datasets(data_dir=str(parquet_dir))
    train, evals = create_loaders(data, data_config=CIFAR_CONFIG, batch_size=16, eval_batch_size=8)
    assert len(train) == 2 and len(evals) == 3  # 40 // 16 with drop_last; ceil(20 / 8)
    x, y = next(iter(train))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.long and y.shape == (16,) and 0 <= y.min() and y.max() < data.num_classes
    sizes = [xb.shape[0] for xb, _ in evals]
    assert sizes == [8, 8, 4]
    xe, ye = next(iter(evals))
    assert ye.tolist() == data.eval['label'][:8]  # eval is not shuffled
    assert -3.0 < xe.mean() < 3.0 and xe.min() < 0 < xe.max()  # normalised, not [0, 1]


def test_grayscale_loader(parquet_dir):
    data = load_image_datasets(data_dir=str(parquet_dir))
    config = dict(CIFAR_CONFIG, input_size=(3, 28, 28))  # timm reports 3 chans even for in_chans=1 models
    train, evals = create_loaders(data, data_config=config, batch_size=8, in_chans=1,
                                  train_transform_kwargs={'scale': (0.5, 1.0)})
    for loader in (train, evals):
        x, y = next(iter(loader))
        assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long


def test_train_order_reproducible(parquet_dir):
    data = load_image_datasets(data_dir=str(parquet_dir))

    def order(seed):
        train, _ = create_loaders(data, data_config=CIFAR_CONFIG, batch_size=8, seed=seed)
        return torch.cat([y for _, y in train]).tolist()

    assert order(0) == order(0)
    assert order(0) != order(1)


def test_loader_argument_errors(parquet_dir):
    data = load_image_datasets(data_dir=str(parquet_dir))
    with pytest.raises(DataError, match='fewer than batch_size 64'):
        create_loaders(data, data_config=CIFAR_CONFIG, batch_size=64)
    with pytest.raises(DataError, match='batch_size must be a positive integer'):
        create_loaders(data, data_config=CIFAR_CONFIG, batch_size=0)
    with pytest.raises(DataError, match="unknown transform argument.*'bogus'"):
        create_loaders(data, data_config=CIFAR_CONFIG, batch_size=8, train_transform_kwargs={'bogus': 1})
    with pytest.raises(DataError, match='in_chans must be 1'):
        make_transform(CIFAR_CONFIG, False, in_chans=2)


VEHICLES = ['airplane', 'automobile', 'ship', 'truck']


def _by_index(split, label_column='label'):
    return dict(zip(split['orig_index'], split[label_column]))


def test_first_n_classes_and_named_subset_are_renumbered(parquet_dir):
    full = load_image_datasets(data_dir=str(parquet_dir))
    first = load_image_datasets(data_dir=str(parquet_dir), classes=3)
    assert first.num_classes == 3 and first.class_names == CIFAR_CLASSES[:3]
    orig = _by_index(full.train)
    assert _by_index(first.train) == {i: y for i, y in orig.items() if y < 3}
    named = load_image_datasets(data_dir=str(parquet_dir), classes=['dog', 'cat'])
    assert named.num_classes == 2 and named.class_names == ['dog', 'cat']
    assert named.train.features['label'].names == ['dog', 'cat']
    for split, orig_split in ((named.train, full.train), (named.eval, full.eval)):
        want = {i: {5: 0, 3: 1}[y] for i, y in _by_index(orig_split).items() if y in (3, 5)}
        assert _by_index(split) == want and len(want) > 0


def test_class_groups_give_one_label_per_group(parquet_dir):
    full = load_image_datasets(data_dir=str(parquet_dir))
    groups = {'vehicle': VEHICLES, 'animal': [c for c in CIFAR_CLASSES if c not in VEHICLES]}
    data = load_image_datasets(data_dir=str(parquet_dir), classes=groups)
    assert data.num_classes == 2 and data.class_names == ['vehicle', 'animal']
    assert len(data.train) == len(full.train)  # every class is in a group: the same images
    vehicle_ids = {CIFAR_CLASSES.index(c) for c in VEHICLES}
    assert _by_index(data.train) == {i: 0 if y in vehicle_ids else 1 for i, y in _by_index(full.train).items()}
    mixed = load_image_datasets(data_dir=str(parquet_dir), classes={'a': [0, 'ship'], 'b': 9})
    assert _by_index(mixed.eval) == {i: 0 if y in (0, 8) else 1 for i, y in _by_index(full.eval).items()
                                     if y in (0, 8, 9)}


@pytest.mark.parametrize('classes,match', [
    (11, r"classes \(--classes\) 11 is not possible: label column 'label' has 10 classes; pick 2 to 10"),
    (1, r'classes \(--classes\) 1 is not possible'),
    (['cat', 'unicorn'], r"unknown class 'unicorn'.*allowed: ids 0-9 or names airplane, automobile"),
    ([3, 'cat'], r"class 3 \(cat\) is listed twice"),
    ({'only': [0, 1]}, r'leaves 1 class; a classifier needs at least 2'),
    ('cats', r"must be a number of classes, a list of classes or a dict of groups, got 'cats'"),
])
def test_bad_class_selection(parquet_dir, classes, match):
    with pytest.raises(DataError, match=match):
        load_image_datasets(data_dir=str(parquet_dir), classes=classes)


def test_max_per_class_keeps_the_first_images_of_each_class(parquet_dir):
    full = load_image_datasets(data_dir=str(parquet_dir))
    capped = load_image_datasets(data_dir=str(parquet_dir), max_per_class=2)
    want, seen = [], {}
    for i, y in zip(full.train['orig_index'], full.train['label']):
        if seen.get(y, 0) < 2:
            seen[y] = seen.get(y, 0) + 1
            want.append(i)
    assert capped.train['orig_index'] == want and len(capped.eval) == len(full.eval)
    with pytest.raises(DataError, match=r'max_per_class \(--max-per-class\) must be a positive integer, got -1'):
        load_image_datasets(data_dir=str(parquet_dir), max_per_class=-1)


def test_holdout_is_stratified_disjoint_and_fixed(tmp_path, sample):
    sample['train'].to_parquet(str(tmp_path / 'train-00000-of-00001.parquet'))  # one split only, like Omniglot
    with pytest.raises(DataError, match='no eval split'):
        load_image_datasets(data_dir=str(tmp_path))
    data = load_image_datasets(data_dir=str(tmp_path), holdout=0.2)
    assert (len(data.train), len(data.eval)) == (760, 190)
    assert torch.bincount(torch.tensor(data.eval['label'])).tolist() == [19] * 10  # 95 per class, stratified
    assert not set(data.train['orig_index']) & set(data.eval['orig_index'])
    again = load_image_datasets(data_dir=str(tmp_path), holdout=0.2, classes=2)
    assert set(again.eval['orig_index']) == {i for i, y in _by_index(data.eval).items() if y < 2}
    with pytest.raises(DataError, match=r'holdout \(--holdout\) must be a fraction in \(0, 1\), got 1.5'):
        load_image_datasets(data_dir=str(tmp_path), holdout=1.5)


def test_one_bit_images_are_read_as_grayscale_and_resized(tmp_path, sample):
    """Omniglot's layout: 105x105 mode '1' images, one split; the tensor path reads them as 0/255 grayscale."""
    def to_glyph(batch):
        return {'img': [im.convert('L').resize((105, 105)).point(lambda v: 255 if v > 100 else 0).convert('1')
                        for im in batch['img']]}
    ds = sample['train'].filter(lambda y: y < 5, input_columns='label').select(range(40)).map(to_glyph, batched=True)
    ds.to_parquet(str(tmp_path / 'train-00000-of-00001.parquet'))
    with pytest.raises(DataError, match=r"cannot hold out 0.05 of the 40 training rows.*stratified by 'label'"):
        load_image_datasets(data_dir=str(tmp_path), holdout=0.05)  # 2 held-out rows for 5 classes
    data = load_image_datasets(data_dir=str(tmp_path), holdout=0.25, classes=4)
    assert data.train[0]['img'].mode == '1' and data.train[0]['img'].size == (105, 105)
    from timm_ff.data.tensor import decode_split
    decoded = decode_split(data.train, 'img', 'label', 'L', cache=False)
    assert decoded.images.shape[1:] == (1, 105, 105)
    assert set(decoded.images.unique().tolist()) == {0, 255}
    config = dict(CIFAR_CONFIG, input_size=(1, 32, 32))
    train, evals = create_loaders(data, data_config=config, batch_size=4, in_chans=1, pipeline='tensor')
    for loader in (train, evals):
        x, y = next(iter(loader))
        assert x.shape == (4, 1, 32, 32) and int(y.max()) < 4


def _sample_copy(tmp_path):
    """A copy of the bundled CIFAR-10 sample folder (train and test parquet files)."""
    import shutil
    root = tmp_path / 'corrupt'
    shutil.copytree(SAMPLE_DIR, root)
    return root


def test_truncated_parquet_is_one_clear_error_naming_the_file(tmp_path):
    root = _sample_copy(tmp_path)
    bad = root / 'test-00000-of-00001.parquet'
    raw = bad.read_bytes()
    bad.write_bytes(raw[:len(raw) // 2])
    with pytest.raises(DataError) as info:
        load_image_datasets(data_dir=str(root))
    msg = str(info.value)
    assert f"data file {str(bad)!r} is not readable parquet" in msg and '\n' not in msg
    assert 'train-*.parquet and test-*.parquet' in msg and 'image folder' in msg


def test_parquet_with_a_good_footer_and_bad_pages_names_the_file(tmp_path):
    """The footer check passes; datasets then fails reading the pages and the file is found by reading it."""
    root = _sample_copy(tmp_path)
    bad = root / 'train-00000-of-00001.parquet'
    raw = bad.read_bytes()
    bad.write_bytes(raw[:4] + b'\xff' * 4000 + raw[4004:])  # page headers overwritten, footer intact
    with pytest.raises(DataError, match=rf"data file {str(bad)!r} is not readable parquet \(.*thrift"):
        load_image_datasets(data_dir=str(root))


def _hub_imports(source: str, package: str) -> list[int]:
    """Lines of ``source`` (a module of ``package``) that import timm_ff.hub, absolutely or relatively."""
    import ast
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            parts = package.split('.')
            base = (node.module or '') if node.level == 0 else '.'.join(
                parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            names = [base] + [f'{base}.{a.name}' for a in node.names]
        else:
            continue
        if any(n == 'timm_ff.hub' or n.startswith('timm_ff.hub.') for n in names):
            lines.append(node.lineno)
    return lines


def test_no_data_module_imports_the_hub():
    """timm_ff.data sits below timm_ff.hub (the hub imports data), so no data module may import the hub."""
    import pathlib

    import timm_ff.data
    for bad in ('from ..hub import hub_unavailable', 'from .. import hub', 'import timm_ff.hub.card',
                'from timm_ff.hub._common import x', 'from timm_ff import hub', '    from ..hub import x'):
        assert _hub_imports(f'def f():\n{bad}\n' if bad.startswith(' ') else bad, 'timm_ff.data') != [], bad
    for ok in ('from .._offline import hub_unavailable', 'from ..errors import DataError',
               'import huggingface_hub',
               'from .sources import load_image_datasets', 'from timm_ff import hubstatus'):
        assert _hub_imports(ok, 'timm_ff.data') == [], ok
    root = pathlib.Path(timm_ff.data.__file__).parent
    modules = sorted(root.rglob('*.py'))
    assert {'__init__.py', 'sources.py', 'tensor.py'} <= {p.name for p in modules}
    found = {}
    for path in modules:
        package = '.'.join(('timm_ff', 'data', *path.relative_to(root).parent.parts))
        if _hub_imports(path.read_text(), package):
            found[str(path.relative_to(root))] = _hub_imports(path.read_text(), package)
    assert not found, f'timm_ff.data modules importing timm_ff.hub (file: lines): {found}'


def test_importing_data_does_not_import_the_hub():
    import subprocess
    import sys
    code = ("import timm_ff.data, sys; assert 'timm_ff.hub' not in sys.modules, "
            "sorted(m for m in sys.modules if m.startswith('timm_ff'))")
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
