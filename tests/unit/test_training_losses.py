"""Losses against closed forms (METHODS.md §1)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.losses import AlphaSchedule, LossError, create_loss, label_smoothing, maxsup


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 7, generator=g, dtype=torch.float64) * 3  # (n, K)
    y = torch.randint(0, 7, (64,), generator=g)
    return z, y


def test_ls_equals_ce_on_smoothed_targets(batch) -> None:
    z, y = batch
    alpha, k = 0.2, z.shape[1]
    q = (1 - alpha) * F.one_hot(y, k).double() + alpha / k  # (n, K)
    expected = -(q * F.log_softmax(z, 1)).sum(1)
    got = label_smoothing(z.double(), y, alpha, reduction="none")
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


def test_ls_equals_ce_plus_penalty_on_true_logit(batch) -> None:
    z, y = batch
    alpha = 0.3
    ce = F.cross_entropy(z, y, reduction="none")
    closed = ce + alpha * (z.gather(1, y[:, None]).squeeze(1) - z.mean(1))
    torch.testing.assert_close(label_smoothing(z, y, alpha, "none").double(), closed,
                               atol=1e-5, rtol=1e-5)


def test_maxsup_value_and_gradient_closed_form(batch) -> None:
    z, y = batch
    alpha, k = 0.15, z.shape[1]
    z32 = z.float().requires_grad_(True)
    loss = maxsup(z32, y, alpha, reduction="none")
    top = z32.detach().argmax(1)
    expected_value = (F.cross_entropy(z32.detach(), y, reduction="none")
                      + alpha * (z32.detach().max(1).values - z32.detach().mean(1)))
    torch.testing.assert_close(loss.detach(), expected_value)
    loss.sum().backward()
    # CE gradient softmax − onehot(y), plus α(1 − 1/K) on the top-1 logit and −α/K elsewhere
    expected_grad = (F.softmax(z32.detach(), 1) - F.one_hot(y, k)
                     + alpha * (F.one_hot(top, k) - 1.0 / k))
    torch.testing.assert_close(z32.grad, expected_grad.float(), atol=1e-6, rtol=1e-5)
    # the penalty hits the top-1 logit even where the prediction is wrong
    assert bool((top != y).any())


def test_maxsup_differs_from_ls_only_where_prediction_is_wrong(batch) -> None:
    z, y = batch
    ms = maxsup(z, y, 0.1, "none")
    ls_closed = F.cross_entropy(z, y, reduction="none") + 0.1 * (
        z.gather(1, y[:, None]).squeeze(1) - z.mean(1))
    right = z.argmax(1) == y
    torch.testing.assert_close(ms[right].double(), ls_closed[right], atol=1e-5, rtol=1e-5)
    assert bool((ms[~right].double() > ls_closed[~right] + 1e-6).all())


def test_reductions(batch) -> None:
    z, y = batch
    for name in ("ce", "ls", "maxsup"):
        loss = create_loss(name, "0.1", epochs=3)
        per = loss(z, y, reduction="none")
        assert per.shape == (64,)
        torch.testing.assert_close(loss(z, y), per.mean())


def test_alpha_schedule_moves_each_epoch() -> None:
    s = AlphaSchedule.parse("0.1:0.2")
    assert [round(s.at(t, 10), 10) for t in (0, 1, 5, 9)] == [0.1, 0.11, 0.15, 0.19]
    loss = create_loss("maxsup", "0.1:0.2", epochs=4)
    assert [loss.set_epoch(t) for t in range(4)] == pytest.approx([0.1, 0.125, 0.15, 0.175])
    assert AlphaSchedule.parse("0.05").at(7, 10) == 0.05
    assert str(AlphaSchedule.parse("0.1:0.2")) == "0.1:0.2"


@pytest.mark.parametrize("alpha", ["x", "0.1:0.2:0.3", "1.5", "-0.1"])
def test_bad_alpha_is_a_clear_error(alpha: str) -> None:
    with pytest.raises(LossError, match="--alpha"):
        create_loss("ls", alpha)


def test_unknown_loss_lists_valid_names() -> None:
    with pytest.raises(LossError, match="valid: ce, ls, maxsup"):
        create_loss("focal")
