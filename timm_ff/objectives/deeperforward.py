"""DeeperForward as a preset of the ``dtg`` objective (``--method deeperforward``) and its goodness mode.

Sun et al. 2025 (ICLR), "DeeperForward: Enhanced Forward-Forward Training for Deeper and Better Performance".
Their code (a copy in ``BasitHussain5/project_1``, ``deeperforward-main/``): ``model/cwconv.py`` is the layer,
``model/resnet.py`` trains it (``update``) and picks the readout (``pruning``). What a layer does there::

    y = relu(conv(x))                      # (dropout 0.2 in main.py)
    g_k = mean of y over the k-th of K consecutive channel groups and all positions   # "mean goodness"
    loss = CE(g, label)                    # g is the layer's class logits as they are
    hand on F.group_norm(y, K)             # no affine: each class group's energy is taken out

and the prediction sums ``g`` over a range of consecutive layers, the range chosen on held-out images.

In this project's parts, every one a model kwarg of the preset (so a saved model predicts as DeeperForward's):

* ``goodness='relu_mean'`` (registered below) with ``goodness_groups=K``: the K group means of ``relu(h)``, not
  squared (``relu`` leaves a ReLU unit's output as it is and reads a residual branch as the source does);
* ``head_proj='class_groups'``: with K values, class k's logit is group k's mean itself; ``temperature='fixed'``,
  ``t_init=1``: the ``dtg`` objective's cross-entropy on them is the source's loss;
* ``unit_norm='groupnorm'``: GroupNorm over the same K groups, no affine, on what the next unit receives, while
  the goodness is read from the raw activation (``decoupled=True``), as the source reads ``g`` before the norm;
* ``norm='none'``: the source's layers have no BatchNorm;
* ``fusion='mean'``: the mean of every unit's logits (the source's sum over its layers, same argmax). The layer
  range comes from the trainer's fusion check, on by default (``--fusion-check-images``, 2500 training images
  held out of training): after the last epoch it scores each unit alone and the mean of every run of
  consecutive units on those images and keeps the best, as the source's ``pruning`` does.

K = 10 (CIFAR-10) in the preset: for K classes pass ``goodness_groups=K`` and unit widths that are multiples of K
(the source's CIFAR ResNet: 100, 200, 400, 800). Hyperparameters from the source: the contiguous K-group split,
the unsquared mean, the group norm with K groups (``eps`` 1e-5) and plain cross-entropy. Not the source's: the
backbone (its 17 one-conv layers with detached shortcuts; here the model's units), its input LayerNorm and
dropout, per-layer AdamW at lr 0.08 with a cosine schedule (here the recipe's optimiser), a range picked after
every epoch (here once, after the last, keeping the best single unit unless a run of units beats it by 0.5 pp).
"""
import torch

from ..errors import ConfigError
from ..layers import register_goodness
from ..methods import Method, register_method

__all__ = ['DEEPERFORWARD_MODEL_KWARGS', 'relu_mean']

# the model kwargs under which a unit's logits, norm and readout are DeeperForward's (K = 10)
DEEPERFORWARD_MODEL_KWARGS = dict(head='goodness', goodness='relu_mean', goodness_groups=10, goodness_reduce='mean',
                                  head_proj='class_groups', head_norm='none', temperature='fixed', t_init=1.0,
                                  unit_norm='groupnorm', norm='none', fusion='mean')


def _relu_mean_size(in_chs: int, groups: int, patches: int) -> int:
    g = groups or in_chs
    if in_chs % g:
        raise ConfigError(f"goodness 'relu_mean' splits a unit's {in_chs} channels into goodness_groups={g} equal "
                          f'groups; allowed: unit widths that are multiples of {g} (DeeperForward: one group per class, '
                          f'widths 100, 200, 400, 800; e.g. --model-kwargs \'{{"channels": [{4 * g}, {8 * g}, '
                          f'{16 * g}, {32 * g}]}}\', or "widths" for an MLP)')
    return g


@register_goodness('relu_mean', num_values=_relu_mean_size)
def relu_mean(h: torch.Tensor, groups: int = 0, patches: int = 2, reduce: str = 'mean') -> torch.Tensor:
    """(B, G) mean (``reduce='sum'``: sum) of ``relu(h)`` over each of G consecutive channel groups and all positions.

    DeeperForward's "mean goodness": the activation itself, not its square. ``groups`` 0 gives one per channel.
    """
    a = h.float().relu()
    a = a.reshape(a.shape[0], groups or a.shape[1], -1)
    return a.mean(2) if reduce == 'mean' else a.sum(2)


register_method(Method(
    'deeperforward', 'dtg',
    paper='Sun et al. 2025 (ICLR), DeeperForward: Enhanced Forward-Forward Training for Deeper and Better Performance',
    source="BasitHussain5/project_1 (a copy of the authors' code), deeperforward-main/model/cwconv.py and "
           'model/resnet.py',
    model_kwargs=dict(DEEPERFORWARD_MODEL_KWARGS),
    from_source='K consecutive channel groups per unit, the mean (unsquared) ReLU output of each as its class '
                'logit, plain CE, GroupNorm(K) without affine on what is handed on, no BatchNorm, a layer range '
                'picked on held-out images (here the fusion check); K = 10: for K classes pass goodness_groups=K '
                'and widths that are multiples of K',
    published='86.22%: a 17-layer ResNet (DeeperForward paper; the copy of its code read here trains without '
              'augmentation)'))
