"""train.ema: a moving average of the weights is what validation, best.pt and embed use."""

from __future__ import annotations

import pytest
import torch

from faextract.checkpoint import load_checkpoint
from faextract.config import ConfigError, load_config
from faextract.train import train
from faextract.train.averaging import WeightAverage


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))


def test_the_average_follows_the_formula_and_applied_puts_the_live_weights_back():
    net = _net()
    avg = WeightAverage(net, decay=0.9)
    expected = {k: v.detach().clone().float() for k, v in net.state_dict().items()}
    for n in range(30):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net.train()(torch.randn(5, 3))  # moves the BatchNorm statistics and its counter
        avg.update(net)
        d = min(0.9, (1 + n) / (10 + n))
        for k, v in net.state_dict().items():
            if v.is_floating_point():
                expected[k] = d * expected[k] + (1 - d) * v.float()
            else:
                expected[k] = v.clone()
    live = {k: v.clone() for k, v in net.state_dict().items()}
    averaged = avg.state_dict(net)
    for k in expected:
        torch.testing.assert_close(averaged[k], expected[k].to(live[k].dtype))
    assert averaged["1.num_batches_tracked"] == 30  # counters are copied, not averaged
    assert not torch.allclose(averaged["0.weight"], live["0.weight"])
    with avg.applied(net):
        torch.testing.assert_close(net.state_dict()["0.weight"], averaged["0.weight"])
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, live[k])


def test_ema_outside_zero_to_one_is_a_config_error():
    with pytest.raises(ConfigError, match=r"train.ema: expected a number in \[0, 1\)"):
        load_config(None, ["train.ema=1.0"])
    with pytest.raises(ConfigError, match=r"train.ema"):
        load_config(None, ["train.ema=-0.1"])


def test_checkpoints_hold_the_average_and_resume_continues_both(tmp_path, tiny_config):
    """best.pt/last.pt hold the averaged weights (what embed builds), the live ones ride in the
    training state, and a resumed run ends where an uninterrupted one does."""
    args = ("train.ema=0.8", "train.deterministic=true")
    full = tmp_path / "full"
    train(tiny_config("train.epochs=2", *args), full, plain_progress=True)
    part = tmp_path / "part"
    train(tiny_config("train.epochs=1", *args), part, plain_progress=True)
    train(tiny_config("train.epochs=2", *args), part, resume=True, plain_progress=True)

    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(part / "last.pt")
    assert a.training.live_weights is not None
    moved = [k for k, v in a.state_dict.items()
             if v.is_floating_point() and not torch.allclose(v, a.training.live_weights[k])]  # fmt: skip
    assert moved, "the averaged weights equal the live ones"
    for k in a.state_dict:
        torch.testing.assert_close(a.state_dict[k], b.state_dict[k], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(
            a.training.live_weights[k], b.training.live_weights[k], rtol=1e-4, atol=1e-5
        )
    model = a.build_model()  # what embed runs: the average
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, a.state_dict[k])
    assert a.for_inference().training is None  # a shared copy carries only the average


def test_without_ema_the_checkpoint_has_no_second_copy(tmp_path, tiny_config):
    train(tiny_config("train.epochs=1"), tmp_path / "run", plain_progress=True)
    assert load_checkpoint(tmp_path / "run" / "last.pt").training.live_weights is None
