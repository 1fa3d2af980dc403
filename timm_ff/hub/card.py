"""The model card (README.md) of a published timm_ff model, built from a run folder.

The card follows timm's layout: YAML front matter, details, usage, metrics, training (command,
git commit, and the recipe with the commit whose code reproduces it and the recipe keys that changed
meaning since) and files (size and sha256 of the weights, which :func:`validate_model_folder`
checks against).
"""
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

from ..data import get_dataset_spec, list_datasets
from ..models._hub_org import HUB_ORG
from ._common import CARD_TAGS, CONFIG_NAME, LICENSE, WEIGHTS_NAME, PathLike
from .integrity import _read_json, _read_model_config, read_safetensors_header, sha256_file

__all__ = ['model_card']


def _run_facts(run: Path, cfg: Dict[str, Any]) -> Tuple[Dict, Dict, Dict]:
    """(recipe, run_info, metrics) of a run: config.json's timm_ff block, completed by the run's files."""
    block = cfg.get('timm_ff') or {}
    recipe = dict(block.get('recipe') or {})
    run_info = dict(block.get('run_info') or {})
    metrics = dict(block.get('metrics') or {})
    for name, target in (('run_info.json', run_info), ('metrics.json', metrics)):
        if (run / name).is_file():
            extra = _read_json(run / name, name)
            target.update(extra)
    return recipe, run_info, metrics


def _dataset_hub_id(recipe: Dict[str, Any]) -> Optional[str]:
    """The Hub id of the run's registered dataset, or None for a custom one."""
    name = recipe.get('dataset')
    return get_dataset_spec(name).hub_id if name in list_datasets() else None


def _front_matter(dataset_id: Optional[str]) -> str:
    """YAML front matter of the card, in timm's key order."""
    meta: Dict[str, Any] = {'tags': list(CARD_TAGS), 'pipeline_tag': 'image-classification',
                            'library_name': 'timm', 'license': LICENSE}
    if dataset_id:
        meta['datasets'] = [dataset_id]
    return '---\n' + yaml.safe_dump(meta, sort_keys=False) + '---\n'


def _fmt(value: Any, digits: int = 2) -> str:
    """A number for the card (fixed digits), anything else as text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'{value:.{digits}f}' if isinstance(value, float) else str(value)
    return '-' if value is None else str(value)


def _metrics_table(metrics: Dict[str, Any]) -> str:
    """Markdown table of the fused and per-unit accuracies and the run's size."""
    rows = [('Fused top-1 accuracy (%)', _fmt(metrics.get('accuracy')))]
    for u, acc in enumerate(metrics.get('unit_accuracy') or []):
        rows.append((f'Unit {u} top-1 accuracy (%)', _fmt(acc)))
    evals = [h.get('eval_images') for h in metrics.get('history') or [] if isinstance(h, dict)]
    if evals and evals[-1]:
        rows.append(('Eval images', _fmt(evals[-1])))
    for key, label in (('epochs_run', 'Epochs'), ('global_step', 'Optimiser steps'),
                       ('train_images_per_s', 'Train throughput (images/s)'), ('num_processes', 'Processes'),
                       ('device', 'Device')):
        if key in metrics:
            rows.append((label, _fmt(metrics[key], 1)))
    return '| Metric | Value |\n|---|---|\n' + ''.join(f'| {k} | {v} |\n' for k, v in rows)


def _usage(repo_id: str, arch: str) -> str:
    """How to load the published model, with and without the Hub."""
    tag_line = ''
    name = repo_id.split('/')[-1]
    if name.startswith(arch + '.') and repo_id.split('/')[0] == HUB_ORG:
        tag_line = (f"\nThe pretrained tag resolves to this repo as well: "
                    f"`timm.create_model('{name}', pretrained=True)`.\n")
    return (
        '`import timm_ff` is required: timm registers architectures by import only, so without it\n'
        "`create_model` fails with `RuntimeError: Unknown model`.\n\n"
        '```python\n'
        'import timm_ff, timm\n\n'
        f"model = timm.create_model('hf-hub:{repo_id}', pretrained=True).eval()\n"
        'data_config = timm.data.resolve_data_config(model=model)\n'
        'transform = timm.data.create_transform(**data_config, is_training=False)\n'
        'logits = model(transform(img).unsqueeze(0))  # img: a PIL image\n'
        '```\n' + tag_line +
        '\nOffline, download the repo folder once and load it from disk: '
        "`timm.create_model('local-dir:PATH', pretrained=True)` or `timm_ff.hub.load_model_folder(PATH)`.\n"
    )


_PATH_RE = re.compile(r'(?<![\w:/])(?:/|\.{1,2}/|~/)[^\s\'"]*')


def scrub_paths(text: str) -> str:
    """Replace local filesystem paths with ``<local>/<last part>``: a card names data, not a machine."""
    return _PATH_RE.sub(lambda m: '<local>/' + m.group(0).rstrip('/').rsplit('/', 1)[-1], text)


def _data_line(info: Optional[Dict], dataset_id: Optional[str]) -> str:
    """The card's "Data used" line, from ``run_info['data']``."""
    if not info:
        return dataset_id or '-'
    parts = [f"{info.get('kind', '?')} copy of `{info.get('name')}`" if info.get('kind') != 'Hugging Face Hub'
             else f"`{dataset_id or info.get('name')}` from the Hugging Face Hub"]
    for key in ('train', 'eval'):
        if f'{key}_rows' in info:
            ident = info.get(f'{key}_content_hash') or f"datasets fingerprint {info.get(f'{key}_fingerprint')}"
            parts.append(f"{key} split `{info.get(f'{key}_split')}` ({info[f'{key}_rows']} images, {ident})")
    parts.append(f"labels `{info.get('label_column')}` ({info.get('num_classes')} classes)")
    return '; '.join(parts)


def _locality_line(local: bool) -> str:
    """The card's locality line, from metrics.json's ``local``."""
    if local:
        return '- **Local:** `true` (no gradient crosses a unit boundary)'
    return '- **Local:** `false` (not layer-local: gradients cross unit boundaries in training)'


def _card_details(run: Path, cfg: Dict[str, Any], recipe: Dict, run_info: Dict, metrics: Dict) -> str:
    """The card's summary paragraph and "Model Details" list."""
    arch = cfg['architecture']
    header = read_safetensors_header(run / WEIGHTS_NAME)
    n_params = sum(math.prod(shape) for _, shape in header.values())
    dataset_id = _dataset_hub_id(recipe)
    objective = metrics.get('objective') or recipe.get('objective') or '-'
    data_source = _data_line(run_info.get('data'), dataset_id)
    size = cfg.get('pretrained_cfg', {}).get('input_size')
    return '\n'.join([
        f"A `{arch}` image classifier trained{'' if metrics.get('local') is False else ' layer-locally'} with the "
        f'`{objective}` objective of timm_ff, '
        'a Forward-Forward plugin for timm.\n',
        '## Model Details\n',
        f'- **Architecture:** `{arch}` (`model_args` in config.json)',
        f'- **Objective:** {objective}',
        *([f"- **Method:** {metrics['method']}"] if metrics.get('method') else []),
        *([_locality_line(metrics['local'])] if isinstance(metrics.get('local'), bool) else []),
        f'- **Params (M):** {n_params / 1e6:.2f}',
        f'- **Classes:** {cfg.get("num_classes")}',
        f'- **Image size:** {" x ".join(str(s) for s in size[1:]) if size else "-"}',
        f'- **Dataset:** {recipe.get("dataset") or "-"}' + (f' (`{dataset_id}`)' if dataset_id else ''),
        f'- **Data used:** {data_source}',
        f'- **License:** {LICENSE}\n',
    ])


def changed_recipe_keys(recipe: Dict, run_info: Dict) -> List[str]:
    """Recipe keys the run's code read differently from today's, each as a card sentence (empty: none known).

    Each change is recognised from what the run recorded, so a card rebuilt later from the same run says
    the same. Add a check here whenever a recipe key changes meaning.
    """
    notes = []
    n = recipe.get('fusion_check_images')
    source = run_info.get('data_source')
    # since 12a87af a fusion check holds its images out of training and data_source says so (or that
    # the split was too small to spare them); before, the check judged on the first n trained-on images
    if isinstance(n, int) and n > 0 and isinstance(source, str) and 'fusion check' not in source:
        rows = (run_info.get('data') or {}).get('train_rows')
        notes.append(f'`fusion_check_images`: this run trained on all {rows or "the"} training images and its '
                     f'fusion check judged on the first {n} of them, trained on too; since commit 12a87af those '
                     f'images are held out of training (at most a tenth of the split), so today\'s code trains on '
                     f'fewer images and may choose another fusion')
    return notes


def _recipe_section(repo_id: str, recipe: Dict, run_info: Dict, commit: str) -> str:
    """The card's recipe: the commit whose code reproduces it, the keys that changed meaning since, the YAML."""
    clean = commit[:-len('-dirty')] if commit.endswith('-dirty') else commit
    if commit == 'unknown':
        lead = ('The git commit of the code that trained this release is unknown (train_ff.py ran outside a git '
                'checkout), so nothing pins the code that reproduces it. ')
    else:
        lead = (f'Trained at git commit `{clean}`' + (' with uncommitted changes (not recorded)'
                                                      if clean != commit else '') +
                f': with the code of that commit (`git checkout {clean}`), `train_ff.py -c hf-hub:{repo_id}` '
                're-runs this recipe, which is stored in config.json under `timm_ff.recipe`. ')
    notes = changed_recipe_keys(recipe, run_info)
    changed = ('Recipe keys whose meaning changed since, so that later code does not reproduce this release '
               'from the recipe as it stands: ' + '; '.join(notes) + '.') if notes else \
        'No recipe key is known to have changed meaning between that commit and the code that wrote this card.'
    return '\n'.join([
        '### Recipe\n',
        lead + changed + '\n',
        f'```yaml\n# trained at git commit {commit}\n'
        f'{scrub_paths(yaml.safe_dump(recipe, sort_keys=True).rstrip())}\n```\n',
    ])


def _card_training(repo_id: str, recipe: Dict, run_info: Dict, metrics: Dict) -> str:
    """The card's "Training" section: command, git commit, versions and the recipe section."""
    commit = run_info.get('git_commit') or metrics.get('git_commit') or 'unknown'
    return '\n'.join([
        '## Training\n',
        'Produced by this command:\n',
        f'```\n{scrub_paths(run_info.get("command", "-"))}\n```\n',
        f'at git commit `{commit}` (timm_ff {run_info.get("timm_ff_version", "?")}, '
        f'timm {run_info.get("timm_version", "?")}, torch {run_info.get("torch_version", "?")}).\n',
        _recipe_section(repo_id, recipe, run_info, commit),
    ])


def _card_files(weights: Path) -> str:
    """The card's "Files" section with the weights' size and sha256, and the "License" section."""
    return '\n'.join([
        '## Files\n',
        f'- `{WEIGHTS_NAME}`: {weights.stat().st_size} bytes, sha256 `{sha256_file(weights)}`',
        f'- `{CONFIG_NAME}`: timm\'s config (architecture, num_classes, pretrained_cfg, model_args) plus the '
        '`timm_ff` block (recipe, run_info, metrics)\n',
        'Both are timm\'s own format (`timm.models.save_for_hf` with safetensors); no pickled weights are '
        'published.\n',
        '## License\n',
        f'The weights are released under the Apache License 2.0 ({LICENSE}), like the timm_ff code. '
        'The training data keep their own terms.\n',
    ])


def model_card(run_dir: PathLike, repo_id: Optional[str] = None) -> str:
    """The model card (README.md text) of a finished run folder or of an upload folder.

    Args:
        run_dir: A run folder (config.json with the ``timm_ff`` block, model.safetensors, and
            optionally metrics.json / run_info.json) or a folder built by :func:`build_upload_folder`.
        repo_id: The Hub repo the card is for (default ``{HUB_ORG}/{folder name}``).
    """
    run = Path(run_dir)
    cfg = _read_model_config(run)
    repo_id = repo_id or f'{HUB_ORG}/{run.resolve().name}'
    recipe, run_info, metrics = _run_facts(run, cfg)
    return '\n'.join([
        _front_matter(_dataset_hub_id(recipe)),
        f'# Model card for {repo_id.split("/")[-1]}\n',
        _card_details(run, cfg, recipe, run_info, metrics),
        '## Model Usage\n',
        _usage(repo_id, cfg['architecture']),
        '## Metrics\n',
        'Top-1 accuracy on the eval split; "fused" is the model\'s output, which combines the units.\n',
        _metrics_table(metrics),
        _card_training(repo_id, recipe, run_info, metrics),
        _card_files(run / WEIGHTS_NAME),
    ])
