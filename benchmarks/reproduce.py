"""One command per results table: the benchmark commands that write its files, on a CPU or a GPU budget.

    python benchmarks/reproduce.py --list
    python benchmarks/reproduce.py cnn_s_gap --dry-run       # the commands of the committed CPU files
    python benchmarks/reproduce.py throughput --budget gpu   # the GPU form, written under a _gpu name

``--budget cpu`` (the default) runs the commands that made the committed ``benchmarks/results/*_cpu.json``
files, as each file records them (same script, recipe, flags, seeds and results name). Where a recipe file
has changed since a file was made, the command pins the old value with a flag (``run(..., pin=...)``, as
the classic FF runs pin their epochs and loss). The code is this checkout's: each file names the commit it was
made at, and ``--dry-run`` prints it.
``--budget gpu`` runs the GPU form: training tables on the full-budget ``hub_configs/*.yaml`` recipes (all
of the training split, autocast bf16), systems tables with their GPU flags, every file under a ``_gpu``
name, so no CPU file is overwritten. A table without a GPU form says why in one line.

``--data-dir`` (default ``../shared/data/cifar10-jpeg``) is the CIFAR-10 folder every command reads.
Commands run one after the other from the repository root; the first failure stops the table.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / 'benchmarks/results'
DEFAULT_DATA = '../shared/data/cifar10-jpeg'
DATA = '{data}'  # stands for the --data-dir folder in a command's arguments
BUDGETS = ('cpu', 'gpu')


@dataclass(frozen=True)
class Run:
    """One command: ``python <script> <args> <pin>``.

    Attributes:
        script: Path from the repository root.
        args: The arguments as the results file records them (``DATA`` for the CIFAR-10 folder).
        out: The results name it writes (``benchmarks/results/<out>.json``); None for a training run that
            a later command of the table records.
        pin: Arguments that restore what has changed since the file was made (a recipe value, the file's
            name when it was renamed afterwards).
        data_flag: The script's flag for the CIFAR-10 folder when ``args`` rely on its default (it is
            added only for a ``--data-dir`` other than the default).
    """
    script: str
    args: tuple = ()
    out: str | None = None
    pin: tuple = ()
    data_flag: str | None = None

    def argv(self, data_dir: str) -> list:
        args = [data_dir if a == DATA else a for a in (*self.args, *self.pin)]
        if self.data_flag and data_dir != DEFAULT_DATA:  # before a REMAINDER (--extra) that would swallow it
            at = args.index('--extra') if '--extra' in args else len(args)
            args[at:at] = [self.data_flag, data_dir]
        return [self.script, *args]


def run(line: str, out: str | None = None, pin: str = '', data_flag: str | None = None) -> Run:
    """A :class:`Run` from a shell-quoted ``'script args'`` line (``{data}``: the CIFAR-10 folder); ``out``
    defaults to the ``--name`` it passes."""
    script, *args = shlex.split(line)
    pinned = shlex.split(pin)
    names = [*args, *pinned]
    if out is None and '--name' in names:
        out = names[names.index('--name') + 1]
    return Run(script, tuple(args), out, tuple(pinned), data_flag)


GAP = 'benchmarks/bench_cifar10_gap.py'
R18 = f'{GAP} --recipe benchmarks/recipes/cifar10_resnet18_cpu.yaml'
R18_FULL = f'{GAP} --recipe benchmarks/recipes/cifar10_resnet18_full_cpu.yaml'
R18_BF16 = f'{GAP} --recipe benchmarks/recipes/cifar10_resnet18_bf16_cpu.yaml'
HUB_CNN_S = 'hub_configs/dtgff_cnn_s.cifar10.yaml'
HUB_RESNET18 = 'hub_configs/dtgff_resnet18.cifar10.yaml'
HUB_R18 = f'{GAP} --recipe {HUB_RESNET18}'
# that recipe streams units (per_unit), which the end-to-end objectives cannot: beside them every objective
# takes one backward over all unit losses (the same gradients), as on the CPU recipes
SUMMED = '--local-backward summed'
MNIST = '../shared/data/mnist'
AUDIT = 'benchmarks/bench_audit.py --model dtgff_resnet18'
IMAGENET_STEM = """--model-kwargs '{"stem": "imagenet"}' --img-size 224 --batch-size 64"""
SCREENS = {'branch': """--model-kwargs '{"goodness_at": "branch"}'""",
           'stage': """--model-kwargs '{"unit_size": "stage"}'""",
           'deeplr': '--lr 4e-3 --layer-decay 0.9'}
# the head screens of the bf16 ResNet-18 recipe: (name, objectives, train_ff.py flags); the goodness head is the
# default, and its dtg run there is bf16_accuracy's seed 0 (that recipe in bf16); infopro's bp_deepsup was not run
HEADS = (('resnet18_head_goodness', 'bp_deepsup', ''),
         ('resnet18_head_pred', 'dtg bp_deepsup', """--model-kwargs '{"head": "pred"}'"""),
         ('resnet18_head_dgl', 'dtg bp_deepsup', """--model-kwargs '{"head": "dgl"}'"""),
         ('resnet18_head_infopro', 'dtg', """--model-kwargs '{"head": "infopro"}'"""),
         ('resnet18_head_infopro_bp_deepsup', 'bp_deepsup', """--model-kwargs '{"head": "infopro"}'"""),
         ('resnet18_recon', 'dtg', """--objective-kwargs '{"recon": [5, 0]}'"""),
         # depth levers: the reconstruction term weighted towards the last units; Nøkland's pred heads on the last stage
         ('resnet18_recon_late', 'dtg', """--objective-kwargs '{"recon": [0, 2]}'"""),
         ('resnet18_head_mixed_pred', 'dtg',
          """--model-kwargs '{"head": ["goodness", "goodness", "goodness", "goodness", "goodness", "goodness", """
          """"pred", "pred"]}'"""),
         ('cifar10_resnet18_8ep', 'dtg bp_deepsup', '--epochs 8'))
# on the GPU recipe (all of CIFAR-10, 100 epochs) the goodness head under dtg and bp_deepsup is resnet18_full's
# cifar10_resnet18_full_gpu, and what the 8-epoch run asks (a budget longer than 3 epochs) is that recipe itself:
# neither is run again; each of these files' own command made all of its runs
HEADS_GPU = [(name, objectives, flags) for name, objectives, flags in HEADS
             if name not in ('resnet18_head_goodness', 'cifar10_resnet18_8ep')]

CLASSIC_CPU = {  # label: (run folder, train_ff.py arguments, arguments pinning what was the default then)
    'ff_mlp_mnist_20ep': ('benchmarks/runs/classic_ff/ff_mlp_mnist_20ep',
                          f'-c hub_configs/ff_mlp.mnist.yaml --data-dir {MNIST} --seed 0', '--epochs 20'),
    'ff_mlp_mnist_50ep': ('benchmarks/runs/release/ff_mlp.mnist',
                          f'-c hub_configs/ff_mlp.mnist.yaml --data-dir {MNIST} --seed 0', ''),
    'ff_cnn_s_cifar10_5ep': ('benchmarks/runs/release/ff_cnn_s.cifar10',
                             '-c hub_configs/ff_cnn_s.cifar10.yaml --data-dir {data} --seed 0', ''),
    # the README's first command under the loss that was its default then, and under SymBa
    'ff_resnet18_sample_threshold': ('benchmarks/runs/classic_ff/ff_resnet18_sample_threshold',
                                     '--model ff_resnet18', """--objective-kwargs '{"loss": "threshold"}'"""),
    'ff_resnet18_sample_symba': ('benchmarks/runs/classic_ff/ff_resnet18_sample_symba',
                                 """--model ff_resnet18 --objective-kwargs '{"loss":"symba"}'""", ''),
    'dtgff_mlp_mnist_10ep': ('benchmarks/runs/release/dtgff_mlp.mnist',
                             f'-c hub_configs/dtgff_mlp.mnist.yaml --data-dir {MNIST} --seed 0', ''),
}
CLASSIC_GPU = {  # label: (run folder, train_ff.py arguments): the full-budget recipes
    'ff_mlp_mnist': ('ff_mlp.mnist', f'--data-dir {MNIST}'),
    'ff_cnn_s_cifar10': ('ff_cnn_s.cifar10', '--data-dir {data}'),
    'ff_resnet18_cifar10': ('ff_resnet18.cifar10', '--data-dir {data}'),
    'dtgff_mlp_mnist': ('dtgff_mlp.mnist', f'--data-dir {MNIST}'),
}
CLASSIC_NOTE = ('Classic FF (ff_* models: label code in the input, positive and negative passes, eval '
                'scores every label) with dtgff_mlp beside it, from benchmarks/reproduce.py classic_ff')


def record(name: str, note: str, folders: dict) -> Run:
    runs = ' '.join(f'--run {label}={folder}' for label, folder in folders.items())
    return run(f'benchmarks/record_runs.py --name {name} --note {shlex.quote(note)} {runs}')


def classic(budget: str) -> list:
    if budget == 'cpu':
        runs = [run(f'train_ff.py {args} --output {folder} --no-progress', pin=pin)
                for folder, args, pin in CLASSIC_CPU.values()]
        return runs + [record('classic_ff_cpu', f'{CLASSIC_NOTE} (CPU budget).',
                              {label: v[0] for label, v in CLASSIC_CPU.items()})]
    folders = {label: f'benchmarks/runs/classic_ff_gpu/{tag}' for label, (tag, _) in CLASSIC_GPU.items()}
    runs = [run(f'train_ff.py -c hub_configs/{tag}.yaml {data} --mixed-precision bf16 --seed 0 '
                f'--output {folders[label]} --no-progress') for label, (tag, data) in CLASSIC_GPU.items()]
    return runs + [record('classic_ff_gpu', f'{CLASSIC_NOTE} (GPU budget: hub_configs, bf16).', folders)]


def audit(budget: str) -> list:
    """The same configurations on both budgets; on a GPU the peak is the CUDA allocator's."""
    return [run(f'{AUDIT} {args} --name {name}_{budget}', data_flag='--data-dir')
            for name, args in (('audit_resnet18_cifar', '--batch-size 256'),
                               ('audit_resnet18_imagenet', IMAGENET_STEM),
                               ('audit_resnet18_imagenet_micro',
                                f'{IMAGENET_STEM} --configs bp bp_accum dtg_per_unit dtg_per_unit_micro'))]


HALF = 'benchmarks/bench_half_weights.py'
TRANSFER = ('benchmarks/bench_transfer.py --transfer-runs probe_ff_pretrained probe_random_init '
            'finetune_ff_pretrained')
THROUGHPUT = 'benchmarks/bench_throughput.py'
METHODS = 'benchmarks/bench_methods.py'

# table -> (what it measures, {budget: its commands, or why it has no form on that budget})
TABLES = {
    'cnn_s_gap': ('dtgff_cnn_s on CIFAR-10: dtg vs bp_deepsup vs bp, one recipe', {
        'cpu': [run(f'{GAP} --data-dir {{data}} --jobs 2', 'cifar10_gap_cpu'),
                run(f'{GAP} --data-dir {{data}} --jobs 2 --name cifar10_gap_cpu_batch64 --extra --batch-size 64',
                    'cifar10_gap_cpu_batch64'),
                *[run(f'{GAP} --data-dir {{data}} --objectives dtg bp_deepsup --jobs 1 --threads 1 '
                      f'--seed {s} --name cifar10_gap_seed{s}_cpu') for s in (0, 1)]],
        'gpu': [run(f'{GAP} --recipe {HUB_CNN_S} --data-dir {{data}} --objectives dtg bp_deepsup bp '
                    f'--seed {s} --name cifar10_gap_seed{s}_gpu --extra --mixed-precision bf16')
                for s in (0, 1)]}),
    'ablation': ('dtgff_cnn_s under dtg with each DTG part switched off, two seeds', {
        'cpu': [run('benchmarks/bench_ablation.py --data-dir {data} --seeds 0 1 --jobs 2 --threads 1', 'ablation_cpu')],
        'gpu': [run(f'benchmarks/bench_ablation.py --recipe {HUB_CNN_S} --data-dir {{data}} --seeds 0 1 '
                    '--name ablation_gpu --extra --mixed-precision bf16')]}),
    'resnet18_gap': ('the named ResNets on 10k CIFAR-10 images: dtgff_resnet18 (3 objectives), ff_resnet18', {
        'cpu': [run(f'{R18} --objectives dtg bp_deepsup --name cifar10_resnet18_headnorm_cpu '
                    '--runs-dir benchmarks/runs/r18 --jobs 2 --data-dir {data} --extra --eval-every 3 '
                    """--model-kwargs '{"head_norm": "batchnorm"}'"""),
                *[run(f'{R18} --objectives {obj} --name cifar10_resnet18_{name}_cpu '
                      '--runs-dir benchmarks/runs/r18 --jobs 1 --threads 1 --data-dir {data} '
                      '--extra --eval-every 3 --checkpoint-steps 50')
                  for obj, name in (('bp', 'bp'), ('ff@ff_resnet18', 'ff'))]],
        'gpu': 'the GPU recipe (hub_configs/dtgff_resnet18.cifar10.yaml) trains on all of CIFAR-10: '
               'that is resnet18_full --budget gpu'}),
    'resnet18_screens': ('dtgff_resnet18 depth screens, 10k images: branch goodness, stage units, deep lr', {
        'cpu': [run(f'{R18} --objectives dtg bp_deepsup --name cifar10_resnet18_branch_cpu --jobs 2 '
                    f"--extra {SCREENS['branch']}", data_flag='--data-dir'),
                *[run(f'{R18} --objectives dtg bp_deepsup --jobs 2 --threads 1 '
                      f'--name cifar10_resnet18_{name}_cpu --runs-dir benchmarks/runs/r18 '
                      f'--data-dir {{data}} --extra --eval-every 1 {SCREENS[name]}')
                  for name in ('stage', 'deeplr')]],
        'gpu': [run(f'{HUB_R18} --objectives dtg bp_deepsup --data-dir {{data}} '
                    f'--name cifar10_resnet18_{name}_gpu --extra {SUMMED} {extra}')
                for name, extra in SCREENS.items()]}),
    'resnet18_full': ('the named ResNets on all of CIFAR-10: dtgff_resnet18 (dtg, bp_deepsup, bp), ff_resnet18', {
        'cpu': [run(f'{R18_FULL} --objectives dtg bp_deepsup --jobs 2 --threads 1 '
                    '--name cifar10_resnet18_full_cpu --data-dir {data}'),
                run(f'{R18_FULL} --objectives bp --threads 1 --name cifar10_resnet18_full_bp_cpu --data-dir {{data}}'),
                run(f'{R18_FULL} --objectives ff@ff_resnet18 --threads 1 --name cifar10_resnet18_full_ff_cpu '
                    '--data-dir {data} --extra --epochs 1')],
        'gpu': [run(f'{HUB_R18} --objectives dtg bp_deepsup bp --data-dir {{data}} '
                    f'--name cifar10_resnet18_full_gpu --extra {SUMMED}'),
                run(f'{GAP} --recipe hub_configs/ff_resnet18.cifar10.yaml --objectives ff '
                    '--data-dir {data} --name cifar10_resnet18_full_ff_gpu')]}),
    'resnet18_heads': ('dtgff_resnet18 heads (goodness, pred, dgl, infopro, mixed), recon term, 8 epochs; '
                       'bf16 recipe', {
        'cpu': [run(f'{R18_BF16} --objectives {objectives} --threads 1 --name {name}_cpu --data-dir {{data}}'
                    + (f' --extra {flags}' if flags else ''))
                for name, objectives, flags in HEADS]
               + [run(f'{R18_BF16} --objectives bp_deepsup --threads 1 --seed 1 '  # the goodness heads' 2nd seed
                      '--name resnet18_head_goodness_seed1_cpu --runs-dir benchmarks/runs/seed1 --data-dir {data}')],
        'gpu': [run(f'{HUB_R18} --objectives {objectives} --name {name}_gpu --data-dir {{data}} '
                    f'--extra {SUMMED} --mixed-precision bf16 {flags}')
                for name, objectives, flags in HEADS_GPU]}),
    'resnet34': ('dtgff_resnet34 (16 units) under dtg and bp_deepsup, default heads; the ResNet-18 bf16 recipe', {
        'cpu': [run(f'{R18_BF16} --objectives dtg@dtgff_resnet34 bp_deepsup@dtgff_resnet34 --jobs 2 --threads 1 '
                    '--name cifar10_resnet34_cpu --data-dir {data}')],
        'gpu': [run(f'{GAP} --recipe hub_configs/dtgff_resnet34.cifar10.yaml --objectives dtg bp_deepsup '
                    f'--name cifar10_resnet34_gpu --data-dir {{data}} --extra {SUMMED} --mixed-precision bf16')]}),
    'half_weights': ("resnet18_full's dtg weights stored in float16: test accuracy (after resnet18_full)", {
        'cpu': [run(f'{HALF} benchmarks/runs/cifar10_resnet18_full_cpu-dtg --data-dir {{data}} '
                    '--write /tmp/half/dtgff_resnet18.cifar10.safetensors '
                    '--name half_weights_dtgff_resnet18_cifar10_cpu')],
        'gpu': [run(f'{HALF} benchmarks/runs/cifar10_resnet18_full_gpu-dtg --data-dir {{data}} '
                    '--name half_weights_dtgff_resnet18_cifar10_gpu')]}),
    'bf16_accuracy': ('dtgff_resnet18 under dtg in autocast bf16 (seeds 0, 1) against fp32 (seed 0)', {
        'cpu': [run(f'{R18} --objectives dtg --threads 1 --seed {s} --name {name} '
                    f'--runs-dir benchmarks/runs/{runs} --data-dir {{data}} --extra --eval-every 3 '
                    f'--mixed-precision {mp}')
                for s, name, runs, mp in ((0, 'cifar10_resnet18_bf16_seed0_cpu', 'bf16', 'bf16'),
                                          (1, 'cifar10_resnet18_bf16_seed1_cpu', 'rerun', 'bf16'),
                                          (0, 'cifar10_resnet18_fp32_seed0_cpu', 'rerun', 'no'))],
        'gpu': [run(f'{HUB_R18} --objectives dtg --seed {s} --name {name} --data-dir {{data}} --extra '
                    f'--mixed-precision {mp}')
                for s, name, mp in ((0, 'cifar10_resnet18_bf16_seed0_gpu', 'bf16'),
                                    (1, 'cifar10_resnet18_bf16_seed1_gpu', 'bf16'),
                                    (0, 'cifar10_resnet18_fp32_seed0_gpu', 'no'))]}),
    'classic_ff': ('classic FF: ff_mlp on MNIST, ff_cnn_s on CIFAR-10, ff_resnet18; dtgff_mlp beside',
                   {'cpu': classic('cpu'), 'gpu': classic('gpu')}),
    'transfer': ('dtgff_cnn_s pretrained with dtg on CIFAR-10, then probed or fine-tuned on CIFAR-100/20', {
        'cpu': [run(TRANSFER, 'transfer_cifar10_to_cifar100coarse_cpu')],
        'gpu': [run(f'{TRANSFER} --pretrain-data {{data}} --pretrain-epochs 20 '
                    '--name transfer_cifar10_to_cifar100coarse_gpu')]}),
    'ksweep': ('the FF-minus-BP gap against the number of classes K, synthetic and real tasks', {
        'cpu': [run('benchmarks/bench_ksweep.py', 'ksweep_cpu', data_flag='--cifar10-dir')],
        'gpu': [run('benchmarks/bench_ksweep.py --epochs 20 --name ksweep_gpu', data_flag='--cifar10-dir')]}),
    'coarse_fine': ('the FF-minus-BP gap with coarse and with fine labels of the same images', {
        'cpu': [run('benchmarks/bench_coarse_fine.py', 'coarse_fine_cpu', data_flag='--cifar10-dir')],
        'gpu': [run('benchmarks/bench_coarse_fine.py --epochs 20 --name coarse_fine_gpu',
                    data_flag='--cifar10-dir')]}),
    'methods': ('every registered local-learning method under one recipe: fused and per-unit top-1, img/s, memory', {
        'cpu': [run(f'{METHODS} --budget cnn --seeds 0 1 --jobs 2 --threads 1 --data-dir {{data}}', 'methods_cnn_cpu'),
                run(f'{METHODS} --budget resnet18 --seeds 0 --jobs 2 --threads 1 --data-dir {{data}}',
                    'methods_resnet18_cpu')],
        'gpu': [run(f'{METHODS} --budget cnn --recipe {HUB_CNN_S} --seeds 0 1 --name methods_cnn_gpu '
                    '--data-dir {data} --extra --mixed-precision bf16'),
                run(f'{METHODS} --budget resnet18 --recipe {HUB_RESNET18} --seeds 0 --name methods_resnet18_gpu '
                    f'--data-dir {{data}} --extra {SUMMED} --mixed-precision bf16')]}),
    'throughput': ('training img/s, layer-local vs end to end; the data path alone; trainer overhead', {
        'cpu': [run(THROUGHPUT, 'throughput_cpu', data_flag='--data-dir')],
        'gpu': [run(f'{THROUGHPUT} --mixed-precision bf16 --compile --name throughput_gpu',
                    data_flag='--data-dir')]}),
    'hot_loop': ('the one-sync hot loop: img/s of this checkout against commit fd41cd1, alternated', {
        'cpu': [run(f'{THROUGHPUT} --compare fd41cd1 --name throughput_hot_loop_cpu',
                    data_flag='--data-dir')],
        'gpu': [run(f'{THROUGHPUT} --compare fd41cd1 --mixed-precision bf16 --name throughput_hot_loop_gpu',
                    data_flag='--data-dir')]}),
    'pipeline': ('pipelined unit-parallel training vs one process and DDP (GPU form: 2 GPUs, NCCL)', {
        'cpu': [run('benchmarks/bench_pipeline.py', 'pipeline_cpu', data_flag='--data-dir')],
        'gpu': [run('benchmarks/bench_pipeline.py --gpu --name pipeline_gpu', data_flag='--data-dir')]}),
    'audit': ('peak memory and img/s of BP (plain, accumulated, checkpointed) and DTG-FF on dtgff_resnet18',
              {'cpu': audit('cpu'), 'gpu': audit('gpu')}),
    'fsdp': ('parameter and optimiser-state bytes per process: one process vs 2 FSDP processes', {
        'cpu': [run('benchmarks/bench_fsdp.py', 'fsdp_cpu')],
        'gpu': 'bench_fsdp.py runs CPU processes over gloo only (ACCELERATE_USE_CPU=1)'}),
    'bf16': ('autocast bf16 vs fp32 training img/s in alternating pairs', {
        'cpu': [run('benchmarks/bench_bf16.py --pairs 2', 'bf16_cpu')],
        'gpu': [run('benchmarks/bench_bf16.py --pairs 2 --data-dir {data} --steps 100 --batch-size 128 '
                    '--name bf16_gpu')]}),
    'models': ('parameters and one CPU training step of every registered backbone', {
        'cpu': [run('benchmarks/bench_models.py', 'models_cpu')],
        'gpu': 'bench_models.py times CPU steps only (GPU step speed: throughput --budget gpu)'}),
    'heads': ('parameters and forward FLOPs of every registered head beside the backbone', {
        'cpu': [run('benchmarks/bench_head_cost.py', 'head_cost')],
        'gpu': 'parameter and FLOP counts do not depend on the machine'}),
    'label_sweep': ("classic FF's eval label sweep on a CPU: one pass of B*K pairs against passes of 64", {
        'cpu': [run('benchmarks/bench_label_sweep.py', 'label_sweep_cpu')],
        'gpu': 'the label sweep goes in passes on a CPU only (a GPU scores all pairs of a batch in one pass)'}),
    'head_speed': ('dtgff_resnet18 training img/s and peak memory with each head, dtg and bp_deepsup, alternated', {
        'cpu': [run(f'{THROUGHPUT} --models dtgff_resnet18 --heads linear pred dgl infopro --rounds 2 '
                    '--skip-trainer --mixed-precision bf16 --name throughput_heads_cpu --data-dir {data}')],
        'gpu': [run(f'{THROUGHPUT} --models dtgff_resnet18 --heads linear pred dgl infopro --rounds 3 '
                    '--skip-trainer --mixed-precision bf16 --name throughput_heads_gpu', data_flag='--data-dir')]}),
    'first_command': ("the README's two set-up commands (main job, tests) from a fresh clone, timed", {
        'cpu': [run('benchmarks/bench_first_command.py', 'first_command_cpu'),
                run('benchmarks/bench_first_command.py --block tests', 'test_command_cpu')],
        'gpu': "the README's set-up commands are the CPU set-up (a venv, the install, a CPU run)"}),
}
# committed results no command reproduces: record_runs.py over screening runs stopped early or on data copies
BY_HAND = ('dtg_screening_cpu', 'classic_ff_screening_cpu', 'classic_ff_per_location_cpu',
           'resnet18_depth_screening_cpu')


def runs_of(table: str, budget: str) -> list | str:
    """The table's runs on ``budget``, or the line that says why it has no form there."""
    return TABLES[table][1][budget]


def commands(table: str, budget: str, data_dir: str = DEFAULT_DATA) -> list:
    """``(argv, out)`` for every command of ``table`` on ``budget``; argv starts with the script's path."""
    runs = runs_of(table, budget)
    return [] if isinstance(runs, str) else [(r.argv(data_dir), r.out) for r in runs]


def reads_cifar10(table: str, budget: str) -> bool:
    runs = runs_of(table, budget)
    return not isinstance(runs, str) and any(DATA in (*r.args, *r.pin) or r.data_flag for r in runs)


def from_repo(path: str) -> str:
    """``path`` (relative to the caller) as the commands see it from the repository root."""
    full = Path(path).resolve()
    return os.path.relpath(full, REPO) if full.is_relative_to(REPO.parent) else str(full)


def recorded_commit(out: str) -> str:
    try:
        return json.loads((RESULTS / f'{out}.json').read_text()).get('git_commit', '')[:7]
    except (OSError, ValueError):
        return ''


def list_tables() -> str:
    lines = [f"{'table':17s} {'budget':6s} writes to benchmarks/results/"]
    for name, (what, budgets) in TABLES.items():
        lines.append(f'{name:17s} {what}')
        for budget, runs in budgets.items():
            outs = f'- no GPU form: {runs}' if isinstance(runs, str) else ' '.join(
                f'{r.out}.json' for r in runs if r.out)
            lines.append(f"{'':17s} {budget:6s} {outs}")
    written = {r.out for _, budgets in TABLES.values() for runs in budgets.values()
               if not isinstance(runs, str) for r in runs}
    rest = sorted(p.stem for p in RESULTS.glob('*.json') if p.stem not in written)
    hand, other = [n for n in rest if n in BY_HAND], [n for n in rest if n not in BY_HAND]
    if hand:
        lines.append('recorded by hand (record_runs.py over screening runs; no command reproduces them): '
                     + ' '.join(f'{n}.json' for n in hand))
    if other:
        lines.append('in benchmarks/results/ but in no table yet: ' + ' '.join(f'{n}.json' for n in other))
    return '\n'.join(lines)


def show(argv: list) -> str:
    return shlex.join(['python', *argv])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('table', nargs='?', default='', help=f"one of: {', '.join(TABLES)}")
    p.add_argument('--budget', default='cpu',
                   help="cpu (the committed files' commands) or gpu (full-budget recipes, _gpu files)")
    p.add_argument('--data-dir', default=DEFAULT_DATA, help='the CIFAR-10 parquet folder every command reads')
    p.add_argument('--dry-run', action='store_true', help='print the commands, run nothing')
    p.add_argument('--list', action='store_true', help='the tables, their budgets and the files they write')

    def one_line_error(message):
        print(f'error: {message}', file=sys.stderr)
        sys.exit(2)
    p.error = one_line_error
    args = p.parse_args(argv)
    if args.list:
        print(list_tables())
        return 0
    if args.table not in TABLES:
        p.error(f"unknown table {args.table!r}; allowed: {', '.join(TABLES)}" if args.table else
                f"give a table (or --list); allowed: {', '.join(TABLES)}")
    if args.budget not in BUDGETS:
        p.error(f"unknown budget {args.budget!r}; allowed: {', '.join(BUDGETS)}")
    runs = runs_of(args.table, args.budget)
    if isinstance(runs, str):
        print(f'{args.table} has no GPU form: {runs}')
        return 0
    if args.budget == 'gpu' and not args.dry_run:
        import torch
        if not torch.cuda.is_available():
            p.error('--budget gpu needs CUDA and torch sees no GPU here; --dry-run prints its commands')
    data_dir = args.data_dir if args.data_dir == DEFAULT_DATA else from_repo(args.data_dir)
    # a dry run prints the default folder's commands even where it is missing (a clone without ../shared/data);
    # a folder the user names is checked either way
    checked = not args.dry_run or args.data_dir != DEFAULT_DATA
    if checked and reads_cifar10(args.table, args.budget) and not (REPO / data_dir).is_dir():
        p.error(f'data folder {args.data_dir} does not exist; pass --data-dir DIR, a CIFAR-10 parquet folder')
    for cmd, out in commands(args.table, args.budget, data_dir):
        if args.dry_run:
            commit = recorded_commit(out) if out and args.budget == 'cpu' else ''
            made = f' (the committed one: commit {commit})' if commit else ''
            if out and args.budget == 'cpu' and not (RESULTS / f'{out}.json').is_file():
                made = ' (not committed yet)'
            print(f'# writes benchmarks/results/{out}.json{made}' if out else '# a run recorded further down')
            print(show(cmd))
            continue
        print('$', show(cmd), flush=True)
        rc = subprocess.run([sys.executable, *cmd], cwd=REPO, check=False).returncode
        if rc:
            print(f'error: {show(cmd)} exited with {rc}; stopping {args.table}', file=sys.stderr)
            return rc
    return 0


if __name__ == '__main__':
    sys.exit(main())
