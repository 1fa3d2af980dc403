"""Training recipes: YAML files whose keys are ``train_ff.py`` argument names (timm's train.py pattern).

A recipe sets the CLI's defaults; flags given on the command line override it; a key the CLI does
not know is an error, never silently ignored. ``hub_configs/<arch>.<tag>.yaml`` holds one recipe per
pretrained tag.
"""
import argparse
from pathlib import Path
from typing import Dict, Iterable

import yaml

from .errors import ConfigError

__all__ = ['load_recipe', 'check_recipe_keys', 'recipe_dir', 'dump_recipe']


def recipe_dir() -> Path:
    """The repository's ``hub_configs/`` folder (next to ``train_ff.py``)."""
    return Path(__file__).resolve().parent.parent / 'hub_configs'


def load_recipe(path: str) -> Dict:
    """Read a recipe YAML file into a dict (``-`` in keys becomes ``_``)."""
    p = Path(path)
    if not p.is_file():
        shipped = sorted(q.name for q in recipe_dir().glob('*.yaml'))
        hint = f"; shipped recipes: {', '.join(shipped)}" if shipped else ''
        raise ConfigError(f'recipe {path!r} does not exist{hint}')
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f'recipe {path!r} is not valid YAML: {e}') from e
    if not isinstance(data, dict):
        raise ConfigError(f'recipe {path!r} must be a mapping of argument names to values')
    return {str(k).replace('-', '_'): v for k, v in data.items()}


def check_recipe_keys(recipe: Dict, allowed: Iterable[str], source: str) -> None:
    """Raise if the recipe has a key that is not a CLI argument."""
    allowed = set(allowed)
    bad = sorted(k for k in recipe if k not in allowed)
    if bad:
        raise ConfigError(f"unknown recipe key {bad[0]!r} in {source}; allowed keys: {', '.join(sorted(allowed))}")


def dump_recipe(args: argparse.Namespace, skip: Iterable[str] = ()) -> Dict:
    """The resolved recipe of a run: every argument, in a YAML-friendly form."""
    out = {}
    for k, v in sorted(vars(args).items()):
        if k in skip:
            continue
        out[k] = list(v) if isinstance(v, tuple) else v
    return out
