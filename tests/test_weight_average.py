"""WeightEMAHandler: the exponential moving average of the weights, loaded into the network at the end."""

import pytest
import torch
from ignite.engine import Engine

from scripts.handlers.weight_average import WeightEMAHandler


def _engine(net, values):
    """An engine whose iteration i sets the single weight of ``net`` to values[i]."""

    def step(engine, value):
        with torch.no_grad():
            net.weight.fill_(value)

    return Engine(step)


def test_final_weights_are_the_exponential_average():
    net = torch.nn.Linear(1, 1, bias=False)
    values = [1.0, 2.0, 4.0, 8.0]
    handler = WeightEMAHandler(net, decay=0.5)
    engine = _engine(net, values)
    handler.attach(engine)
    engine.run(values, max_epochs=1)
    expected = values[0]  # the first update copies, then avg = 0.5 avg + 0.5 current
    for v in values[1:]:
        expected = 0.5 * expected + 0.5 * v
    assert net.weight.item() == pytest.approx(expected)  # 5.875, not the last value 8
    assert handler.state_dict()["n_averaged"].item() == len(values)


def test_start_iteration_skips_early_weights_and_decay_zero_is_off():
    net = torch.nn.Linear(1, 1, bias=False)
    handler = WeightEMAHandler(net, decay=0.5, start_iteration=2)
    engine = _engine(net, [100.0, 100.0, 2.0, 4.0])
    handler.attach(engine)
    engine.run([100.0, 100.0, 2.0, 4.0], max_epochs=1)
    assert net.weight.item() == pytest.approx(0.5 * 2.0 + 0.5 * 4.0)
    off = torch.nn.Linear(1, 1, bias=False)
    none = WeightEMAHandler(off, decay=0.0)
    engine = _engine(off, [1.0, 2.0])
    none.attach(engine)
    engine.run([1.0, 2.0], max_epochs=1)
    assert off.weight.item() == 2.0 and none.state_dict() == {}
    with pytest.raises(ValueError, match="decay"):
        WeightEMAHandler(off, decay=1.0)


def test_state_dict_resumes_the_average():
    net = torch.nn.Linear(1, 1, bias=False)
    first = WeightEMAHandler(net, decay=0.5)
    engine = _engine(net, [1.0, 3.0])
    first.attach(engine)
    engine.state.max_epochs = None
    for value in (1.0, 3.0):  # two iterations by hand, no COMPLETED
        engine.state.iteration += 1
        net.weight.data.fill_(value)
        first.update(engine)
    saved = first.state_dict()
    resumed = WeightEMAHandler(net, decay=0.5)
    resumed.load_state_dict(saved)
    net.weight.data.fill_(5.0)
    resumed.update(engine)
    resumed.apply()
    assert net.weight.item() == pytest.approx(0.5 * (0.5 * 1.0 + 0.5 * 3.0) + 0.5 * 5.0)


def test_checkpoints_from_before_the_average_resume_only_when_it_is_off(tmp_path):
    from scripts.handlers.checkpoint import TrainingCheckpointHandler

    net = torch.nn.Linear(1, 1, bias=False)

    def trainer():
        return Engine(lambda engine, batch: None)

    old = TrainingCheckpointHandler(tmp_path, {"network": net}, final_filename=None)  # a 0.2.0-style run
    engine = trainer()
    old.attach(engine)
    engine.run([0], max_epochs=1)
    off = TrainingCheckpointHandler(tmp_path, {"network": net, "weight_average": WeightEMAHandler(net, 0.0)},
                                    final_filename=None)
    engine = trainer()
    off.attach(engine)
    engine.run([0], max_epochs=2)  # nothing to restore for the switched-off average: resumes
    assert off.resumed_from is not None and engine.state.epoch == 2
    on = TrainingCheckpointHandler(tmp_path / "b", {"network": net}, final_filename=None)
    engine = trainer()
    on.attach(engine)
    engine.run([0], max_epochs=1)
    with_average = TrainingCheckpointHandler(tmp_path / "b", {"network": net, "weight_average": WeightEMAHandler(net, 0.9)},
                                             final_filename=None)
    engine = trainer()
    with_average.attach(engine)
    with pytest.raises(ValueError, match="lacks \\['weight_average'\\]"):
        engine.run([0], max_epochs=2)


def test_cpu_bf16_reads_command_line_spellings():
    from scripts.workflows.engines import _switch

    assert _switch("false", "cpu_bf16") is False and _switch("True", "cpu_bf16") is True and _switch(False, "x") is False
    with pytest.raises(ValueError, match="cpu_bf16 must be true or false, got 'no'"):
        _switch("no", "cpu_bf16")
