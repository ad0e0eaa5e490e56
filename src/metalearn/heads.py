"""The output layer initialised from the support set: Proto-MAML's head (Triantafillou et al. 2020,
Meta-Dataset).

For class k with support-embedding mean c_k (the embeddings f(x) are the network's features just
before its linear output layer, `head`), the head's weight row is 2 c_k and its bias -||c_k||^2, so

    logit_k(x) = 2 c_k . f(x) - ||c_k||^2 = -||f(x) - c_k||^2 + ||f(x)||^2,

the negative squared distance to the class's prototype up to a per-example constant: before any
adaptation step the network is a prototypical network on its own features, for any number of
classes. Everything here is differentiable, so the head can sit inside meta-training
(algorithms/protomaml.py) as well as at adaptation time (adapt.py, `--head proto`).

The functions take a network as a `forward(params, inputs)` (an algorithm's `predict`, or
`predict_tasks` for a chunk of tasks: params name -> [tasks, *shape], inputs [tasks, n, ...]) and
find its features by running it with the head replaced by the identity (weight I, bias 0: the
features pass through), so they serve every network whose output is its `head` layer's: conv4 (all
its variants) and WarpGrad's warped conv4 (warps after the blocks, none after the head). Not T-nets
and MT-nets, whose T follows the head (mtnet.py): adapt.py refuses them by name, and `embed` refuses
an output that is not the features' size.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

Params = dict[str, Tensor]
HEAD_WEIGHT, HEAD_BIAS = "head.weight", "head.bias"  # the output layer's names among a network's parameters


def prototype_head(embeddings: Tensor, labels: Tensor, ways: int) -> tuple[Tensor, Tensor]:
    """(weight [..., ways, d], bias [..., ways]) = (2 c, -||c||^2), c_k the mean embedding of class k.

    embeddings [..., n, d] and labels [..., n] (integers in 0..ways-1); leading dimensions (a chunk's
    tasks) are kept. A class without support examples gets c = 0 (weight 0, bias 0)."""
    one_hot = F.one_hot(labels, ways).to(embeddings.dtype)  # [..., n, ways]
    counts = one_hot.sum(-2).clamp(min=1)  # [..., ways]
    prototypes = (one_hot.transpose(-1, -2) @ embeddings) / counts.unsqueeze(-1)  # [..., ways, d]
    return 2 * prototypes, -(prototypes ** 2).sum(-1)


def embed(forward: Callable[[Params, Tensor], Tensor], params: Params, inputs: Tensor) -> Tensor:
    """The network's features just before its output layer, [..., n, d]: `forward` with the head's
    weight the identity and its bias zero (for a chunk, one identity per task)."""
    weight = params[HEAD_WEIGHT]
    d = weight.shape[-1]
    identity = torch.eye(d, dtype=weight.dtype, device=weight.device).expand(*weight.shape[:-2], d, d)
    zero = weight.new_zeros(*weight.shape[:-2], d)
    features = forward({**params, HEAD_WEIGHT: identity, HEAD_BIAS: zero}, inputs)
    if features.shape[-1] != d:
        raise ValueError(f"the network's output has {features.shape[-1]} entries with an identity head of {d}: "
                         "its output is not its head layer's (a layer follows the head?), so it has no prototype head")
    return features


def with_prototype_head(forward: Callable[[Params, Tensor], Tensor], params: Params, support_x: Tensor,
                        support_y: Tensor) -> Params:
    """`params` with the head replaced by the prototype head of the support set's embeddings under
    `params` (one task: support_x [n, ...]; a chunk with `predict_tasks`: [tasks, n, ...]). The head
    keeps its number of outputs (the ways) and is a differentiable function of the other parameters.

    The other entries come back as aliases of `params`' (`view_as`: new graph nodes, no copy), so that
    an inner loop starting here treats the head and the rest as separate variables: a step's gradient
    with respect to them is the partial derivative (the head held), not the total one through the
    prototypes, while a meta-gradient taken with respect to `params` still flows through both."""
    ways = params[HEAD_WEIGHT].shape[-2]
    weight, bias = prototype_head(embed(forward, params, support_x), support_y, ways)
    start = {name: value.view_as(value) for name, value in params.items() if name not in (HEAD_WEIGHT, HEAD_BIAS)}
    return {**start, HEAD_WEIGHT: weight, HEAD_BIAS: bias}
