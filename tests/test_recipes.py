"""hub_configs/ recipes: every one parses with train_ff.py's parser and names its own tag."""
from pathlib import Path

import pytest
import timm

import timm_ff  # noqa: F401  (registers the models)
from timm_ff.errors import ConfigError

from _cli import REPO

RECIPES = sorted((REPO / 'hub_configs').glob('*.yaml'))


@pytest.mark.parametrize('path', RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_parses_and_matches_its_tag(path: Path):
    import train_ff
    args = train_ff.parse_args(['-c', str(path)])
    train_ff.check_args(args)
    assert args.model == path.stem
    assert args.dataset == path.stem.split('.')[1]
    assert timm.is_model(path.stem.split('.')[0])
    assert args.objective in timm_ff.list_objectives()


def test_recipe_with_unknown_key_is_an_error(tmp_path):
    import train_ff
    bad = tmp_path / 'r.yaml'
    bad.write_text('model: dtgff_cnn_s\nlearning_rate: 0.1\n')
    with pytest.raises(ConfigError, match="unknown recipe key 'learning_rate'"):
        train_ff.parse_args(['-c', str(bad)])


def test_flags_override_the_recipe():
    import train_ff
    args = train_ff.parse_args(['-c', str(RECIPES[0]), '--epochs', '3', '--lr', '0.5'])
    assert (args.epochs, args.lr) == (3, 0.5)
