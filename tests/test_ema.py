"""The EMA of weights: decay_t = min(decay, (1 + t) / (10 + t)), so short runs export recent weights."""

import torch

from regvq_cli.train.common import EMA


def test_decay_warms_up_to_its_cap():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.999)
    for t, want in ((0, 0.1), (8, 0.5), (989, 990 / 999), (10**6, 0.999)):
        ema.updates = t
        with torch.no_grad():
            ema.model.weight.zero_()
            model.weight.fill_(1.0)
        ema.update(model)
        assert abs(ema.model.weight[0, 0].item() - (1 - want)) < 1e-6, t


def test_a_short_run_exports_mostly_recent_weights():
    """After 1,200 updates of a model that jumped at update 600, the average has (nearly) forgotten the old one
    (with a fixed 0.999 decay and no warm-up, 55% of it would remain)."""
    model = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(model, decay=0.999)
    for step in range(1200):
        with torch.no_grad():
            model.weight.fill_(0.0 if step < 600 else 1.0)
        ema.update(model)
    assert ema.model.weight.item() > 0.99
