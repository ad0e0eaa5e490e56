"""The papers' networks, as ordinary modules used functionally.

Algorithms never mutate these modules: they hold parameters as a dict and call
``torch.func.functional_call(model, params, inputs)`` (see `metalearn.tasks.Objective`).
Each network also runs a whole chunk of tasks, each with its own parameters, in one call
(``forward_tasks``): a meta-batch's small per-task operations become a few larger ones, which is
what makes meta-training fast (bench/speed.py); the tests check it against the one-task forward.
BatchNorm keeps no running statistics: it always normalises with the current batch, as in the
MAML code, so adaptation and evaluation see the same function of the parameters. Conv4 offers two
BatchNorms (`batch_norm`): `affine` (PyTorch's: scale and offset, eps 1e-5; adapted by the inner loop
like every parameter) and `maml`, the MAML code's (cbfinn/maml utils.py `normalize`, i.e.
tf.contrib.layers.batch_norm's defaults): an offset only, eps 1e-3, and the offset is not among the
adapted weights there, so the network lists it in `meta_only` and the MAML family leaves it out of
its inner loop (algorithms/maml.py `initial_params`): it is meta-learned only.
The iMAML code's Omniglot network (`conv4-imaml`, aravindr93/imaml_dev implicit_maml/learner_model.py
make_conv_network) is Conv4 with two differences, flattened features and its initialisation (`Conv4`'s
`features` and `init`), and its pixels are the other way round (`stroke`): see `build_model`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


Params = dict[str, Tensor]


class OffsetBatchNorm(nn.Module):
    """The MAML code's BatchNorm (tf.contrib.layers.batch_norm defaults: center=True, scale=False,
    epsilon=0.001), with the current batch's statistics: (x - mean) / sqrt(var + 1e-3) + beta; no scale."""

    weight = None  # no scale gamma (as nn.BatchNorm2d(affine=False) says it)

    def __init__(self, channels: int, eps: float = 1e-3):
        super().__init__()
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(channels))  # beta, tf's zeros initializer

    def forward(self, x: Tensor) -> Tensor:
        # A constant scale of 1, not None: torch's double backward of batch_norm (second-order MAML,
        # iMAML's Hessian-vector products) fails without a weight tensor.
        return F.batch_norm(x, None, None, torch.ones_like(self.bias), self.bias, training=True, eps=self.eps)


def batch_norm_layer(channels: int, kind: str) -> nn.Module:
    if kind == "affine":
        return nn.BatchNorm2d(channels, track_running_stats=False)
    if kind == "maml":
        return OffsetBatchNorm(channels)
    raise ValueError(f"batch_norm must be 'affine' or 'maml', not {kind!r}")


def conv_block(in_channels: int, out_channels: int, pooling: str, batch_norm: str = "affine") -> nn.Sequential:
    if pooling == "stride":  # MAML's Omniglot network: strided convolutions, no pooling
        conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        return nn.Sequential(conv, batch_norm_layer(out_channels, batch_norm), nn.ReLU())
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)  # mini-ImageNet: 2x2 max-pooling
    return nn.Sequential(conv, batch_norm_layer(out_channels, batch_norm), nn.ReLU(), nn.MaxPool2d(2))


class BatchNormBatchStats(torch.autograd.Function):
    """`F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)`, the same forward and
    backward kernels, with a cheaper double backward (second-order MAML and its family, iMAML's
    Hessian-vector products, WarpGrad's meta-gradient): PyTorch's runs about 30 full-size operations
    per call and was the largest item in the profile of a second-order MAML meta-step on Omniglot; this
    one, `BatchNormBackward.backward`, about 15 (timed with `chunk_layout`: docs/notes/speed.md).
    Equal to PyTorch's to float rounding (tests/test_batch_norm.py, and every chunked-vs-one-task
    comparison of tests/test_batched.py, whose one-task side runs PyTorch's). Differentiable any number
    of times: a third derivative differentiates the closed form."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
        y, mean, invstd = torch.ops.aten.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        x, weight, mean, invstd = ctx.saved_tensors
        return *BatchNormBackward.apply(grad_y, x, weight, mean, invstd, ctx.eps), None


class BatchNormBackward(torch.autograd.Function):
    """(grad_y, x, weight) -> (grad_x, grad_weight, grad_bias) of `BatchNormBatchStats`, by PyTorch's
    kernel; its own backward is the closed form below (the batch statistics recomputed from x are part
    of the function, so the gradient with respect to x includes their dependence on x)."""

    @staticmethod
    def forward(ctx, grad_y: Tensor, x: Tensor, weight: Tensor, mean: Tensor, invstd: Tensor, eps: float):
        ctx.save_for_backward(grad_y, x, weight, mean, invstd)
        ctx.eps = eps
        return torch.ops.aten.native_batch_norm_backward(grad_y, x, weight, None, None, mean, invstd, True, eps,
                                                         [True, True, True])

    @staticmethod
    def backward(ctx, a: Tensor | None, a_weight: Tensor | None, a_bias: Tensor | None):
        """With per channel c over its M = x.numel() / C entries: r = 1/sqrt(var + eps),
        xh = (x - mean) r, <t> = the channel's mean of t, P(t) = t - <t> - xh <t xh> (the projection
        that BatchNorm's backward applies), g = grad_y. The first backward is
        grad_x = weight r P(g), grad_weight = M <g xh>, grad_bias = M <g>. For the incoming gradients
        a (of grad_x), A (grad_weight) and B (grad_bias), with u = <a xh>, w = <g xh>,
        C = <a g> - <a><g>:
            d/dg      = weight r P(a) + A xh + B
            d/dweight = M r (C - u w)
            d/dx      = -weight r^2 ((C - u w) xh + w P(a) + u P(g)) + A r P(g)
        (r and xh depend on x: d xh = r P(dx), d r = -r^2 <xh dx>)."""
        g, x, weight, mean, invstd = ctx.saved_tensors
        dims = [0, *range(2, x.dim())]
        if torch.is_grad_enabled():  # create_graph: this result will be differentiated again, so the
            # statistics enter as functions of x (the formula is exact in (g, x, weight, a, A, B))
            var, mean = torch.var_mean(x, dims, correction=0)
            invstd = (var + ctx.eps).rsqrt()

        def channel(t: Tensor) -> Tensor:  # a per-channel vector broadcast over x
            return t.view(1, -1, *[1] * (x.dim() - 2))

        def avg(t: Tensor) -> Tensor:
            return t.mean(dims, keepdim=True)

        if a is None:
            a = torch.zeros_like(x)
        r, gamma = channel(invstd), channel(weight)
        xh = (x - channel(mean)) * r
        g_mean, w = avg(g), avg(g * xh)
        a_mean, u = avg(a), avg(a * xh)
        c = avg(a * g) - a_mean * g_mean - u * w  # C - u w
        p_a = a - a_mean - xh * u
        p_g = g - g_mean - xh * w
        gamma_r = gamma * r
        grad_g = gamma_r * p_a
        grad_x = -(gamma_r * r) * (c * xh + w * p_a + u * p_g)
        if a_weight is not None:
            grad_g = grad_g + channel(a_weight) * xh
            grad_x = grad_x + channel(a_weight) * r * p_g
        if a_bias is not None:
            grad_g = grad_g + channel(a_bias)
        grad_weight = (c * r).flatten() * (x.numel() // x.shape[1])
        return grad_g, grad_x, grad_weight, None, None, None


def chunk_layout(h: Tensor) -> Tensor:
    """A chunk's feature maps [n, tasks * C, H, W] as the convolutions run them fastest: on the CPU in
    channels-last memory (the same tensor, NHWC strides; oneDNN's convolutions take it as it is; with
    `BatchNormBatchStats`, faster second-order meta-steps, see there); elsewhere as it is."""
    return h.contiguous(memory_format=torch.channels_last) if h.device.type == "cpu" else h


def task_filters(weight: Tensor, maps: Tensor) -> Tensor:
    """Every task's filters [tasks, out, in, kh, kw] as one grouped convolution's [tasks * out, in, kh,
    kw], in the memory format of the maps they meet: oneDNN convolves channels-last maps with
    channels-last filters, and would otherwise copy the filters into that format in every call that
    takes them (the forward, and each backward and double backward: 18 copies per chunk of a MAML
    meta-step)."""
    filters = weight.flatten(0, 1)
    if maps.is_contiguous(memory_format=torch.channels_last) and not maps.is_contiguous():
        return filters.contiguous(memory_format=torch.channels_last)
    return filters


def tasks_in_channels(x: Tensor, layout: bool = True) -> Tensor:
    """A chunk's images [tasks, n, C, H, W] as one batch of n images with the tasks in the channel
    dimension, [n, tasks * C, H, W] (task-major), so that a grouped convolution (a group per task)
    and one BatchNorm call serve every task; in `chunk_layout` unless `layout` is off (WarpGrad's
    warp convolutions, which reshape the maps per task, take them as they are)."""
    tasks, n = x.shape[:2]
    h = x.transpose(0, 1).reshape(n, tasks * x.shape[2], *x.shape[3:])
    return chunk_layout(h) if layout else h


def batch_norm_tasks(norm: nn.Module, h: Tensor, params: Params, prefix: str, tasks: int) -> Tensor:
    """`norm` applied to a chunk laid out [n, tasks * C, H, W]: every (task, channel) normalised over
    its own task's n images. Its scale and offset are each task's from `params` ([tasks, C], named
    prefix + "weight" / "bias"), or, where `params` lacks one (`meta_only`: not adapted), the module's
    own, shared by the tasks; none where the layer has none (the MAML code's: no scale)."""
    def per_task(name: str) -> Tensor | None:
        if prefix + name in params:
            return params[prefix + name].flatten()
        own = getattr(norm, name, None)
        if own is None:  # no scale (the MAML code's): a constant 1, as OffsetBatchNorm.forward
            return torch.ones(h.shape[1], dtype=h.dtype, device=h.device)
        return own.repeat(tasks)
    return BatchNormBatchStats.apply(h, per_task("weight"), per_task("bias"), norm.eps)


class Conv4(nn.Module):
    """4 x [3x3 conv, BatchNorm, ReLU(, max-pool)] + linear head.

    pooling='stride': 64 filters, stride 2, features averaged over space (MAML, Omniglot 28x28).
    pooling='max': 32 filters, 2x2 max-pooling, features flattened (MAML, mini-ImageNet 84x84).
    batch_norm: 'affine' or 'maml' (see the module docstring).
    head_init: the output layer's weights, 'xavier' (Xavier-uniform, as the convolutions) or 'normal'
    (standard normal, std 1: cbfinn/maml maml.py construct_conv_weights, w5 = tf.random_normal, for
    every data set but mini-ImageNet); biases start at zero either way.
    The iMAML code's choices (make_conv_network; all off by default):
    features: 'mean' (over space; the default for pooling='stride') or 'flatten' (C x H x W, the
      default for pooling='max'; the iMAML code flattens its 2x2x64 maps).
    init: 'xavier' (Xavier-uniform weights, zero biases) or 'imaml' (every convolution and the head:
      xavier_uniform_ with gain 1.73, biases uniform in [0, 0.05]; BatchNorm at PyTorch's 1 and 0).
      (Its ZeroPad2d((0, 1, 0, 1)) before conv3 is left out: it appends the zero row and column that
      conv3's own padding supplies on that side of the 7x7 maps, and the stride-2 windows never reach
      the one beyond, so the function is the same; tests/test_protocols.py checks it.)
    stroke: 'bright' (the input as given: our caches' strokes are bright, 255) or 'dark': the network
      sees 1 - x, dark strokes on a white background, as the iMAML code's images (dataset.py: PIL
      convert('L') of the PNGs, not inverted, / 255).
    """

    def __init__(self, in_channels: int, ways: int, filters: int = 64, pooling: str = "stride",
                 image_size: int = 28, batch_norm: str = "affine", head_init: str = "xavier",
                 features: str | None = None, init: str = "xavier", stroke: str = "bright"):
        super().__init__()
        if pooling not in ("stride", "max"):
            raise ValueError(f"pooling must be 'stride' or 'max', not {pooling!r}")
        if head_init not in ("xavier", "normal"):
            raise ValueError(f"head_init must be 'xavier' or 'normal', not {head_init!r}")
        features = features or ("mean" if pooling == "stride" else "flatten")
        if features not in ("mean", "flatten"):
            raise ValueError(f"features must be 'mean' or 'flatten', not {features!r}")
        if init not in ("xavier", "imaml"):
            raise ValueError(f"init must be 'xavier' or 'imaml', not {init!r}")
        if init == "imaml" and head_init != "xavier":
            raise ValueError("init 'imaml' initialises the head itself (gain 1.73); head_init 'normal' is the MAML code's")
        if stroke not in ("bright", "dark"):
            raise ValueError(f"stroke must be 'bright' or 'dark', not {stroke!r}")
        self.pooling, self.flatten, self.dark_stroke = pooling, features == "flatten", stroke == "dark"
        channels = [in_channels] + [filters] * 4
        self.features = nn.Sequential(*(conv_block(channels[i], channels[i + 1], pooling, batch_norm)
                                        for i in range(4)))
        # parameters meta-learned but never adapted by the inner loop: the MAML code's BatchNorm offsets
        self.meta_only = tuple(f"features.{i}.1.bias" for i in range(4)) if batch_norm == "maml" else ()
        size = image_size
        for _ in range(4):  # the maps' side after each block (stride 2, padding 1: ceil; pooling: floor)
            size = (size + 1) // 2 if pooling == "stride" else size // 2
        self.head = nn.Linear(filters * size * size if self.flatten else filters, ways)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                if init == "imaml":  # weight then bias, layer by layer, as make_conv_network draws them
                    nn.init.xavier_uniform_(module.weight, gain=1.73)
                    nn.init.uniform_(module.bias, 0.0, 0.05)
                    continue
                if module is self.head and head_init == "normal":
                    nn.init.normal_(module.weight, std=1.0)
                else:
                    nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def pixels(self, x: Tensor) -> Tensor:
        """What the first convolution sees: x, or 1 - x with `stroke` dark (see the class docstring)."""
        return 1 - x if self.dark_stroke else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(self.pixels(x))
        h = h.flatten(1) if self.flatten else h.mean(dim=(2, 3))
        return self.head(h)

    def forward_tasks(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """`forward` for many tasks at once: params name -> [tasks, *shape], x [tasks, n, C, H, W]
        -> [tasks, n, ways]. The tasks ride in the channel dimension, [n, tasks * C, H, W]: one
        grouped convolution (a group per task) applies every task's filters, and one BatchNorm call
        normalises every (task, channel) over its own task's n images, as `forward` does."""
        tasks = x.shape[0]
        h = tasks_in_channels(self.pixels(x))
        for i, (_, norm, *rest) in enumerate(self.features):
            h = self.conv_tasks(i, params, h, tasks)
            h = batch_norm_tasks(norm, h, params, f"features.{i}.1.", tasks)
            for layer in rest:  # ReLU (and max-pooling): per channel, so per task
                h = layer(h)
        return self.head_tasks(params, h, tasks)

    # The two steps of `forward_tasks` that the networks built on Conv4 (mtnet.py's TransformedNetwork,
    # warpgrad.py's WarpedNetwork) share; `prefix` is what their names put before Conv4's own.
    def conv_tasks(self, i: int, params: Params, h: Tensor, tasks: int, prefix: str = "") -> Tensor:
        """Block i's convolution of a chunk's maps [n, tasks * C, H, W]: one grouped convolution,
        every task with its own filters and bias (params prefix + "features.{i}.0.*", [tasks, ...])."""
        conv = self.features[i][0]
        weight, bias = params[f"{prefix}features.{i}.0.weight"], params[f"{prefix}features.{i}.0.bias"]
        return F.conv2d(h, task_filters(weight, h), bias.flatten(), conv.stride, conv.padding, groups=tasks)

    def head_tasks(self, params: Params, h: Tensor, tasks: int, prefix: str = "") -> Tensor:
        """The last maps [n, tasks * C, H, W] as `forward`'s features (flattened, or averaged over
        space) through every task's own head -> [tasks, n, ways]."""
        h = h.flatten(2) if self.flatten else h.mean(dim=(2, 3))
        features = h.reshape(len(h), tasks, -1).transpose(0, 1)  # [tasks, n, features], forward's order
        return torch.baddbmm(params[f"{prefix}head.bias"].unsqueeze(1), features,
                             params[f"{prefix}head.weight"].transpose(1, 2))


class OmniConv(nn.Module):
    """The Leap/WarpGrad papers' Omniglot network (flennerhag/warpgrad src/omniglot/model.py, OmniConv):
    4 x [3x3 conv, stride 1, padding 1; 2x2 max-pool; BatchNorm; ReLU] + linear head, 28 -> 1 pixel.
    Unlike the other networks here, its BatchNorm keeps running statistics (momentum 0.1), as the
    official code: they follow the adaptation in train mode and are what eval mode uses at test
    (`reset_running_stats` before each task, as its init_adaptation). Used through functional_call
    like the others, the running statistics are the module's own buffers, so tasks using them run
    one at a time (metalearn/alphabets/). PyTorch's default initialisation, as the official code."""

    def __init__(self, in_channels: int = 1, ways: int = 20, filters: int = 64):
        super().__init__()
        channels = [in_channels] + [filters] * 4
        self.features = nn.Sequential(*(nn.Sequential(nn.Conv2d(channels[i], filters, 3, padding=1), nn.MaxPool2d(2),
                                                      nn.BatchNorm2d(filters), nn.ReLU()) for i in range(4)))
        self.head = nn.Linear(filters, ways)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))

    def reset_running_stats(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()


class MLP(nn.Module):
    """Fully connected ReLU network; MAML's sinusoid regressor is MLP(1, [40, 40], 1).

    init: 'pytorch' (nn.Linear's own: weights and biases uniform in +-1/sqrt(fan_in)) or 'maml'
    (cbfinn/maml maml.py construct_fc_weights, and yoonholee/MT-net's copy of it: weights from a normal
    with std 0.01 truncated at two standard deviations, as tf.truncated_normal; biases zero).
    """

    def __init__(self, in_features: int = 1, hidden: tuple[int, ...] = (40, 40), out_features: int = 1,
                 init: str = "pytorch"):
        super().__init__()
        if init not in ("pytorch", "maml"):
            raise ValueError(f"init must be 'pytorch' or 'maml', not {init!r}")
        sizes = [in_features, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], out_features))
        self.net = nn.Sequential(*layers)
        if init == "maml":
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    nn.init.trunc_normal_(layer.weight, std=0.01, a=-0.02, b=0.02)
                    nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward_tasks(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """`forward` for many tasks at once: params name -> [tasks, *shape], x [tasks, n, in]
        -> [tasks, n, out]; each linear layer is one batched matrix product over the tasks."""
        for i, layer in enumerate(self.net):
            if isinstance(layer, nn.Linear):
                x = torch.baddbmm(params[f"net.{i}.bias"].unsqueeze(1), x, params[f"net.{i}.weight"].transpose(1, 2))
            else:
                x = layer(x)
        return x


def build_model(bench: dict, extra_inputs: int = 0) -> nn.Module:
    """The network a benchmark's settings call for (`extra_inputs`: more input features than the
    task's x, e.g. the oracle baseline's true task parameters)."""
    if bench["model"] == "mlp":  # (benchmarks.<b>.mlp_init: the MAML code's initialisation or PyTorch's)
        return MLP(in_features=1 + extra_inputs, init=bench.get("mlp_init", "pytorch"))
    # the MAML code's network choices (params.yaml, benchmarks.<b>.batch_norm / head_init), and which
    # way round the strokes reach the network (benchmarks.<b>.stroke)
    choices = {"batch_norm": bench.get("batch_norm", "affine"), "head_init": bench.get("head_init", "xavier"),
               "stroke": bench.get("stroke", "bright")}
    if bench["model"] == "conv4":
        return Conv4(1, bench["ways"], filters=64, pooling="stride", image_size=28, **choices)
    if bench["model"] == "conv4-imaml":  # the iMAML code's Omniglot network (make_conv_network)
        return Conv4(1, bench["ways"], filters=64, pooling="stride", image_size=28, features="flatten", init="imaml",
                     **choices)
    if bench["model"] == "conv4-maxpool":
        return Conv4(3, bench["ways"], filters=32, pooling="max", image_size=84, **choices)
    raise ValueError(f"unknown model {bench['model']!r}")
