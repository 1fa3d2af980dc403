"""Named local-learning methods: each a cited preset of objective, objective kwargs, model kwargs and recipe keys.

A method is what a paper calls its training rule, written in this project's parts: ``train_ff.py --method dgl``
is ``--objective dtg`` with DGL's heads and a fixed temperature of 1 (plain cross-entropy), and so on. Flags given
on the command line win over a method's settings (and a method's over a recipe's); ``--list-methods`` prints
the table below with each method's locality and source. Register your own with :func:`register_method`.

Only what defines a method is in its preset: every method runs under the same augmentation, optimiser and
schedule (the recipe's), so a comparison changes the rule alone.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from .errors import unknown_choice

__all__ = ['Method', 'register_method', 'get_method', 'list_methods', 'method_table']


@dataclass(frozen=True)
class Method:
    """A training rule as a preset.

    Attributes:
        name: Registry name (``--method NAME``).
        objective: The registered objective it trains with.
        objective_kwargs: Objective kwargs that define the method (the user's ``--objective-kwargs`` win).
        model_kwargs: Model kwargs that define it (heads, temperature, norms; the user's ``--model-kwargs`` win).
        recipe: ``train_ff.py`` argument defaults it needs (e.g. ``local_backward``).
        local: Whether no gradient crosses a unit boundary.
        label_in_input: Whether the label is part of the input (classic FF: predict by trying every label).
        negatives: Whether it trains on negative samples.
        model_family: 'heads' (``dtgff_*`` models: class heads) or 'label' (``ff_*``: label in the input).
        paper: The paper it follows.
        source: The code it follows (repository and file), or '' where none is public.
        from_source: Which of its settings are the source's own hyperparameters.
        published: Its published CIFAR-10 result with the network and budget it was reached at, or '' where
            none is known; a table quoting it states the budget difference, it does not claim a reproduction.
    """
    name: str
    objective: str
    paper: str
    source: str = ''
    objective_kwargs: Dict = field(default_factory=dict)
    model_kwargs: Dict = field(default_factory=dict)
    recipe: Dict = field(default_factory=dict)
    local: bool = True
    label_in_input: bool = False
    negatives: bool = False
    model_family: str = 'heads'
    from_source: str = ''
    published: str = ''


_METHODS: Dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add ``method`` to the registry (``train_ff.py --method NAME``); a name can be registered once."""
    if method.name in _METHODS:
        raise ValueError(f'method {method.name!r} is already registered; pick another name')
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method ``name``; an unknown name is one error naming the registered ones."""
    if name not in _METHODS:
        raise unknown_choice('method', name, sorted(_METHODS))
    return _METHODS[name]


def list_methods() -> List[str]:
    """Names of the registered methods, in registration order."""
    return list(_METHODS)


def method_table() -> str:
    """The methods as a fixed-width table: name, objective, locality, label in the input, negatives, source."""
    rows: List[Tuple[str, ...]] = [('method', 'objective', 'local', 'label in input', 'negatives', 'paper / source')]
    for m in _METHODS.values():
        rows.append((m.name, m.objective, 'yes' if m.local else 'NO', 'yes' if m.label_in_input else 'no',
                     'yes' if m.negatives else 'no', m.paper + (f'; {m.source}' if m.source else '')))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return '\n'.join('  '.join(c.ljust(w) for c, w in zip(r, widths)) + '  ' + r[-1] for r in rows)


register_method(Method(
    'dtg', 'dtg', paper='DTG-FF (arXiv 2606.06539), as implemented here (docs/models.md)',
    from_source='the paper body is not public: every setting is this project\'s design',
    published='91.8% (DTG-FF abstract; its network and budget are not public)'))
register_method(Method(
    'ff', 'ff', paper='Hinton 2022, The Forward-Forward Algorithm; SymBa loss (Lee & Song 2023)',
    label_in_input=True, negatives=True, model_family='label',
    from_source="SymBa's alpha=4; Trifecta's joint positive/negative BatchNorm batch (Dooms et al. 2023)",
    published='29.85%: a strictly-local 6-layer CNN with label planes after 362 epochs (amirhossein-yousefi/'
              'ff-free-riding, metric_summaries/camera_ready/bp_calibration.json; the same CNN under BP 90.08%)'))
register_method(Method(
    'bp', 'bp', paper='end-to-end backprop on the same backbone and last head', local=False))
register_method(Method(
    'bp_deepsup', 'bp_deepsup', paper='backprop with every unit head\'s loss summed (deep supervision)', local=False,
    published='2.40 pp above DTG-FF (DTG-FF abstract; network and budget not public)'))
register_method(Method(
    'dgl', 'dtg', paper='Belilovsky et al. 2020, Decoupled Greedy Learning of CNNs',
    source='eugenium/DGL, auxiliary_nets_study/models.py',
    model_kwargs=dict(head='dgl', temperature='fixed', t_init=1.0),
    from_source="the MLP-SR head's shape (3 1x1 convs, 3 MLP layers of width 4C); plain cross-entropy (T = 1)",
    published='85.83% (14.17% error): ResNet-32 in K=8 modules, 160 epochs (InfoPro, Table 2)'))
register_method(Method(
    'infopro', 'dtg', paper='Wang et al. 2021, Revisiting Locally Supervised Learning (InfoPro)',
    source='blackfeather-wang/InfoPro-Pytorch, networks/auxiliary_nets.py and comand.sh',
    model_kwargs=dict(head='infopro', temperature='fixed', t_init=1.0), objective_kwargs=dict(recon=[5.0, 0.0]),
    from_source="the 1c2f head and decoder; the reconstruction weight 5 -> 0 (ResNet-32, K=8); cross-entropy "
                "instead of the source's contrastive loss mode, task weight 1 in every unit",
    published='88.87% (11.13% error): ResNet-32 in K=8 modules, 160 epochs (InfoPro, Table 2; end to end 92.63%)'))
