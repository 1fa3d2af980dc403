"""Release folders: pair every ``hub_configs/<arch>.<tag>.yaml`` recipe with its best finished run.

:func:`build_release` writes one upload folder per recipe that has a run (what
:func:`~timm_ff.hub.publish_run` would upload to ``ORG/<arch>.<tag>``) plus a ``release.json``
manifest.
"""
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..data import sample_accuracy
from ..models._hub_org import HUB_ORG
from ._common import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, PathLike
from .integrity import _read_json, load_model_folder, sha256_file
from .publish import build_upload_folder

__all__ = ['match_release_runs', 'build_release', 'check_section']

_logger = logging.getLogger(__name__)


def _recipe_names(recipes_dir: Path) -> List[str]:
    """``<arch>.<tag>`` names of the recipes in ``recipes_dir``."""
    return sorted(p.stem for p in recipes_dir.glob('*.yaml'))


def _finished_runs(runs_root: Path) -> List[Path]:
    """Every finished run folder (metrics.json + config.json + model.safetensors) under ``runs_root``."""
    runs = {p.parent for p in runs_root.rglob('metrics.json')
            if (p.parent / CONFIG_NAME).is_file() and (p.parent / WEIGHTS_NAME).is_file()}
    return sorted(runs)


def _tag_model_args(name: str) -> Optional[Dict[str, Any]]:
    """JSON form of the model_args a pretrained tag builds (None if ``name`` is not a registered tag)."""
    import timm
    if name not in timm.list_pretrained(name):
        return None
    return json.loads(json.dumps(timm.create_model(name).model_args))


def _run_score(name: str, recipe: Dict[str, Any], tag_args: Optional[Dict[str, Any]],
               run: Path) -> Optional[Tuple[int, int, float]]:
    """How well a run matches recipe ``name`` (higher is better), or None if it does not.

    The run's architecture must be the recipe's and, for a registered tag, its model_args those the
    tag builds (else ``create_model(tag, pretrained=True)`` would not reproduce it). Then a run
    folder named ``<arch>.<tag>`` matches, or a run whose recipe dataset is the recipe's. Ties go
    to the name, then the run agreeing on more recipe keys, then the newest.
    """
    arch, _, tag = name.partition('.')
    try:
        cfg = json.loads((run / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return None
    if cfg.get('architecture') != arch or (tag_args is not None and cfg.get('model_args') != tag_args):
        return None
    run_recipe = (cfg.get('timm_ff') or {}).get('recipe') or {}
    named = run.name == name
    if not (named or run_recipe.get('dataset') == recipe.get('dataset', tag)):
        return None
    agree = sum(run_recipe.get(k) == v for k, v in recipe.items())
    return int(named), agree, (run / 'metrics.json').stat().st_mtime


def mismatch(name: str, tag_args: Optional[Dict[str, Any]], run: Path) -> str:
    """Why run folder ``run``, named like recipe ``name``, cannot be its release (one line)."""
    arch = name.partition('.')[0]
    try:
        cfg = json.loads((run / CONFIG_NAME).read_text())
    except (OSError, ValueError) as e:
        return f'run {run.name}: unreadable {CONFIG_NAME} ({e})'
    if cfg.get('architecture') != arch:
        return f"run {run.name}: architecture {cfg.get('architecture')!r}, recipe {name} needs {arch!r}"
    have = cfg.get('model_args') or {}
    diff = sorted(k for k in set(have) | set(tag_args or {}) if have.get(k) != (tag_args or {}).get(k))
    shown = ', '.join(f'{k}={have.get(k)!r} (tag: {(tag_args or {}).get(k)!r})' for k in diff[:3])
    return f'run {run.name}: weights do not match tag {name}: {shown}'


def match_release_runs(runs_root: PathLike, recipes_dir: Optional[PathLike] = None
                       ) -> Tuple[Dict[str, Path], List[str], Dict[str, str]]:
    """Pair each ``hub_configs/<arch>.<tag>.yaml`` with its best finished run under ``runs_root``.

    Returns:
        ``({name: run folder}, [names of recipes without a run], {name: why a run folder named like the
        recipe was rejected})``.
    """
    from ..recipe import load_recipe, recipe_dir
    recipes = Path(recipes_dir) if recipes_dir is not None else recipe_dir()
    runs = _finished_runs(Path(runs_root)) if Path(runs_root).is_dir() else []
    matched, missing, rejected = {}, [], {}
    for name in _recipe_names(recipes):
        recipe = load_recipe(str(recipes / f'{name}.yaml'))
        tag_args = _tag_model_args(name)
        scored = [(s, run) for run in runs if (s := _run_score(name, recipe, tag_args, run)) is not None]
        if scored:
            matched[name] = max(scored, key=lambda sr: sr[0])[1]
        else:
            missing.append(name)
            named = [run for run in runs if run.name == name]
            if named:
                rejected[name] = mismatch(name, tag_args, named[0])
    return matched, missing, rejected


def check_section(check: Dict[str, Any]) -> str:
    """Model-card section stating the accuracy on the bundled sample, which a download can re-check."""
    return (f"\n## Check on bundled data\n\nFused top-1 on the `{check['split']}` split of the sample "
            f"`timm_ff/_sample/{check['sample']}` shipped with timm_ff ({check['images']} real {check['dataset']} "
            f"images, 50 per class): **{check['accuracy']:.2f}%**. Reproduce it with "
            f"`timm_ff.data.sample_accuracy(model, '{check['dataset']}')`.\n")


def build_release(runs_root: PathLike, out_dir: PathLike, org: str = HUB_ORG,
                  recipes_dir: Optional[PathLike] = None) -> List[Path]:
    """Write an upload-ready folder ``out_dir/<arch>.<tag>/`` for every recipe that has a finished run.

    Each folder is what ``publish_run(run, f'{org}/<arch>.<tag>', dry_run=True)`` writes.
    ``out_dir/release.json`` records the repo ids, runs, sha256s and accuracies, the recipes
    without a run, and why a run folder named like a recipe was rejected (both also logged as warnings).

    Returns:
        The upload folders written, sorted by name.
    """
    out = Path(out_dir)
    matched, missing, rejected = match_release_runs(runs_root, recipes_dir)
    folders, manifest = [], {'org': org, 'released': {}, 'missing_runs': missing, 'rejected_runs': rejected}
    for name, run in sorted(matched.items()):
        folder = build_upload_folder(run, out / name, f'{org}/{name}')
        metrics = _read_json(run / 'metrics.json', 'metrics')
        check = sample_accuracy(load_model_folder(folder), name.split('.', 1)[1])
        if check is not None:
            with open(folder / CARD_NAME, 'a', encoding='utf-8') as f:
                f.write(check_section(check))
        manifest['released'][name] = dict(repo_id=f'{org}/{name}', run=run.name,
                                          accuracy=metrics.get('accuracy'), sample_check=check,
                                          sha256=sha256_file(folder / WEIGHTS_NAME))
        folders.append(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'release.json').write_text(json.dumps(manifest, indent=2) + '\n')
    if missing:
        _logger.warning('recipes without a finished run: %s', ', '.join(missing))
    for why in rejected.values():
        _logger.warning('%s', why)
    return folders
