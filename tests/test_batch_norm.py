"""models.BatchNormBatchStats: PyTorch's batch-statistics BatchNorm with a hand-written double backward.
Its first and second derivatives must be PyTorch's (F.batch_norm), checked in float64."""
import pytest
import torch
import torch.nn.functional as F

from metalearn.models import BatchNormBatchStats

EPS = 1e-3


def ours(x, weight, bias):
    return BatchNormBatchStats.apply(x, weight, bias, EPS)


def pytorch(x, weight, bias):
    return F.batch_norm(x, None, None, weight, bias, training=True, eps=EPS)


def inputs(shape=(3, 4, 5, 5), weight_grad=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()
    weight = (torch.rand(shape[1], generator=g, dtype=torch.float64) + 0.5).requires_grad_(weight_grad)
    bias = torch.randn(shape[1], generator=g, dtype=torch.float64).requires_grad_()
    return x, weight, bias


def test_first_and_second_derivatives_pass_torchs_numerical_checks():
    x, weight, bias = inputs()
    assert torch.autograd.gradcheck(ours, (x, weight, bias))
    assert torch.autograd.gradgradcheck(ours, (x, weight, bias))


@pytest.mark.parametrize("shape", [(3, 4, 5, 5), (6, 8, 2, 3), (5, 3)])
@pytest.mark.parametrize("weight_grad", [True, False])
def test_second_derivatives_equal_pytorchs(shape, weight_grad):
    """A scalar of the first derivatives (as a meta-loss of an inner step is), differentiated again;
    the upstream gradient depends on x too (a loss of y, as in a network)."""
    def second(batch_norm):
        x, weight, bias = inputs(shape, weight_grad)
        leaves = [t for t in (x, weight, bias) if t.requires_grad]
        y = batch_norm(x, weight, bias)
        loss = (torch.sin(y) * y).sum()
        first = torch.autograd.grad(loss, leaves, create_graph=True)
        meta = sum((f * torch.cos(f)).sum() for f in first)
        return first, torch.autograd.grad(meta, leaves)

    (first_ours, second_ours), (first_torch, second_torch) = second(ours), second(pytorch)
    for a, b in zip(first_ours + second_ours, first_torch + second_torch):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_a_hessian_vector_product_equals_pytorchs():
    """iMAML's use: grad of (grad . v), with only x's gradient differentiated again."""
    def hvp(batch_norm):
        x, weight, bias = inputs()
        loss = (batch_norm(x, weight, bias) ** 3).sum()
        (grad_x,) = torch.autograd.grad(loss, [x], create_graph=True)
        v = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
        return torch.autograd.grad(grad_x, [x, weight, bias], grad_outputs=v)

    for a, b in zip(hvp(ours), hvp(pytorch)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def explicit(x, weight, bias):
    """BatchNorm written out in differentiable operations: derivatives of any order by autograd."""
    var, mean = torch.var_mean(x, [0, 2, 3], correction=0, keepdim=True)
    return (x - mean) * (var + EPS).rsqrt() * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


def test_third_derivatives_equal_explicit_batch_norms():
    """Not needed by any algorithm here (none differentiates a meta-gradient; PyTorch's batch_norm
    refuses to), but never wrong: with create_graph the closed form is differentiated again, the
    statistics as functions of x."""
    x, weight, bias = inputs((4, 3, 2, 2))
    assert torch.autograd.gradgradcheck(
        lambda x, weight, bias: torch.autograd.grad((ours(x, weight, bias) ** 3).sum(), [x, weight],
                                                    create_graph=True), (x, weight, bias))

    def third(batch_norm):
        first = torch.autograd.grad((batch_norm(x, weight, bias) ** 3).sum(), [x, weight], create_graph=True)
        second = torch.autograd.grad(sum((f ** 2).sum() for f in first), [x, weight], create_graph=True)
        return torch.autograd.grad(sum((s * torch.sin(s)).sum() for s in second), [x, weight, bias])

    for a, b in zip(third(ours), third(explicit)):  # entries up to ~1e8 here: relative agreement
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)
