"""Markdown for ``benchmarks/report.py``: one renderer per family of results files, and a generic fallback.

A renderer takes a results file's parsed JSON and returns a :class:`Rendered`: a one-line description of what was
measured and the markdown body (tables, then the figures derived from them). ``RENDERERS`` maps file-name globs to
renderers, first match wins; a file no glob matches, or one its renderer fails on, gets :func:`render_generic`, so a
new results file never breaks the report. Every renderer lists the top-level scalar fields it did not show itself
(:func:`leftovers`), so a field a benchmark starts writing appears without a renderer change.
"""
import fnmatch
import json
import re
from dataclasses import dataclass
from typing import Callable

PROVENANCE_KEYS = ('command', 'git_commit', 'git_dirty', 'dirty_files', 'machine', 'seed', 'seeds', 'date_utc')
GAP_FIELDS = ('gap_pp', 'paper_gap_pp', 'gap_minus_paper_pp', 'unit_gap_pp', 'gap_to_bp_pp', 'ff_behind_dtg_pp',
              'throughput_ratio_dtg_over_bp')


@dataclass
class Rendered:
    description: str
    body: list


@dataclass
class Family:
    glob: str
    title: str
    render: Callable[[dict], Rendered]


# Formatting: accuracies to 2 decimals, per-unit accuracy lists to 1, ratios to 2 with an x, img/s and times to
# about 3 significant figures, memory in whole MB / MiB.

def pct(x) -> str:
    return '' if x is None else f'{x:.2f}%'


def pp(x) -> str:
    return '' if x is None else f'{x:.2f}'


def units(xs) -> str:
    return ' / '.join(f'{x:.1f}' for x in xs) if xs else ''


def ratio(x) -> str:
    return '' if x is None else f'{x:.2f}x'


def rate(x) -> str:
    """A throughput or a time to about 3 significant figures."""
    if x is None:
        return ''
    return f'{x:.0f}' if abs(x) >= 100 else f'{x:.1f}' if abs(x) >= 10 else f'{x:.2f}'


def count(x) -> str:
    """A parameter or FLOP count to 3 significant figures with a k / M / G suffix."""
    for div, suffix in ((1e9, 'G'), (1e6, 'M'), (1e3, 'k')):
        if abs(x) >= div:
            return f'{x / div:.3g}{suffix}'
    return f'{x:.3g}'


def mb(x) -> str:
    return '' if x is None else f'{x:.0f}'


def code(x) -> str:
    return f'`{x}`'


def plural(n, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def scalar(x) -> str:
    """Any headline value: floats to 2 decimals, lists of numbers joined with ' / ', the rest as text."""
    if isinstance(x, bool) or x is None:
        return str(x).lower()
    if isinstance(x, float):
        return f'{x:.2f}'
    if isinstance(x, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x):
        return ' / '.join(scalar(v) for v in x)
    if isinstance(x, (list, dict)):
        return json.dumps(x, separators=(',', ':'))
    return str(x)


def quote_json(command: str) -> str:
    """``command`` with each JSON object argument in single quotes, as a shell needs it (benchmarks record their
    command as ``' '.join(sys.argv)``)."""
    out, i, decoder = [], 0, json.JSONDecoder()
    for m in re.finditer(r'(?<=\s)\{', command):
        if m.start() < i:
            continue
        try:
            end = decoder.raw_decode(command, m.start())[1]
        except json.JSONDecodeError:
            continue
        out.append(f"{command[i:m.start()]}'{command[m.start():end]}'")
        i = end
    return ''.join(out) + command[i:]


def table(headers, rows) -> list:
    """A markdown table as lines; ``|`` and newlines inside cells are escaped."""
    def cell(v):
        return str(v).replace('|', '\\|').replace('\n', ' ')
    out = ['| ' + ' | '.join(map(cell, headers)) + ' |', '|' + '---|' * len(headers)]
    return out + ['| ' + ' | '.join(cell(v) for v in row) + ' |' for row in rows]


def chosen(run: dict) -> str:
    check = run.get('fusion_check')
    return check.get('chosen', '') if isinstance(check, dict) else ''


def leftovers(result: dict, used) -> list:
    """Bullets for the top-level scalar fields a renderer did not show (after a blank line; none: no lines)."""
    skip = set(PROVENANCE_KEYS) | set(used)

    def shown(v):
        if v is None or v == '' or v == [] or isinstance(v, dict):
            return False
        too_long = isinstance(v, str) and len(v) > 120
        return not too_long and not (isinstance(v, list) and isinstance(v[0], (dict, list)))
    bullets = [f'- {code(k)}: {scalar(v)}' for k, v in result.items() if k not in skip and shown(v)]
    return [''] + bullets if bullets else []


# one recipe, several objectives: bench_cifar10_gap.py and any file of its shape, bench_transfer.py

def side_by_side(result: dict) -> str:
    """How a benchmark's runs shared the machine, from its ``jobs`` and ``threads_per_run``."""
    jobs, threads = result['jobs'], plural(result.get('threads_per_run'), 'thread')
    return f'one run at a time, {threads}' if jobs == 1 else f'{jobs} runs at once, {threads} each'


def _extra_flags(command: str) -> str:
    return command.partition(' --extra ')[2].strip()


def _gap_notes(result: dict) -> list:
    notes = []
    if 'gap_pp' in result:
        paper = result.get('paper_gap_pp')
        versus = f" (paper: {pp(paper)} pp, difference {pp(result.get('gap_minus_paper_pp'))} pp)" if paper else ''
        notes.append(f"- gap `bp_deepsup` - `dtg`: **{pp(result['gap_pp'])} pp**{versus}")
    if result.get('unit_gap_pp'):
        notes.append(f"- per-unit gap `bp_deepsup` - `dtg`: {' / '.join(pp(x) for x in result['unit_gap_pp'])} pp")
    if 'gap_to_bp_pp' in result:
        notes.append(f"- gap `bp` - `dtg`: {pp(result['gap_to_bp_pp'])} pp")
    if 'ff_behind_dtg_pp' in result:
        notes.append(f"- `ff` behind `dtg`: {pp(result['ff_behind_dtg_pp'])} pp")
    if 'throughput_ratio_dtg_over_bp' in result:
        notes.append(f"- img/s `dtg` / `bp_deepsup`: {ratio(result['throughput_ratio_dtg_over_bp'])}")
    return [''] + notes if notes else []


def render_runs(result: dict) -> Rendered:
    """A ``runs`` dict of train_ff.py metrics keyed by objective (or run name), with the optional gap fields."""
    runs = result['runs']
    has_memory = any(r.get('peak_memory_mb') is not None for r in runs.values())
    has_history = any(len(r.get('history_accuracy') or []) > 1 for r in runs.values())
    headers = ['run', 'fused top-1', 'fusion check kept', 'units (top-1)', 'epochs', 'img/s']
    headers += ['peak MB'] * has_memory + ['wall (s)'] + ['fused after each eval'] * has_history
    rows = []
    for name, r in runs.items():
        row = [code(name), pct(r.get('accuracy')), chosen(r), units(r.get('unit_accuracy')), r.get('epochs_run', ''),
               rate(r.get('train_images_per_s'))]
        row += [mb(r.get('peak_memory_mb'))] * has_memory + [rate(r.get('wall_time_s'))]
        rows.append(row + [units(r.get('history_accuracy'))] * has_history)
    how = [side_by_side(result)] if 'jobs' in result else []
    extra = _extra_flags(result.get('command', ''))
    if extra:
        how.append(f'extra train_ff.py flags {code(quote_json(extra))}')
    recipes = [m.group(1) for r in runs.values() if (m := re.search(r'(?:^|\s)-c (\S+)', r.get('train_command', '')))]
    what = (f"Fused and per-unit test top-1 of {', '.join(code(k) for k in runs)}"
            + (f' on the recipe {code(recipes[0])}' if recipes else '') + (f" ({'; '.join(how)})" if how else '')
            + '; img/s, memory and wall time are training figures.')
    used = ('runs', 'recipe', 'jobs', 'threads_per_run') + GAP_FIELDS
    return Rendered(what, table(headers, rows) + _gap_notes(result) + leftovers(result, used))


# hand-made runs recorded with record_runs.py (screens, release trainings)

def _last_eval(run: dict) -> tuple:
    """(accuracy, unit accuracy, which eval) of a run: its final metrics if it finished, else its last eval."""
    if run.get('finished') and run.get('accuracy') is not None:
        return run['accuracy'], run.get('unit_accuracy'), 'final'
    history = sorted(run.get('history') or [], key=lambda h: h.get('step', 0))
    if not history:
        return None, None, 'no eval'
    return history[-1]['accuracy'], history[-1].get('unit_accuracy'), f"step {history[-1].get('step')}"


def render_recorded(result: dict) -> Rendered:
    rows = []
    for name, r in result['runs'].items():
        acc, unit_acc, when = _last_eval(r)
        commit = r.get('run_commit') or ''
        rows.append([code(name), 'finished' if r.get('finished') else 'stopped', when, pct(acc), chosen(r),
                     units(unit_acc), r.get('epochs_run', '') if r.get('finished') else '',
                     (r.get('data') or {}).get('train_rows', ''), rate(r.get('train_images_per_s')),
                     code(commit[:7] + ('-dirty' if commit.endswith('-dirty') else '')) if commit else ''])
    body = table(['run', 'status', 'eval', 'fused top-1', 'fusion check kept', 'units (top-1)', 'epochs',
                  'train images', 'img/s', 'run commit'], rows)
    commands = [f"- {code(k)}: {code(quote_json(v['train_command']))}" for k, v in result['runs'].items()
                if v.get('train_command')]
    body += ['', "Each run's command:", '', *commands] if commands else []
    note = f" {result['note']}" if result.get('note') else ''
    return Rendered("Hand-made train_ff.py runs recorded with record_runs.py: fused and per-unit test top-1 at each "
                    f"run's last evaluation.{note}", body + leftovers(result, ('runs', 'note')))


def render_ablation(result: dict) -> Rendered:
    full = next((row['mean'] for row in result['table'] if row['variant'] == 'full'), None)
    rows = []
    for row in result['table']:
        seeds = result.get('runs', {}).get(row['variant'], [])
        rows.append([code(row['variant']), pct(row['mean']), f"{row['min']:.2f}-{row['max']:.2f}", pp(row['spread']),
                     pp(full - row['mean']) if full is not None else '', row['n'],
                     ', '.join(f"seed {r['seed']}: {pct(r['accuracy'])}" for r in seeds)])
    headers = ['variant', 'fused top-1 (mean)', 'min-max', 'spread (pp)', 'gain of the part (pp)', 'seeds', 'per seed']
    how = f' ({side_by_side(result)})' if 'jobs' in result else ''
    return Rendered("DTG-FF's parts switched off one at a time by model kwarg, one recipe: fused top-1 over seeds"
                    f"{how}; gain = the full model's mean minus the variant's.",
                    table(headers, rows) + leftovers(result, ('runs', 'table', 'recipe', 'jobs', 'threads_per_run')))


def _over_table(ratios: dict, kinds: dict) -> list:
    """``<a>_<kind>_over_<b>`` ratios as one table: a row per ``a``, a column per kind and ``b``."""
    cells, cols = {}, []
    for key, value in ratios.items():
        m = re.fullmatch(r'(.+?)_(' + '|'.join(kinds) + r')_over_(.+)', key)
        if not m or value is None:
            continue
        a, kind, b = m.groups()
        col = f'{kinds[kind]} / {b}'
        cols += [col] * (col not in cols)
        cells.setdefault(a, {})[col] = ratio(value)
    if not cells:
        return []
    return table([''] + cols, [[code(a)] + [row.get(c, '') for c in cols] for a, row in cells.items()])


def render_audit(result: dict) -> Rendered:
    rows = []
    for name, c in result['configs'].items():
        split = ', '.join(f'unit {u}: {n} micro-batches' for u, n in (c.get('unit_micro_batches') or {}).items())
        rows.append([code(name), code(c.get('objective', '')), c.get('mode', ''),
                     f"{c.get('micro_batch')} x {c.get('accum_steps')}" + (f' ({split})' if split else ''),
                     rate(c.get('img_per_s')), mb(c.get('peak_memory_mib')), c.get('peak_phase', ''),
                     f"{c['params_m']:.2f}" if c.get('params_m') else ''])
    body = table(['configuration', 'objective', 'mode', 'micro-batch x accumulation', 'img/s', 'peak MiB',
                  'peak phase', 'params (M)'], rows)
    over = _over_table(result.get('ratios', {}), {'memory': 'memory', 'img_per_s': 'img/s'})
    body += ['', 'Ratios (row over column):', '', *over] if over else []
    kwargs = f" with {code(json.dumps(result['model_kwargs']))}" if result.get('model_kwargs') else ''
    shape = 'x'.join(map(str, result.get('input_shape', [])))
    used = ('configs', 'ratios', 'model', 'model_kwargs', 'memory_method', 'input_shape', 'batch_size')
    return Rendered(f"Systems audit of {code(result.get('model'))}{kwargs}, input {shape}, batch "
                    f"{result.get('batch_size')}: training img/s and peak memory per configuration "
                    f"({result.get('memory_method', 'peak memory')}).", body + leftovers(result, used))


def render_bf16(result: dict) -> Rendered:
    rows = [[r.get('pair'), r.get('mixed_precision'), rate(r.get('train_images_per_s')), pct(r.get('accuracy'))]
            for r in result['runs']]
    pairs = ' / '.join(ratio(x) for x in result.get('bf16_over_fp32', []))
    notes = ['', f"- bf16 / fp32 img/s per pair: {pairs}; median {ratio(result.get('median_bf16_over_fp32'))}",
             f"- CPU bf16 instructions: {', '.join(result.get('cpu_bf16_flags', [])) or 'none'}"]
    used = ('runs', 'bf16_over_fp32', 'median_bf16_over_fp32', 'cpu_bf16_flags', 'threads', 'train_command')
    return Rendered("Autocast bf16 against fp32 training speed in alternating pairs, "
                    f"{plural(result.get('threads'), 'thread')}: {code(result.get('train_command', ''))}.",
                    table(['pair', 'mixed precision', 'img/s', 'top-1'], rows) + notes + leftovers(result, used))


def render_label_sweep(result: dict) -> Rendered:
    rows = [[code(r['model']), r['precision'], r['images'], r['batch_size'], rate(r['one_pass_images_per_s']),
             rate(r['passes_images_per_s']), ratio(r['passes_over_one_pass']), f"{r['max_abs_logit_difference']:.1e}"]
            for r in result['rows']]
    pairs = sorted({r['pairs_per_pass'] for r in result['rows']})
    return Rendered("Classic FF's eval-mode label sweep (every image scored once per label) on a CPU: all B*K "
                    f"(image, label) pairs of an eval batch in one pass against passes of {'/'.join(map(str, pairs))} "
                    f"pairs (`label_sweep_pairs`), alternated in {result.get('rounds')} rounds (median), "
                    f"{plural(result.get('threads'), 'thread')}.",
                    table(['model', 'precision', 'images', 'eval batch', 'one pass img/s', 'passes img/s', 'ratio',
                           'max logit difference'], rows) + leftovers(result, ('rows', 'threads', 'rounds')))


def render_coarse_fine(result: dict) -> Rendered:
    rows, notes = [], ['']
    for probe, p in result['probes'].items():
        for grain in ('coarse', 'fine'):
            runs, data = p[grain]['runs'], p.get('data', {}).get(grain, {})
            rows.append([probe, grain, data.get('num_classes', ''), data.get('train_images', ''),
                         data.get('eval_images', ''),
                         *(pct(runs.get(o, {}).get('accuracy')) for o in ('dtg', 'bp_deepsup', 'bp')),
                         pp(p[grain].get('dtg_minus_bp_deepsup_pp')), pp(p[grain].get('dtg_minus_bp_pp'))])
        note = f"; {p['note']}" if p.get('note') else ''
        notes.append(f"- {probe}: fine minus coarse of (`dtg` - `bp_deepsup`) "
                     f"{pp(p.get('fine_minus_coarse_dtg_minus_bp_deepsup_pp'))} pp, of (`dtg` - `bp`) "
                     f"{pp(p.get('fine_minus_coarse_dtg_minus_bp_pp'))} pp{note}")
    headers = ['data', 'labels', 'classes', 'train images', 'test images', '`dtg`', '`bp_deepsup`', '`bp`',
               '`dtg` - `bp_deepsup` (pp)', '`dtg` - `bp` (pp)']
    return Rendered(f"Coarse against fine labels of the same images, {code(result.get('model'))}, one recipe, "
                    f"objectives {', '.join(result.get('objectives', []))}: test top-1 and the FF-BP differences.",
                    table(headers, rows) + notes + leftovers(result, ('probes', 'recipe', 'objectives', 'model')))


def render_first_command(result: dict) -> Rendered:
    """bench_first_command.py: the README's main-job command (a training run) or its test command (pytest)."""
    used = ('block', 'readme_command', 'returncode', 'wall_time_s', 'epochs', 'final_accuracy', 'final_unit_accuracy',
            'pytest_summary', 'failed_tests', 'first_lines', 'last_lines', 'load_average_before', 'output_tail',
            'slowest_tests')
    if result.get('block') == 'tests':
        notes = [f"- exit code {result.get('returncode')}, wall {rate(result.get('wall_time_s'))} s (install and "
                 f"tests), pytest: {code(result.get('pytest_summary'))}"]
        failed = result.get('failed_tests') or []
        notes += [f"- failed: {', '.join(code(t) for t in failed)}"] if failed else []
        slowest = result.get('slowest_tests') or []
        notes += [f"- slowest {len(slowest[:10])} of the run (pytest --durations; "
                  f"{sum(t['seconds'] for t in slowest):.0f} s in its {len(slowest)} slowest): "
                  + ', '.join(f"{code(t['test'])} {t['seconds']:.0f} s" for t in slowest[:10])] if slowest else []
        return Rendered("The README's test command (what `.ci/run` runs), from a fresh clone: "
                        f"{code(result.get('readme_command'))}.", notes + leftovers(result, used))
    rows = [[e['epoch'], f"{e['loss']:.3f}", pct(e['accuracy']), units(e.get('unit_accuracy'))]
            for e in result.get('epochs', [])]
    notes = ['', (f"- exit code {result.get('returncode')}, wall {rate(result.get('wall_time_s'))} s (install and "
                  f"training), final fused top-1 **{pct(result.get('final_accuracy'))}**, units "
                  f"{units(result.get('final_unit_accuracy'))}")]
    return Rendered("The README's first command, from a fresh virtual environment: "
                    f"{code(result.get('readme_command'))}; per-epoch training loss and fused / per-unit top-1 on the "
                    "bundled sample.",
                    table(['epoch', 'loss', 'fused top-1', 'units (top-1)'], rows) + notes + leftovers(result, used))


def render_fsdp(result: dict) -> Rendered:
    rows = [[code(model), f"{r['state_bytes_one_process'] / 2**20:.2f}",
             ' / '.join(f'{b / 2**20:.2f}' for b in r['state_bytes_per_fsdp_process']),
             ' / '.join(ratio(x) for x in r['fsdp_over_one_process'])] for model, r in result['runs'].items()]
    return Rendered("Parameter and optimiser state held per process, one process against FSDP over 2 processes "
                    f"({result.get('steps')} steps, global batch {result.get('global_batch')}, {result.get('opt')}).",
                    table(['model', 'one process (MiB)', 'per FSDP process (MiB)', 'FSDP / one process'], rows)
                    + leftovers(result, ('runs', 'steps', 'global_batch', 'opt')))


def render_half_weights(result: dict) -> Rendered:
    dtype = result.get('dtype', 'half')
    rows = [[w, *(pct(result.get(f'{w}_weights_{e}_eval')) for e in ('fp32', 'bf16'))] for w in ('fp32', dtype)]
    minus = ', '.join(f'{k} eval {pp(v)} pp' for k, v in result.get('half_minus_fp32_pp', {}).items())
    notes = ['', f'- {dtype} minus fp32 weights: {minus}',
             (f"- file size: fp32 {result.get('fp32_bytes', 0) / 1e6:.1f} MB, {dtype} "
              f"{result.get(f'{dtype}_bytes', 0) / 1e6:.1f} MB; the run recorded "
              f"{pct(result.get('run_recorded_accuracy'))}")]
    used = [k for k in result if k.endswith(('_eval', '_bytes'))]
    used += ['run', 'run_commit', 'eval_images', 'dtype', 'run_recorded_accuracy', 'half_minus_fp32_pp']
    return Rendered(f"Test top-1 of the run {code(result.get('run'))} ({result.get('eval_images')} test images) with "
                    f"its weights stored in fp32 and in {dtype}, evaluated in fp32 and under autocast bf16.",
                    table(['weights', 'fp32 eval', 'bf16 eval'], rows) + notes + leftovers(result, used))


def render_ksweep(result: dict) -> Rendered:
    rows = []
    for task, ks in result['tasks'].items():
        for k in sorted(ks, key=int):
            row, model = ks[k], result.get('models', {}).get(task, '')
            rows.append([task, code(model), k, *(pct(row['runs'].get(o, {}).get('accuracy'))
                                                 for o in ('dtg', 'bp_deepsup', 'bp')),
                         pp(row.get('dtg_minus_bp_deepsup_pp')), pp(row.get('dtg_minus_bp_pp')),
                         pct(row.get('chance_pct'))])
    headers = ['task', 'model', 'K', '`dtg`', '`bp_deepsup`', '`bp`', '`dtg` - `bp_deepsup` (pp)',
               '`dtg` - `bp` (pp)', 'chance']
    return Rendered("K-sweep: the same model and recipe on K-class tasks; test top-1 per objective and `dtg` minus "
                    "the BP baselines (negative: FF behind).",
                    table(headers, rows) + leftovers(result, ('tasks', 'models', 'recipe', 'objectives')))


def render_models(result: dict) -> Rendered:
    rows = [[code(r['model']), code(r.get('objective', '')), count(r['params']), r.get('units', ''),
             'x'.join(map(str, r.get('input_size', []))), rate(r.get('step_ms')), rate(r.get('bp_deepsup_step_ms')),
             ratio(r.get('step_ratio_over_bp_deepsup')), rate(r.get('infer_ms')), rate(r.get('train_img_per_s'))]
            for r in result['rows']]
    headers = ['model', 'objective', 'params', 'units', 'input', 'step (ms)', '`bp_deepsup` step (ms)', 'ratio',
               'eval (ms)', 'img/s']
    used = ('rows', 'timing', 'batch_size', 'repeats', 'loadavg_before', 'loadavg_after')
    return Rendered(f"Every model: parameters and the median time of one training step (batch "
                    f"{result.get('batch_size')}, {result.get('repeats')} repeats; {result.get('timing', '')}).",
                    table(headers, rows) + leftovers(result, used))


def render_head_cost(result: dict) -> Rendered:
    def opt(r, k):
        return count(r[k]) if r.get(k) is not None else ''
    rows = [[code(r['model']), code(r['head']), count(r['head_params']), count(r['backbone_params']),
             count(r['head_flops']), count(r['backbone_flops']), pct(100 * r['head_flops_over_backbone']),
             opt(r, 'recon_decoder_params'), opt(r, 'recon_decoder_flops')] for r in result['rows']]
    headers = ['model', 'head', 'head params', 'backbone params', 'head FLOPs', 'backbone FLOPs',
               'head / backbone FLOPs', 'recon decoder params', 'recon decoder FLOPs']
    return Rendered("Parameters and forward FLOPs per image of each head beside the backbone's, and of the "
                    "reconstruction decoders (training only).", table(headers, rows) + leftovers(result, ('rows',)))


def render_pipeline(result: dict) -> Rendered:
    body = []
    for model, r in result['results'].items():
        summary = r['summary']
        peaks = summary.get('max_rank_peak_memory_mib', {})
        rows = [[code(cfg), rate(v), mb(peaks.get(cfg))] for cfg, v in summary.get('img_per_s', {}).items()]
        body += ([''] if body else []) + [f'{code(model)}:', '']
        body += table(['configuration', 'img/s', 'peak MiB (max over processes)'], rows)
        derived = [f'{k} {ratio(v)}' for k, v in summary.items() if '_over_' in k]
        goals = [f"{k}: {'met' if v else 'missed'}" for k, v in summary.get('goals', {}).items()]
        body += ['', '- ' + '; '.join(derived)] if derived else []
        body += ['- goals: ' + '; '.join(goals)] if goals else []
    return Rendered("Pipelined training (units on different processes) against one process and FF-DDP, batch "
                    f"{result.get('batch_size')}: img/s and peak memory per process.",
                    body + leftovers(result, ('results', 'batch_size')))


def _throughput_label(row: dict) -> str:
    return ' '.join([row.get('kind', '')] + [row[k] for k in ('objective', 'mode') if row.get(k)])


def render_throughput(result: dict) -> Rendered:
    rows, body = [r for r in result['rows'] if r.get('kind') != 'head'], []
    if any('code' in r for r in rows):  # --compare REV: this checkout's img/s beside REV's
        cells = {}
        for r in rows:
            cells.setdefault((r['model'], _throughput_label(r)), {})[r['code']] = r.get('img_per_s')
        body = table(['model', 'configuration', 'img/s (this commit)', 'img/s (reference)', 'ratio'],
                     [[code(m), label, rate(v.get('head')), rate(v.get('ref')),
                       ratio(v['head'] / v['ref']) if v.get('head') and v.get('ref') else '']
                      for (m, label), v in cells.items()])
    elif rows:
        body = table(['model', 'configuration', 'steps', 'img/s'],
                     [[code(r['model']), _throughput_label(r), r.get('steps', ''), rate(r.get('img_per_s'))]
                      for r in rows])
    keys = ('dtg_over_bp_deepsup', 'dtg_per_unit_over_bp_deepsup', 'dtg_over_bp', 'dtg_per_unit_over_bp',
            'data_path_over_dtg')
    ratio_rows = [[code(model), *(ratio(v.get(k)) for k in keys), pp(v.get('trainer_overhead_pct'))]
                  for model, v in result.get('ratios', {}).items()
                  if any(v.get(k) is not None for k in (*keys, 'trainer_overhead_pct'))]  # --skip-trainer: none
    if ratio_rows:
        body += ([''] if body else []) + ['Ratios of img/s:', ''] + table(
            ['model', '`dtg` / `bp_deepsup`', '`dtg` per_unit / `bp_deepsup`', '`dtg` / `bp`',
             '`dtg` per_unit / `bp`', 'data path / `dtg`', 'trainer overhead (%)'], ratio_rows)
    head_rows = [[code(model), code(head), code(obj), rate(v.get('img_per_s')), ratio(v.get('step_time_over_goodness')),
                  mb(v.get('peak_memory_mb')), count(v['head_params']) if v.get('head_params') is not None else '',
                  v.get('rounds', '')]
                 for model, heads in result.get('head_ratios', {}).items()
                 for head, objs in heads.items() for obj, v in objs.items()]
    if head_rows:
        body += ([''] if body else []) + ['Heads beside the goodness head (medians over rounds):', ''] + table(
            ['model', 'head', 'objective', 'img/s', 'step time / goodness head', 'peak MB', 'head params', 'rounds'],
            head_rows)
    ref = result.get('compare', {}).get('ref')
    against = f', against the reference commit {code(ref[:7])}' if ref else ''
    used = ('rows', 'ratios', 'head_ratios', 'compare', 'batch_size', 'mixed_precision')
    return Rendered("Training img/s of the real trainer per model and objective, the data path alone and the "
                    f"trainer's overhead over a bare loop; batch {result.get('batch_size')}, mixed precision "
                    f"{result.get('mixed_precision')}{against}.", body + leftovers(result, used))


# bench_methods.py: every local-learning rule under one recipe

def methods_ranked(result: dict) -> list:
    """Method names, best fused top-1 (mean over seeds) first."""
    return sorted(result['methods'], key=lambda m: -result['methods'][m]['summary']['accuracy_mean'])


def method_source(m: dict) -> str:
    """The paper's short name and a link to the code it follows."""
    paper = m.get('paper', '').split(',')[0]
    repo = m.get('source', '').split(',')[0].split(' ')[0]
    return paper + (f'; [{repo}](https://github.com/{repo})' if '/' in repo else '')


def methods_budget(result: dict) -> str:
    """``<images>k x <epochs>`` from a run's optimiser steps and the recorded recipe's batch size."""
    try:
        batch = int(re.search(r'(?m)^batch_size:\s*(\d+)', result.get('recipe', '')).group(1))
    except AttributeError:
        return 'unknown'
    run = next(r for m in result['methods'].values() for r in m['runs'])
    return f"{run['global_step'] * batch / run['epochs_run'] / 1000:.1f}k x {run['epochs_run']}"


def methods_verdict(result: dict) -> list:
    """Bullets: the best method, the best strictly-local one and where ``dtg`` stands against them, in pp."""
    ms, ranked = result['methods'], methods_ranked(result)
    acc = {m: ms[m]['summary']['accuracy_mean'] for m in ranked}
    local = [m for m in ranked if ms[m]['local']]
    best = ranked[0]
    out = [f"- best: {code(best)} {pct(acc[best])}" + ('' if ms[best]['local'] else ' (not layer-local)')]
    if 'dtg' in acc and local:
        top, dtg = local[0], acc['dtg']
        if top == 'dtg' and len(local) > 1:
            nxt = local[1]
            out.append(f"- best strictly-local: DTG-FF ({code('dtg')}) {pct(dtg)}, {pp(dtg - acc[nxt])} pp ahead of "
                       f'the next one, {code(nxt)} {pct(acc[nxt])}')
        elif top != 'dtg':
            out.append(f"- best strictly-local: {code(top)} {pct(acc[top])}, {pp(acc[top] - dtg)} pp ahead of DTG-FF "
                       f"({code('dtg')}, {pct(dtg)})")
        for ref in ('bp_deepsup', 'bp'):
            if ref in acc:
                out.append(f"- {code('dtg')} minus {code(ref)}: {pp(acc['dtg'] - acc[ref])} pp")
    widened = {m: r['model_kwargs_added'] for m in ranked for r in ms[m]['runs'][:1] if r.get('model_kwargs_added')}
    for m, kwargs in widened.items():
        out.append(f"- {code(m)} trained with {code(json.dumps(kwargs, separators=(', ', ': ')))} (channel groups "
                   'of K classes need widths that are multiples of K)')
    return out


def render_methods(result: dict) -> Rendered:
    ms = result['methods']
    rows = []
    for m in methods_ranked(result):
        r, s = ms[m], ms[m]['summary']
        rows.append([code(m), code(r['objective']), 'yes' if r['local'] else '**no**',
                     'yes' if r['label_in_input'] else 'no', 'yes' if r['negatives'] else 'no',
                     pct(s['accuracy_mean']), pp(s['accuracy_spread']),
                     ' / '.join(pct(run['accuracy']) for run in r['runs']), units(s['unit_accuracy_mean']),
                     rate(s['train_images_per_s_mean']), mb(s['peak_memory_mb_max']), r.get('published', '')])
    headers = ['method', 'objective', 'strictly local', 'label in input', 'negatives', 'fused top-1 (mean)',
               'spread (pp)', 'per seed', 'units (mean)', 'img/s', 'peak MB', 'published (its network, budget)']
    what = (f"Every registered method (`train_ff.py --method`) on {code(result['base_model'])}'s recipe "
            f"{code(result['recipe_path'])} ({methods_budget(result)} images x epochs, "
            f"{plural(result.get('threads_per_run'), 'thread')} per run): fused and per-unit test top-1 (mean over "
            'seeds), training img/s and peak memory (compare within this table only). Published figures are at '
            "their papers' networks and budgets: not reproductions.")
    missing = result.get('missing_runs') or []
    notes = methods_verdict(result) + ([f"- not finished when the file was written: {', '.join(missing)}"]
                                       if missing else []) + ([f"- {result['note']}"] if result.get('note') else [])
    used = ('methods', 'recipe', 'recipe_path', 'base_model', 'threads_per_run', 'budget', 'best', 'best_local',
            'missing_runs', 'seeds', 'note')
    return Rendered(what, table(headers, rows) + [''] + notes + leftovers(result, used))


# the fallback

def _flatten(value, prefix: str = ''):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _flatten(v, f'{prefix}.{k}' if prefix else str(k))
    elif isinstance(value, (int, float, bool)) or (isinstance(value, str) and len(value) <= 80) or (
            isinstance(value, list) and len(value) <= 16 and all(isinstance(v, (int, float)) for v in value)):
        yield prefix, value


def _records(value) -> bool:
    """A non-empty list of dicts whose values are scalars or lists of scalars."""
    def flat(x):
        return not isinstance(x, (dict, list)) or all(isinstance(v, (int, float, str)) for v in x)
    return (isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)
            and all(flat(x) for v in value for x in v.values()))


def render_generic(result: dict, limit: int = 40) -> Rendered:
    """Any results file: its scalar fields (nested ones by dotted path, at most ``limit``) and a table for each
    top-level list of flat records."""
    fields = list(_flatten({k: v for k, v in result.items() if k not in PROVENANCE_KEYS}))
    body = table(['field', 'value'], [[code(k), scalar(v)] for k, v in fields[:limit]]) if fields else []
    body += ['', f'{len(fields) - limit} more fields in the file.'] if len(fields) > limit else []
    for key, value in result.items():
        if _records(value):
            cols = list(dict.fromkeys(k for row in value for k in row))
            rows = [[scalar(row[c]) if c in row else '' for c in cols] for row in value[:limit]]
            body += ([''] if body else []) + [f'{code(key)}:', ''] + table(cols, rows)
    return Rendered('No renderer knows this file yet; its headline fields:', body)


RENDERERS = [
    Family('cifar10_*.json', 'Accuracy: one recipe, several objectives', render_runs),
    Family('resnet18_head_*.json', 'Accuracy: one recipe, several objectives', render_runs),
    Family('transfer_*.json', 'Accuracy: one recipe, several objectives', render_runs),
    Family('resnet18_recon*.json', 'Accuracy: one recipe, several objectives', render_runs),
    Family('*_screening_*.json', 'Screens and hand-made runs', render_recorded),
    Family('classic_ff_*.json', 'Screens and hand-made runs', render_recorded),
    Family('ablation*.json', 'Ablation', render_ablation),
    Family('ksweep*.json', 'Research instruments', render_ksweep),
    Family('coarse_fine*.json', 'Research instruments', render_coarse_fine),
    Family('audit_*.json', 'Systems: memory and speed', render_audit),
    Family('throughput*.json', 'Systems: memory and speed', render_throughput),
    Family('pipeline*.json', 'Systems: memory and speed', render_pipeline),
    Family('fsdp*.json', 'Systems: memory and speed', render_fsdp),
    Family('bf16*.json', 'Systems: memory and speed', render_bf16),
    Family('half_weights_*.json', 'Systems: memory and speed', render_half_weights),
    Family('head_cost*.json', 'Systems: memory and speed', render_head_cost),
    Family('label_sweep*.json', 'Systems: memory and speed', render_label_sweep),
    Family('models*.json', 'Systems: memory and speed', render_models),
    Family('first_command*.json', 'The first command', render_first_command),
    Family('test_command*.json', 'The test command', render_first_command),
    Family('methods_*.json', 'Local learning rules under one recipe', render_methods),
]
GENERIC = Family('*', 'Other results', render_generic)


def family_of(file_name: str) -> Family:
    return next((f for f in RENDERERS if fnmatch.fnmatch(file_name, f.glob)), GENERIC)


def render(file_name: str, result: dict) -> tuple:
    """``(family, rendered)`` of one results file; a renderer that fails on it falls back to the generic listing."""
    family = family_of(file_name)
    try:
        return family, family.render(result)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError) as e:
        fallback = render_generic(result)
        fallback.description = (f'The {family.render.__name__} renderer failed on this file '
                                f'({type(e).__name__}: {e}); its headline fields:')
        return GENERIC, fallback
