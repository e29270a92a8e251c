"""Progress lines in batch logs: counts, rate and ETA (a resumed epoch's earlier steps count as
done but not in the rate)."""

import io

from faextract.runtime import progress as progress_module
from faextract.runtime.progress import Progress


def test_a_resumed_task_shows_its_earlier_steps_but_rates_only_this_runs(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    with Progress(plain=True, interval=0.0, unit="batches", stream=out) as p:
        task = p.start("epoch 2/2", total=25, done=20)  # 20 of 25 done before a stop
        clock[0] += 2.0
        p.advance(task, 1)  # 1 batch in 2 s this run
    line = out.getvalue().strip().splitlines()[-1]
    assert "21/25 (84%)" in line
    assert "0.50 batches/s" in line  # not (21 / 2) batches/s
    assert "ETA 8s" in line  # the 4 left at 0.5/s


def test_a_fresh_task_rates_everything_it_did():
    out = io.StringIO()
    with Progress(plain=True, interval=0.0, stream=out) as p:
        task = p.start("reading", total=4)
        p.advance(task, 2)
        p.finish(task)
    lines = out.getvalue().strip().splitlines()
    assert "2/4 (50%)" in lines[0] and "ETA" in lines[0]
    assert "done in" in lines[-1]
