#!/usr/bin/env python3
"""Train a timm_ff model layer-locally (DTG-FF, classic FF) or end to end (BP, BP-DeepSup).

    accelerate launch train_ff.py --model dtgff_resnet18 --dataset cifar10
    accelerate launch train_ff.py -c hub_configs/dtgff_cnn_s.cifar10.yaml --data-dir ../shared/data/cifar10-jpeg
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train_ff.py --model ff_cnn_s

A recipe (``-c``) sets the defaults, flags override it, unknown recipe keys are errors. Each run
writes ``recipe.yaml``, ``run_info.json``, checkpoints, logs, ``model.safetensors`` + ``config.json``
and, last, ``metrics.json`` into ``--output``.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

DEFAULT_OUTPUT_ROOT = 'output/train'


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('-c', '--config', default='', help='recipe YAML or hf-hub:ORG/NAME (keys are the argument names below)')
    g = p.add_argument_group('model and objective')
    g.add_argument('--model', default='dtgff_cnn_s', help='timm_ff model name, optionally with a pretrained tag')
    g.add_argument('--model-kwargs', default={}, type=json.loads, help='JSON dict of model kwargs (DTG-FF switches)')
    g.add_argument('--objective', default='', help="dtg, ff, bp or bp_deepsup (default: the model's natural one)")
    g.add_argument('--objective-kwargs', default={}, type=json.loads, help='JSON dict of objective kwargs')
    g.add_argument('--method', default='', help='a named local-learning method (a cited preset of objective, kwargs and '
                        'recipe keys; flags given here win): see --list-methods')
    g.add_argument('--list-methods', action='store_true', help='print the registered methods and exit')
    g.add_argument('--import', dest='imports', nargs='+', default=[], metavar='MODULE',
                   help='Python modules to import before anything is built: they may register timm models, '
                        'objectives (timm_ff.register_objective) and goodness modes (timm_ff.register_goodness)')
    g.add_argument('--pretrained', action='store_true', help="start from the tag's published weights")
    g.add_argument('--initial-checkpoint', default='', help='safetensors file, run folder or hf-hub:ORG/NAME to start from')
    g.add_argument('--linear-probe', action='store_true',
                   help='train only the classifier (every unit head projection + fusion weights) on frozen features')
    g = p.add_argument_group('data')
    g.add_argument('--dataset', default='cifar10', help='registered dataset name (see timm_ff.data.list_datasets)')
    g.add_argument('--dataset-kwargs', default={}, type=json.loads,
                   help='JSON dict of parameters of a generated dataset (synthetic, synthetic_vector: num_classes, '
                        'train_per_class, test_per_class, teacher_depth, teacher_width, label_noise, seed, vector_dim)')
    g.add_argument('--data-dir', default='', help='local HF parquet folder or imagefolder instead of the Hub')
    g.add_argument('--label-column', default='', help='label column (e.g. coarse_label for CIFAR-100/20)')
    g.add_argument('--image-column', default='', help='image column (auto-detected by default)')
    g.add_argument('--train-split', default='', help='train split name')
    g.add_argument('--eval-split', default='', help='eval split name')
    g.add_argument('--holdout', default=0.0, type=float,
                   help='evaluate on this fraction of the train split (class-stratified, fixed seed) instead of the '
                        'eval split, e.g. 0.25 for Omniglot, which has one split (0: off)')
    g.add_argument('--max-per-class', default=0, type=int,
                   help='keep only the first N training images of each class (0: all)')
    g.add_argument('--classes', default=None, type=parse_classes,
                   help='keep some classes and renumber them: N (the first N), a JSON list of class ids or names, or '
                        'a JSON dict {group: [classes]} giving one label per group (e.g. vehicles vs animals)')
    g.add_argument('--in-chans', default=0, type=int, help='input channels (default: from the dataset)')
    g.add_argument('--workers', default=0, type=int, help='DataLoader worker processes per process (pil path)')
    g.add_argument('--data-pipeline', default='auto', choices=['auto', 'tensor', 'pil'],
                   help='tensor: decode once, keep in memory, augment per batch on the device; pil: per-image timm '
                        'transforms in a DataLoader; auto: tensor where the images have one size and fit in memory')
    g.add_argument('--aug', default='crop_flip', choices=['crop_flip', 'rrc', 'none'],
                   help='training crop: crop_flip (random crop of the zero-padded image, the CIFAR recipe), '
                        'rrc (RandomResizedCrop with --aug-scale), none; each followed by --hflip')
    g.add_argument('--crop-padding', default=4, type=int, help='zero padding in pixels for --aug crop_flip')
    g.add_argument('--aug-scale', default=(0.35, 1.0), type=float, nargs=2, help='RandomResizedCrop scale range (--aug rrc)')
    g.add_argument('--hflip', default=0.5, type=float, help='horizontal flip probability')
    g.add_argument('--color-jitter', default=0.0, type=float,
                   help='colour jitter strength j (0: off): brightness, contrast and saturation factors drawn per image '
                        'from [max(0, 1-j), 1+j], after crop and flip, with every --aug on both data paths')
    g = p.add_argument_group('optimisation')
    g.add_argument('--epochs', default=2, type=int, help='epochs')
    g.add_argument('--batch-size', default=64, type=int, help='batch size per process')
    g.add_argument('--eval-batch-size', default=0, type=int, help='eval batch size (0: --batch-size)')
    g.add_argument('--lr', default=2e-3, type=float, help='peak learning rate')
    g.add_argument('--weight-decay', default=5e-4, type=float, help='decoupled weight decay')
    g.add_argument('--opt', default='adamw', help='timm optimizer name')
    g.add_argument('--layer-decay', default=0.0, type=float,
                   help="per-unit learning rates (timm's layer-wise lr decay over the model's group_matcher): every "
                        "parameter of unit u (body, head, and for unit 0 the stem and label code) trains at "
                        "lr * decay**(last unit - u), the last unit and the fusion at lr (0: off, every unit at lr)")
    g.add_argument('--sched', default='cosine', help="timm scheduler name ('none' for a constant lr)")
    g.add_argument('--warmup-epochs', default=0, type=int, help='linear warm-up epochs')
    g.add_argument('--min-lr', default=1e-5, type=float, help='final learning rate of the schedule')
    g.add_argument('--clip-grad', default=0.0, type=float, help='max grad norm, per unit (0: off)')
    g.add_argument('--grad-accum-steps', default=1, type=int, help='micro-batches per optimiser step')
    g.add_argument('--mixed-precision', default='no', choices=['no', 'bf16', 'fp16'], help='autocast precision')
    g.add_argument('--sync-bn', action='store_true', help='synchronise BatchNorm statistics across processes (DDP)')
    g.add_argument('--fsdp', action='store_true',
                   help='shard every local unit with FSDP2 (fully_shard) over the processes of a data-parallel launch: '
                        'how FSDP runs on CPU, e.g. ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 '
                        'train_ff.py --fsdp; automatic under accelerate launch --use_fsdp --fsdp_version 2 (GPUs)')
    g.add_argument('--local-backward', default='summed', choices=['summed', 'per_unit'],
                   help='summed: one backward over all unit losses; per_unit: stream units, one backward each')
    g.add_argument('--seed', default=0, type=int, help='seed (data order, augmentation, init)')
    g.add_argument('--fusion-check-images', default=2500, type=int,
                   help='hold out this many training images (class-stratified, at most a tenth of the train split, '
                        'never trained on); after training, check the fusion against each unit (and the mean of the '
                        'last few) on them and keep the most accurate (0: off, nothing held out)')
    g.add_argument('--eval-every', default=1, type=int,
                   help='evaluate after every N-th epoch and after the last (classic FF scores every label: an eval '
                        'of the full CIFAR-10 test set is 100k forward passes)')
    g.add_argument('--compile', action='store_true', help='torch.compile each unit (eager with a warning if it cannot)')
    g.add_argument('--channels-last', action='store_true', help='channels_last memory format for weights and batches')
    g.add_argument('--max-train-steps', default=0, type=int, help='stop after N optimiser steps (0: no limit)')
    g.add_argument('--unit-micro-batches', default={}, type=json.loads,
                   help='JSON {unit: chunks}: that unit processes each batch in equal chunks, accumulating its '
                        'gradients (per_unit mode), e.g. \'{"0": 4}\' to bound a high-resolution unit\'s memory')
    g = p.add_argument_group('pipeline (one process per stage, units trained concurrently; see timm_ff/pipeline.py)')
    g.add_argument('--pipeline-stages', default=0, type=int,
                   help='split the units over this many processes (0: off); launch with as many processes')
    g.add_argument('--pipeline-split', default='', help="units per stage, e.g. '0-2,3-7' (default: balanced from "
                                                        'a short profiling pass)')
    g.add_argument('--pipeline-window', default=2, type=int, help='batches a stage may run ahead of the next one')
    g.add_argument('--pipeline-timeout', default=120.0, type=float,
                   help='seconds a stage waits for another before giving up (a failed stage ends the rest)')
    g = p.add_argument_group('outputs')
    g.add_argument('--output', default='', help=f'run folder (default: {DEFAULT_OUTPUT_ROOT}/<model>-<objective>-<time>)')
    g.add_argument('--resume', default='', help='run folder or checkpoint folder to continue from')
    g.add_argument('--checkpoint-steps', default=0, type=int, help='also checkpoint every N optimiser steps')
    g.add_argument('--keep-checkpoints', default=2, type=int, help='checkpoints to keep')
    g.add_argument('--log-with', default='jsonl', choices=['jsonl', 'tensorboard', 'none'], help='Accelerate tracker')
    g.add_argument('--log-every', default=20, type=int, help='log every N optimiser steps')
    g.add_argument('--no-progress', action='store_true', help='no tqdm bar')
    g = p.add_argument_group('hub')
    g.add_argument('--push-to-hub', default='', metavar='ORG/NAME', help='publish the finished run to this Hub repo')
    g.add_argument('--hub-private', action='store_true', help='create the Hub repo private')
    g.add_argument('--hub-revision', default='', help='Hub branch to push to (created if missing; default main)')
    return p


def parse_classes(text: str):
    """``--classes``: an integer N, or a JSON list / dict of classes."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f'{text!r} is neither a number of classes nor a JSON list or dict of '
                                         'classes (e.g. 5, \'["cat", "dog"]\', \'{"vehicle": [0, 1, 8, 9], '
                                         '"animal": [2, 3, 4, 5, 6, 7]}\')') from None


# recipe keys that only make sense on a command line
_NOT_IN_RECIPE = ('config', 'resume', 'output', 'push_to_hub', 'hub_private', 'hub_revision', 'list_methods')


def parse_args(argv=None) -> argparse.Namespace:
    from timm_ff.recipe import check_recipe_keys, load_recipe
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    resumed = resumed_recipe(pre.resume) if pre.resume else None
    if resumed is not None:  # a resumed run keeps its model: the run's recipe gives the model's defaults
        parser.set_defaults(**{k: v for k, v in resumed[1].items() if k in _MODEL_SHAPE})
    if pre.config:
        from timm_ff.hub import fetch_recipe
        recipe = load_recipe(str(fetch_recipe(pre.config)))
        dests = {a.dest for a in parser._actions} - set(_NOT_IN_RECIPE) - {'help'}
        check_recipe_keys(recipe, dests, pre.config)
        parser.set_defaults(**recipe)
    method = method_defaults(parser, pre, argv)
    args = parser.parse_args(argv)
    for key in ('model_kwargs', 'objective_kwargs', 'dataset_kwargs', 'unit_micro_batches'):
        if isinstance(getattr(args, key), str):
            setattr(args, key, json.loads(getattr(args, key)))
    if method is not None:  # the method's kwargs under the command line's, over the recipe's
        for key in ('model_kwargs', 'objective_kwargs'):
            given = getattr(pre, key)
            given = json.loads(given) if isinstance(given, str) else given
            recipe_value = parser.get_default(key) if not given else {}
            setattr(args, key, {**(recipe_value or {}), **getattr(method, key), **(given or {})})
    if resumed is not None:
        check_resumed_model(args, *resumed)
    return args


def method_defaults(parser: argparse.ArgumentParser, pre: argparse.Namespace, argv=None):
    """Apply ``--method``'s objective and recipe keys as defaults (flags given on the command line still win)."""
    name = pre.method or parser.get_default('method')
    if not name:
        return None
    import_user_modules(pre.imports or parser.get_default('imports'))
    from timm_ff.methods import get_method
    method = get_method(name)
    dests = {a.dest for a in parser._actions}
    for key in method.recipe:
        if key not in dests:
            raise ValueError(f'method {name!r} sets {key!r}, which is not a train_ff.py argument')
    parser.set_defaults(objective=method.objective, **method.recipe)
    return method


# recipe keys that fix the model's shape: a resumed run must keep its own (its checkpoint holds that model)
_MODEL_SHAPE = ('model', 'model_kwargs', 'in_chans')


def _run_folder(resume: str):
    """The run folder ``--resume`` continues (it names the run or one of its checkpoints/step_* folders)."""
    from timm_ff.trainer import CHECKPOINT_DIR
    path = Path(resume)
    return path.parent.parent if path.parent.name == CHECKPOINT_DIR and not (path / 'recipe.yaml').is_file() else path


def resumed_recipe(resume: str):
    """``(path, recipe)`` of the recipe.yaml of the run ``--resume`` continues, or None if it has none."""
    from timm_ff.recipe import load_recipe
    path = _run_folder(resume) / 'recipe.yaml'
    return (path, load_recipe(str(path))) if path.is_file() else None


def _shown(key: str, value) -> str:
    """A model-shape value as a user would type it."""
    if key == 'model_kwargs':
        return json.dumps(value, sort_keys=True)
    return '0 (from the dataset)' if key == 'in_chans' and value == 0 else str(value)


def check_resumed_model(args, recipe_path: Path, recipe: dict) -> None:
    """A ``--resume`` asking for another model than the run's (its checkpoint would not fit) is one error line."""
    from timm_ff.errors import ConfigError
    for key in _MODEL_SHAPE:
        if key in recipe and getattr(args, key) != recipe[key]:
            flag = f"--{key.replace('_', '-')}"
            raise ConfigError(f'--resume {args.resume}: the run was trained with {flag} {_shown(key, recipe[key])} '
                              f'({recipe_path}), but this command gives {flag} {_shown(key, getattr(args, key))}; '
                              f'drop {flag} (a resumed run keeps the model of its recipe) or start a new run '
                              'with another --output and no --resume')


def check_launch(accelerator, args) -> None:
    """Two launches that would run something other than what was asked are one error line each (before any work)."""
    from accelerate.utils import DistributedType, parse_flag_from_env
    from timm_ff.errors import LaunchError
    world = int(os.environ.get('WORLD_SIZE', '1') or 1)
    if accelerator.num_processes == 1 and world > 1:
        raise LaunchError(f'this is one of {world} launched processes (WORLD_SIZE={world}), but Accelerate formed no '
                          f'process group ({accelerator.distributed_type}): each would train alone into the same '
                          'folder. Without GPUs launch with ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu '
                          f'--num_processes {world} train_ff.py ... (add --fsdp to shard the units with FSDP2)')
    if parse_flag_from_env('ACCELERATE_USE_FSDP') and accelerator.distributed_type != DistributedType.FSDP \
            and not args.fsdp:
        raise LaunchError(f'FSDP was asked for (accelerate launch --use_fsdp sets ACCELERATE_USE_FSDP), but Accelerate '
                          f'runs {accelerator.distributed_type} on {accelerator.device.type}: its FSDP plugin needs GPUs. '
                          'On CPU shard the units with FSDP2 yourself: ACCELERATE_USE_CPU=1 accelerate launch '
                          f'--multi_gpu --num_processes {max(world, 2)} train_ff.py --fsdp ...')


def check_resumed_classes(resume: str, num_classes: int) -> None:
    """A ``--resume`` whose data has another class count than the run's (run_info.json) is one error line."""
    from timm_ff.errors import ConfigError
    info_path = _run_folder(resume) / 'run_info.json'
    try:
        trained = json.loads(info_path.read_text())['data']['num_classes']
    except (OSError, ValueError, KeyError, TypeError):
        return  # an older run without the record: the checkpoint load reports a mismatch
    if trained != num_classes:
        raise ConfigError(f'--resume {resume}: the run was trained on {trained} classes ({info_path}), but this '
                          f'command gives data with {num_classes}; pass the run\'s --dataset, --classes and '
                          '--label-column (see its recipe.yaml) or start a new run with another --output and no '
                          '--resume')


def check_args(args):
    from timm_ff.errors import ConfigError
    for key in ('epochs', 'batch_size', 'grad_accum_steps'):
        if getattr(args, key) < 1:
            raise ConfigError(f'--{key.replace("_", "-")} must be a positive integer, got {getattr(args, key)}')
    if not args.lr > 0:
        raise ConfigError(f'--lr must be > 0, got {args.lr}')
    if not args.layer_decay >= 0:
        raise ConfigError(f'--layer-decay must be >= 0 (0: off), got {args.layer_decay}')
    # argparse checks choices only for values typed on the command line, not for recipe defaults
    for key, allowed in (('data_pipeline', ('auto', 'tensor', 'pil')), ('aug', ('crop_flip', 'rrc', 'none')),
                         ('local_backward', ('summed', 'per_unit')), ('mixed_precision', ('no', 'bf16', 'fp16'))):
        if getattr(args, key) not in allowed:
            raise ConfigError(f"unknown --{key.replace('_', '-')} {getattr(args, key)!r}; allowed: {', '.join(allowed)}")
    if args.fusion_check_images < 0:
        raise ConfigError(f'--fusion-check-images must be >= 0, got {args.fusion_check_images}')
    if isinstance(args.eval_every, bool) or not isinstance(args.eval_every, int) or args.eval_every < 1:
        raise ConfigError(f'--eval-every must be a positive number of epochs, got {args.eval_every!r}')
    if not isinstance(args.crop_padding, int) or isinstance(args.crop_padding, bool) or args.crop_padding < 0:
        raise ConfigError(f'--crop-padding must be a non-negative integer number of pixels, got {args.crop_padding!r}')
    if args.pipeline_stages < 0 or args.pipeline_window < 1 or not args.pipeline_timeout > 0:
        raise ConfigError(f'--pipeline-stages must be >= 0, --pipeline-window >= 1 and --pipeline-timeout > 0; got '
                          f'{args.pipeline_stages}, {args.pipeline_window}, {args.pipeline_timeout}')
    if args.pipeline_split and not args.pipeline_stages:
        raise ConfigError(f'--pipeline-split {args.pipeline_split!r} needs --pipeline-stages')
    for key in ('model_kwargs', 'objective_kwargs', 'dataset_kwargs', 'unit_micro_batches'):
        if not isinstance(getattr(args, key), dict):
            raise ConfigError(f'--{key.replace("_", "-")} must be a JSON object, got {getattr(args, key)!r}')


def check_push_target(args) -> None:
    """What ``--push-to-hub`` needs that is known before training: a valid repo id and the Hub not switched off."""
    from huggingface_hub import constants
    from timm_ff.errors import HubError
    from timm_ff.hub import check_repo_id
    check_repo_id(args.push_to_hub)
    if constants.HF_HUB_OFFLINE:
        later = f'python -m timm_ff.hub push RUN_FOLDER {args.push_to_hub}' + (' --private' if args.hub_private else '') \
            + (f' --revision {args.hub_revision}' if args.hub_revision else '')
        raise HubError(f'--push-to-hub {args.push_to_hub}: HF_HUB_OFFLINE=1 is set, so the finished run could not be '
                       'uploaded; unset HF_HUB_OFFLINE to push it, or drop --push-to-hub and publish the run later '
                       f'with {later}')


def import_user_modules(names) -> None:
    """Import the ``--import`` modules (from the working folder or the Python path) so what they register exists."""
    import importlib

    from timm_ff.errors import ConfigError
    names = [names] if isinstance(names, str) else list(names or [])
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f'--import {name!r}: cannot import it ({e}); name a module on the Python path or a '
                              '.py file in the working folder, without the .py (e.g. --import my_rules)') from e


def git_commit() -> str:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=here, capture_output=True, text=True, timeout=10)
        changed = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=here,
                                 capture_output=True, text=True, timeout=10).stdout.splitlines()
        # results files written by an earlier benchmark of the same batch do not change the code that trains
        dirty = [line for line in changed if line.strip() and not line[3:].startswith('benchmarks/results/')]
        return out.stdout.strip() + ('-dirty' if dirty else '') if out.returncode == 0 else 'unknown'
    except (OSError, subprocess.SubprocessError):
        return 'unknown'


def build_model(args, num_classes: int, in_chans: int):
    import timm
    import timm_ff
    from timm.models import split_model_name_tag
    from timm_ff.errors import ConfigError
    arch, _ = split_model_name_tag(args.model)
    ff_models = timm.list_models(['ff_*', 'dtgff_*'])
    if arch not in ff_models:
        raise ConfigError(f"unknown model {args.model!r}; timm_ff models: {', '.join(ff_models)}")
    from timm_ff.hub import create_pretrained
    create = create_pretrained if args.pretrained else timm.create_model
    try:
        model = create(args.model, num_classes=num_classes, in_chans=in_chans, **args.model_kwargs)
    except TypeError as e:
        raise ConfigError(f'bad --model-kwargs for {args.model}: {e}') from e
    if args.initial_checkpoint:
        from timm_ff.hub import load_initial_checkpoint
        load_initial_checkpoint(model, args.initial_checkpoint)
    if not isinstance(model, timm_ff.FFNet):
        raise ConfigError(f'{args.model!r} is not a timm_ff model')
    return model


def describe_data(data, name: str, train_loader, eval_loader) -> dict:
    """What a model card records about the data: name, kind, splits, sizes and content hashes (no paths)."""
    kind = ('bundled sample' if data.is_sample else 'local parquet' if data.source.startswith('local parquet')
            else 'local image folder' if data.source.startswith('local image')
            else 'generated (timm_ff.synthetic)' if data.source.startswith('synthetic') else 'Hugging Face Hub')
    info = dict(name=name or 'local', kind=kind, label_column=data.label_column, num_classes=data.num_classes)
    for key, split, loader in (('train', data.train, train_loader), ('eval', data.eval, eval_loader)):
        info[f'{key}_split'] = str(split.split) if split.split is not None else key
        info[f'{key}_rows'] = len(split)
        info[f'{key}_fingerprint'] = split._fingerprint
        digest = getattr(getattr(loader, 'dataset', None), 'content_hash', '')
        if digest:
            info[f'{key}_content_hash'] = f'blake2b-128:{digest}'
    if data.check is not None:
        info['fusion_check_rows'] = len(data.check)  # held out of the train split, never trained on
    return info


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list_methods:
        import timm_ff  # noqa: F401  (registers the built-in methods)
        from timm_ff.methods import method_table
        import_user_modules(args.imports)
        print(method_table())
        return 0
    check_args(args)
    if args.push_to_hub:
        check_push_target(args)  # fail before training, not after
    import timm
    import torch
    from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs, PartialState
    from accelerate.utils import InitProcessGroupKwargs
    from accelerate.utils import broadcast_object_list, parse_flag_from_env, set_seed
    from timm.data import resolve_data_config
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    import timm_ff
    from timm_ff.data import batches_per_process, choose_pipeline, create_loaders, get_dataset_spec, load_image_datasets
    from timm_ff.errors import ConfigError, HubError
    from timm_ff.hub import save_model_folder
    from timm_ff.recipe import dump_recipe
    from timm_ff.trainer import JSONLinesTracker, LocalTrainer, write_json_atomic

    import_user_modules(args.imports)
    natural = 'ff' if timm.models.split_model_name_tag(args.model)[0].startswith('ff_') else 'dtg'
    args.objective = args.objective or natural
    objective = timm_ff.create_objective(args.objective, **args.objective_kwargs)
    if args.linear_probe and objective.label_embed:
        raise ConfigError(f'--linear-probe trains class heads on frozen features, but objective {args.objective!r} '
                          'has none (classic FF scores labels through the whole network); use dtg, bp or '
                          'bp_deepsup with a dtgff_* model')

    t_start = time.time()
    # the state is a singleton the Accelerator below reuses; without cpu= it ignores ACCELERATE_USE_CPU
    state = PartialState(cpu=parse_flag_from_env('ACCELERATE_USE_CPU'))
    output = args.output or args.resume or ''
    if not output:
        stamp = [time.strftime('%Y%m%d-%H%M%S')]
        if state.num_processes > 1:
            broadcast_object_list(stamp)  # every process must agree on the folder
        output = f'{DEFAULT_OUTPUT_ROOT}/{args.model}-{args.objective}-{stamp[0]}'
    out_dir = Path(output)
    if (out_dir / 'metrics.json').exists() and not args.resume:
        raise ConfigError(f'{out_dir} already holds a finished run (metrics.json); pick another --output '
                          'or pass --resume to continue it')
    trackers = {'jsonl': lambda: [JSONLinesTracker('train', str(out_dir))], 'tensorboard': lambda: ['tensorboard'],
                'none': lambda: None}
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.grad_accum_steps,
        # pinned batches (the PIL path pins on CUDA) move to the device without stopping the host
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=torch.cuda.is_available()),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=objective.find_unused_parameters),
                         # a pipeline stage waiting on a peer that is gone gives up after --pipeline-timeout
                         InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=args.pipeline_timeout))],
        log_with=trackers[args.log_with](),
        project_dir=str(out_dir),
    )
    check_launch(accelerator, args)
    if args.sync_bn and accelerator.num_processes < 2:
        raise ConfigError('--sync-bn synchronises BatchNorm across processes, but this run has 1 process; launch '
                          'with accelerate launch --multi_gpu --num_processes N (ACCELERATE_USE_CPU=1 on CPU) '
                          'or drop --sync-bn')
    set_seed(args.seed)

    spec = get_dataset_spec(args.dataset) if args.dataset else None
    with accelerator.main_process_first():
        data = load_image_datasets(
            args.dataset or None, data_dir=args.data_dir or None, label_column=args.label_column or None,
            image_column=args.image_column or None, train_split=args.train_split or None,
            eval_split=args.eval_split or None, dataset_kwargs=args.dataset_kwargs, holdout=args.holdout,
            max_per_class=args.max_per_class, classes=args.classes, check_images=args.fusion_check_images)
    accelerator.print(f'processes: {accelerator.num_processes} ({accelerator.distributed_type}), device {accelerator.device}')
    accelerator.print(f'data: {data.source}: {len(data.train)} train / {len(data.eval)} eval images, '
                      f'{data.num_classes} classes ({data.label_column})')
    in_chans = args.in_chans or (spec.in_chans if spec else 3)
    if args.resume:
        check_resumed_classes(args.resume, data.num_classes)  # before anything of the run is rewritten

    model = build_model(args, data.num_classes, in_chans)
    objective.check_model(model)
    objective.prepare_model(model)  # training-only modules (e.g. recon's decoders), before the optimiser
    if args.linear_probe:
        from timm_ff.probe import freeze_for_linear_probe
        trainable = freeze_for_linear_probe(model)
        accelerator.print(f'linear probe: training {len(trainable)} classifier tensors, the rest is frozen')
    if args.sync_bn:
        from timm_ff.layers import SyncBatchNorm, convert_sync_batchnorm
        model = convert_sync_batchnorm(model, accelerator.device)  # before prepare, like timm's train.py
        n_bn = sum(isinstance(m, (SyncBatchNorm, torch.nn.SyncBatchNorm)) for m in model.modules())
        accelerator.print(f'sync-bn: {n_bn} BatchNorm layers synchronised across {accelerator.num_processes} processes')
    if args.channels_last:
        from timm_ff.trainer import to_channels_last
        to_channels_last(model)
    data_config = resolve_data_config(model=model)
    pipeline, why = choose_pipeline(data, args.data_pipeline, in_chans)
    accelerator.print(f'data path: {why}')
    if args.pipeline_stages:
        from timm_ff.fsdp import fsdp_requested
        if fsdp_requested(accelerator, force=args.fsdp) is not None:
            raise ConfigError('--pipeline-stages puts whole units on different processes, FSDP shards every unit over '
                              'all of them: use one or the other (drop --fsdp / --use_fsdp, or --pipeline-stages)')
        from timm_ff.pipeline import check_pipeline
        check_pipeline(stages=args.pipeline_stages, num_processes=accelerator.num_processes,
                       num_units=len(model.local_units()), objective=objective, grad_accum_steps=args.grad_accum_steps,
                       mixed_precision=args.mixed_precision, data_pipeline=pipeline)
    # a pipeline's stage 0 draws every batch whole: its loaders are not sharded
    shard = (0, 1) if args.pipeline_stages else (accelerator.process_index, accelerator.num_processes)
    with accelerator.main_process_first():  # the first process writes the decoded cache, the others read it
        train_loader, eval_loader = create_loaders(
            data, data_config=data_config, batch_size=args.batch_size, eval_batch_size=args.eval_batch_size or None,
            num_workers=args.workers, in_chans=in_chans, seed=args.seed, pipeline=pipeline, aug=args.aug,
            crop_padding=args.crop_padding, device=accelerator.device, process_index=shard[0],
            num_processes=shard[1], channels_last=args.channels_last,
            train_transform_kwargs=dict(scale=tuple(args.aug_scale), hflip=args.hflip,
                                        color_jitter=args.color_jitter or None))
    fusion_check_loader = None
    if data.check is not None and len(model.fusion.fused_units) > 1:
        import dataclasses
        _, fusion_check_loader = create_loaders(
            dataclasses.replace(data, train=data.check, eval=data.check), data_config=data_config,
            batch_size=args.eval_batch_size or args.batch_size, num_workers=args.workers, in_chans=in_chans,
            drop_last=False, pipeline=pipeline, device=accelerator.device, process_index=shard[0],
            num_processes=shard[1], channels_last=args.channels_last)
    for note in dict.fromkeys(getattr(ld, 'cache_note', '') for ld in (train_loader, eval_loader)):
        if note:
            accelerator.print(f'data cache: {note}')
    try:
        optimizer = create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                        layer_decay=args.layer_decay or None)
    except (AssertionError, ValueError) as e:
        raise ConfigError(f"unknown --opt {args.opt!r}; allowed: {', '.join(timm.optim.list_optimizers())}") from e
    for group in optimizer.param_groups:  # a scheduler scales from initial_lr each step; the first step and
        group['initial_lr'] = group['lr']  # --sched none use lr, so it starts at the unit's own lr too
        group['lr'] *= group.get('lr_scale', 1.0)
    updates_per_epoch = max(1, batches_per_process(train_loader, shard[1]) // args.grad_accum_steps)

    def make_scheduler(opt):
        if args.sched == 'none':
            return None
        try:
            sched, _ = create_scheduler_v2(opt, sched=args.sched, num_epochs=args.epochs,
                                           warmup_epochs=args.warmup_epochs, min_lr=args.min_lr,
                                           updates_per_epoch=updates_per_epoch, step_on_epochs=False)
        except (AssertionError, ValueError) as e:
            raise ConfigError(f'bad --sched {args.sched!r}: {e}') from e
        if sched is None:
            raise ConfigError(f"unknown --sched {args.sched!r}; try cosine, step, multistep, plateau, poly, tanh or none")
        return sched
    # built here even in a pipeline (where each stage builds its own) so a bad --sched fails before training
    scheduler = make_scheduler(optimizer)

    recipe = dump_recipe(args, skip=_NOT_IN_RECIPE)
    run_info = dict(command=' '.join([Path(sys.argv[0]).name] + sys.argv[1:]), git_commit=git_commit(),
                    timm_ff_version=timm_ff.__version__, timm_version=timm.__version__,
                    torch_version=torch.__version__, data_source=data.source, started=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(t_start)),
                    num_processes=accelerator.num_processes, device=str(accelerator.device),
                    data=describe_data(data, args.dataset, train_loader, eval_loader))
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / 'recipe.yaml').write_text(yaml.safe_dump(recipe, sort_keys=True))
        write_json_atomic(out_dir / 'run_info.json', run_info)
    accelerator.wait_for_everyone()
    if args.log_with != 'none':
        accelerator.init_trackers('train', config={k: str(v) for k, v in recipe.items()})

    if args.compile:
        from timm_ff.trainer import compile_units
        why_not = compile_units(model.local_units())
        accelerator.print(f'warning: {why_not}; running eager' if why_not else 'compile: each unit compiled with torch.compile')
    common = dict(
        accelerator=accelerator, model=model, objective=objective, optimizer=optimizer,
        train_loader=train_loader, eval_loader=eval_loader, epochs=args.epochs, output_dir=out_dir,
        local_backward=args.local_backward, clip_grad=args.clip_grad or None,
        checkpoint_steps=args.checkpoint_steps, keep_checkpoints=args.keep_checkpoints, log_every=args.log_every,
        max_train_steps=args.max_train_steps, seed=args.seed, progress=not args.no_progress,
        fusion_check_loader=fusion_check_loader, micro_batches=args.unit_micro_batches, eval_every=args.eval_every)
    if args.pipeline_stages:
        from timm_ff.pipeline import PipelineTrainer, parse_split
        split = parse_split(args.pipeline_split, len(model.local_units()), args.pipeline_stages) \
            if args.pipeline_split else None
        trainer = PipelineTrainer(**common, make_scheduler=make_scheduler, split=split, window=args.pipeline_window,
                                  timeout_s=args.pipeline_timeout)
        accelerator.print('pipeline: ' + ', '.join(f'stage {g} units {a}-{b - 1}' for g, (a, b) in enumerate(trainer.split))
                          + f' (window {args.pipeline_window})')
    else:
        trainer = LocalTrainer(**common, scheduler=scheduler, fsdp=args.fsdp)
    metrics = trainer.fit(resume=args.resume or None)
    accelerator.wait_for_everyone()
    push_error = ''
    from timm_ff.hub.save import full_state_dict, is_sharded
    # FSDP shards are gathered with every process taking part; only the main process writes the folder
    metrics.update(local=objective.local, method=args.method or None)  # in config.json and the model card too
    state_dict = full_state_dict(model) if accelerator.is_main_process or is_sharded(model) else None
    if accelerator.is_main_process:
        save_model_folder(model, out_dir, state=state_dict,
                          extra_config={'timm_ff': dict(recipe=recipe, run_info=run_info,
                                                        metrics={k: v for k, v in metrics.items() if k != 'history'})})
        metrics.update(model=args.model, objective=args.objective, dataset=args.dataset, data_source=data.source,
                       seed=args.seed, git_commit=run_info['git_commit'])
        write_json_atomic(out_dir / 'metrics.json', metrics)  # written last: its presence marks a finished run
        accelerator.print(f"done: fused accuracy {metrics['accuracy']:.2f}% -> {out_dir}")
        if data.is_sample:
            accelerator.print(f'this trained on the bundled {len(data.train)}-image sample; for real results train on the '
                              f'full data: add --data-dir DIR (a local CIFAR-10 parquet folder, e.g. '
                              f'../shared/data/cifar10-jpeg) or go online for --dataset cifar10 from the Hub')
        if args.push_to_hub:
            push_error = _push(out_dir, args)
            if not push_error:
                accelerator.print(f'pushed to {args.push_to_hub}')
    accelerator.wait_for_everyone()
    accelerator.end_training()  # also tears down the process group: keep it last
    if push_error:
        raise HubError(push_error)
    return 0


def _push(out_dir: Path, args: argparse.Namespace) -> str:
    """Publish the finished run; on failure return the error with how to retry (the run stays as it is)."""
    from timm_ff.errors import HubError
    from timm_ff.hub import publish_run
    try:
        publish_run(out_dir, args.push_to_hub, private=args.hub_private, revision=args.hub_revision or None)
    except HubError as e:
        retry = ' --private' if args.hub_private else ''
        retry += f' --revision {args.hub_revision}' if args.hub_revision else ''
        return (f'{e}; the finished run is kept in {out_dir}: publish it later with '
                f'python -m timm_ff.hub push {out_dir} {args.push_to_hub}{retry}')
    return ''


def cli(argv=None) -> int:
    """Run :func:`main`; a user-input error becomes one ``error: ...`` line on stderr and exit code 2."""
    from timm_ff.errors import LaunchError, TimmFFError
    try:
        return main(argv)
    except KeyboardInterrupt:
        return 130
    except json.JSONDecodeError as e:
        print(f'error: a --*-kwargs value is not valid JSON: {e}', file=sys.stderr)
        return 2
    except TimmFFError as e:
        if not (isinstance(e, LaunchError) and os.environ.get('RANK', '0') != '0'):  # the same on every process
            print(f'error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
    sys.exit(cli())
