"""faextract.evaluate: each metric on constructed data with a known answer, the probe's
protection against leakage, and the command end to end with its one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from faextract.cli import app
from faextract.evaluate import (
    Calendar,
    IndexSpec,
    blocked_folds,
    box_percentile,
    effective_rank,
    linear_cka,
    month_jump,
    probe,
    regimes,
    relative_change,
    seasonal_cycle,
    seasonal_share,
)
from faextract.evaluate.baselines import EOFFeatures
from faextract.evaluate.regimes import dwell_time
from faextract.testing import assert_one_line_error

runner = CliRunner()


def _daily_calendar(n: int, start=(2000, 1, 1)) -> Calendar:
    import datetime

    import cftime

    t0 = cftime.DatetimeNoLeap(*start)
    times = np.array([t0 + datetime.timedelta(days=i) for i in range(n)])
    return Calendar.of(times, "noleap")


def _monthly_calendar(n: int) -> Calendar:
    import cftime

    times = np.array([cftime.DatetimeNoLeap(2000 + i // 12, i % 12 + 1, 15) for i in range(n)])
    return Calendar.of(times, "noleap")


def _ar1(rng, n, phi, d=1):
    x = np.zeros((n, d))
    for i in range(1, n):
        x[i] = phi * x[i - 1] + np.sqrt(1 - phi**2) * rng.standard_normal(d)
    return x


def test_probe_recovers_a_planted_linear_signal(rng):
    z = _ar1(rng, 600, 0.9, 8)
    y = z @ rng.standard_normal(8) + 0.1 * rng.standard_normal(600)
    r2 = probe(z, {"y": y}, leads=(0,), window=6)["y"][0]
    assert r2 > 0.95


def test_a_probe_on_pure_noise_scores_about_zero(rng):
    z = rng.standard_normal((600, 16))
    y = _ar1(rng, 600, 0.95)[:, 0]  # red target: blocks have other means, as real indices do
    r2 = probe(z, {"y": y}, leads=(0, 3), window=12)["y"]
    for lead in (0, 3):
        assert -0.3 < r2[lead] < 0.05


def test_blocked_folds_keep_the_gap(rng):
    times = np.arange(300)
    folds = blocked_folds(times, 5, gap=15)
    assert len(folds) == 5
    tested = np.concatenate([te for _, te in folds])
    assert np.array_equal(np.sort(tested), times)  # every row tested once
    for train, test in folds:
        d = np.abs(times[train][:, None] - times[test][None, :]).min()
        assert d >= 15
        assert np.all(np.diff(test) == 1)  # contiguous


def test_shifted_folds_wrap_around_and_keep_the_gap_on_both_pieces():
    times = np.r_[np.arange(0, 100), np.arange(103, 240)]  # a hole of missing rows
    for shift in (0.25, 0.5, 0.75):
        folds = blocked_folds(times, 6, gap=12, shift=shift)
        tested = np.concatenate([te for _, te in folds])
        assert np.array_equal(np.sort(tested), np.arange(times.size))  # each row tested once
        wrapped = [te for _, te in folds if not np.all(np.diff(te) == 1)]
        assert len(wrapped) == 1  # the record's end and its start
        assert wrapped[0][0] == 0 and wrapped[0][-1] == times.size - 1
        for train, test in folds:
            assert np.abs(times[train][:, None] - times[test][None, :]).min() >= 12
    assert [te.tolist() for _, te in blocked_folds(times, 6, 12, shift=0.0)] == [
        te.tolist() for _, te in blocked_folds(times, 6, 12)
    ]
    with pytest.raises(ValueError, match="shift"):
        blocked_folds(times, 6, 12, shift=1.0)


def test_repeats_average_the_score_over_block_placements(rng):
    z = _ar1(rng, 240, 0.9, 4)
    y = z @ rng.standard_normal(4) + 0.5 * rng.standard_normal(240)
    one = probe(z, {"y": y}, leads=(0, 2), window=6)["y"]
    four = probe(z, {"y": y}, leads=(0, 2), window=6, repeats=4)["y"]
    # the first placement is the unshifted one; the others differ, and all see the signal
    import importlib

    probe_module = importlib.import_module("faextract.evaluate.probe")  # (the package's
    # `probe` attribute is the function)

    rows = np.arange(240)
    for lead in (0, 2):
        per_shift = [
            probe_module._scores(
                y[lead:, None],
                probe_module._held_out_predictions(
                    probe_module.FixedFeatures(z), y[lead:, None], rows[: 240 - lead],
                    blocked_folds(rows[: 240 - lead], 5, 6 + lead, r / 4), 240 - lead,
                ),
                ("r2",),
            )[0, 0]
            for r in range(4)
        ]  # fmt: skip
        assert per_shift[0] == pytest.approx(one[lead])
        assert four[lead] == pytest.approx(np.mean(per_shift))
        assert len(set(np.round(per_shift, 6))) == 4
        assert four[lead] > (0.7 if lead == 0 else 0.4)  # (z decays at 0.9 a step)
    noise = probe(rng.standard_normal((240, 8)), {"y": y}, leads=(0,), window=6, repeats=3)
    assert -0.3 < noise["y"][0] < 0.05


def test_an_unseen_probe_scores_only_time_the_encoder_never_saw(rng):
    """Features that carry a target on the steps their encoder trained on and nothing on new
    steps (memorized) look good on blocks that are mostly seen steps; the unseen probe tells."""
    from faextract.evaluate.probe import MIN_UNSEEN, unseen_split

    T = 300
    y = _ar1(rng, T, 0.8)[:, 0]
    z = np.c_[y + 0.1 * rng.standard_normal(T), rng.standard_normal((T, 3))]
    unseen = np.zeros(T, dtype=bool)
    unseen[240:] = True
    memorized = z.copy()
    memorized[240:, 0] = rng.standard_normal(60)
    assert probe(memorized, {"y": y}, leads=(0,), window=6)["y"][0] > 0.4
    assert probe(memorized, {"y": y}, leads=(0,), window=6, unseen=unseen)["y"][0] < 0.1
    assert probe(z, {"y": y}, leads=(0,), window=6, unseen=unseen)["y"][0] > 0.9
    ((train, test),) = unseen_split(np.arange(T - 2), unseen, lead=2, gap=8)
    assert test.min() == 240 and test.max() == T - 3
    assert train.max() == 240 - 8  # both steps seen, and the gap kept from the first test row
    few = np.zeros(T, dtype=bool)
    few[T - MIN_UNSEEN + 1 :] = True
    assert np.isnan(probe(z, {"y": y}, leads=(0,), window=6, unseen=few)["y"][0])


def test_on_a_shifted_unseen_stretch_correlation_sees_what_r2_misses(rng):
    """Features that follow the target on new steps but sit at another level there (drift):
    the unseen R^2, taken around the stretch's own mean, is far below 0, the correlation of
    the predictions is near 1; features that carry nothing score ~0 on both."""
    T = 300
    y = _ar1(rng, T, 0.8)[:, 0]
    unseen = np.zeros(T, dtype=bool)
    unseen[240:] = True
    shifted = np.c_[y + 0.05 * rng.standard_normal(T), rng.standard_normal((T, 2))]
    shifted[240:, 0] += 3 * y.std()
    args = dict(leads=(0,), window=6, unseen=unseen)
    assert probe(shifted, {"y": y}, **args)["y"][0] < -2
    assert probe(shifted, {"y": y}, score="correlation", **args)["y"][0] > 0.95
    noise = probe(rng.standard_normal((T, 3)), {"y": y}, score="correlation", **args)["y"][0]
    assert abs(noise) < 0.35
    blocks = probe(shifted[:240], {"y": y[:240]}, leads=(0, 2), window=6, score="correlation")
    assert blocks["y"][0] > 0.95 and 0.3 < blocks["y"][2] < 0.9  # (y decays at 0.8 a step)
    with pytest.raises(ValueError, match="score must be one of r2, correlation"):
        probe(shifted, {"y": y}, leads=(0,), window=6, score="mse")


def test_unseen_difference_tells_a_real_lead_from_one_the_stretch_cannot_resolve(rng):
    """The unseen R^2 of one feature set minus another's, with a block-bootstrap interval: a
    feature set that carries the target beats one that carries noise with an interval above
    0; two that carry it equally well differ by an interval that holds 0; the same features
    twice differ by exactly 0; a fitted baseline (EOFs, refitted on the training rows) is
    scored on the same steps as fixed features."""
    from faextract.evaluate.probe import MIN_UNSEEN, probe_scores, unseen_difference

    T = 300
    y = _ar1(rng, T, 0.8)[:, 0]
    unseen = np.zeros(T, dtype=bool)
    unseen[240:] = True
    good = np.c_[y + 0.2 * rng.standard_normal(T), rng.standard_normal((T, 2))]
    alike = np.c_[y + 0.2 * rng.standard_normal(T), rng.standard_normal((T, 2))]
    noise = rng.standard_normal((T, 3))
    args = dict(leads=(0, 2), window=6, unseen=unseen)
    d = unseen_difference(good, noise, {"y": y}, **args)["y"]
    own = probe_scores(good, {"y": y}, **args)["r2"]["y"]
    other = probe_scores(noise, {"y": y}, **args)["r2"]["y"]
    for lead in (0, 2):
        diff, low, high = d[lead]
        assert diff == pytest.approx(own[lead] - other[lead])  # the probes' own scores
        assert low <= diff <= high
    assert d[0][1] > 0.6  # lead 0: y itself against nothing (at lead 2 the interval is wide)
    diff, low, high = unseen_difference(good, alike, {"y": y}, **args)["y"][0]
    assert abs(diff) < 0.1 and low < 0 < high
    assert unseen_difference(good, good, {"y": y}, **args)["y"][0] == (0.0, 0.0, 0.0)
    # the draws are seeded: the same call gives the same interval
    assert unseen_difference(good, alike, {"y": y}, **args) == unseen_difference(
        good, alike, {"y": y}, **args)  # fmt: skip
    field = np.c_[y, rng.standard_normal((T, 5))] @ rng.standard_normal((6, 20))
    eof = unseen_difference(good, EOFFeatures(field, 3), {"y": y}, **args)["y"][0]
    eof_own = probe_scores(EOFFeatures(field, 3), {"y": y}, **args)["r2"]["y"][0]
    assert eof[0] == pytest.approx(own[0] - eof_own)
    few = np.zeros(T, dtype=bool)
    few[T - MIN_UNSEEN + 1 :] = True
    assert all(np.isnan(unseen_difference(good, noise, {"y": y}, leads=(0,), window=6,
                                          unseen=few)["y"][0]))  # fmt: skip


def test_the_unseen_probe_tells_whether_learned_components_add_to_the_stores_eofs(rng):
    """A store whose first components are EOFs (``model.eof_components``): the unseen probes
    report z against those components alone. Learned components that carry the target on
    the training months only (memorized) make z carry less on new months than its EOF part,
    with a range below 0; ones that carry it everywhere add to it."""
    from faextract.evaluate.probe import FixedFeatures, probe_scores
    from faextract.evaluate.run import EvaluateOptions, _Unseen
    from faextract.evaluate.stores import StoreFeatures

    T = 300
    keys = [(2000 + t // 12, t % 12 + 1, 15, 0, 0, 0) for t in range(T)]  # monthly, 25 years
    seen = np.arange(T) < 240
    y = _ar1(rng, T, 0.8)[:, 0]
    part = y + 1.0 * rng.standard_normal(T)  # the EOF part: the target, noisily
    memorized = np.where(seen, y, 0.0) + 0.1 * rng.standard_normal(T)
    general = y + 0.3 * rng.standard_normal(T)
    opts = EvaluateOptions(leads=(0, 1))
    unseen = _Unseen(keys, FixedFeatures(rng.standard_normal((T, 3))), {"y": y}, opts)

    def measured(learned, k=1):
        z = np.c_[part, learned, rng.standard_normal((T, 2))]
        s = StoreFeatures(path="s.zarr", cell="faconvlstm", embedding_dim=4, time=np.arange(T),
                          z=z, tiles="none", window=6, checkpoint="", perturb=None,
                          channels=("sst",), train_range=("2000-01-15", "2019-12-15"),
                          eof_components=k)  # fmt: skip
        return unseen.measure(s), z

    out, z = measured(memorized)
    assert out["steps"] == 60
    diff, low, high = out["learned_difference"]["y"][0]
    alone = probe_scores(z[:, :1], {"y": y}, (0,), window=6, unseen=~seen)["r2"]["y"][0]
    assert diff == pytest.approx(out["probe"]["y"][0] - alone)  # the same unseen steps
    assert high < 0  # a probe fitted on the seen months trusts the memorized component
    # report.md says it in its own table
    from types import SimpleNamespace

    from faextract.evaluate.report import StoreReport, _unseen_table

    store = StoreReport(name="s", features="z", probe={}, effective_rank=1.0, seasonal_share=0.0,
                        path="s.zarr", unseen=out)  # fmt: skip
    report = SimpleNamespace(stores=[store], leads=[0, 1],
                             targets={"y": {"kind": "index"}})  # fmt: skip
    text = _unseen_table(report)
    row = next(line for line in text.splitlines() if "R² - EOF part y, lead 0" in line)
    assert text.splitlines()[text.splitlines().index(row) + 2].startswith(f"| s.zarr | {diff:+.3f} [")
    out, _ = measured(general)
    assert out["learned_difference"]["y"][0][1] > 0
    assert "learned_difference" not in measured(general, k=0)[0]  # no EOF part: nothing to say


def test_without_the_gap_overlapping_windows_would_leak(rng):
    # A feature that averages the target over a trailing window of 24 steps: the target at t
    # is inside the training rows' windows next to the test block. With the gap the probe
    # scores what the feature really carries; the same probe without a gap scores the same
    # here because ridge cannot memorize, so check the rows instead.
    folds = blocked_folds(np.arange(200), 4, gap=24)
    for train, test in folds:
        near = train[(train > test.min() - 24) & (train < test.max() + 24)]
        assert near.size == 0


def test_eof_baseline_is_fitted_on_training_rows_only(rng):
    field = rng.standard_normal((100, 30))
    feats = EOFFeatures(field, 3)
    a = feats.transform(np.arange(0, 50))
    b = feats.transform(np.arange(50, 100))
    assert a.shape == (100, 3) and not np.allclose(np.abs(a), np.abs(b))


def test_cka_is_invariant_to_rotation_and_scale(rng):
    x = rng.standard_normal((200, 6))
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    assert linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, rng.standard_normal((200, 6))) < 0.2


def test_effective_rank_of_isotropic_and_collapsed_data(rng):
    iso = rng.standard_normal((20000, 8))
    assert effective_rank(iso) == pytest.approx(8.0, rel=0.02)
    line = np.outer(rng.standard_normal(500), rng.standard_normal(8))
    assert effective_rank(line + 1e-6 * rng.standard_normal((500, 8))) == pytest.approx(1.0, abs=1e-3)


def test_month_jump_flags_a_stepwise_climatology(rng):
    cal = _daily_calendar(730)
    smooth = np.cumsum(0.05 * rng.standard_normal((730, 4)), axis=0)
    assert month_jump(smooth, cal) == pytest.approx(1.0, abs=0.3)
    steps = smooth + 3.0 * rng.standard_normal((24, 4))[(cal.month - 1) + 12 * (np.arange(730) >= 365)]
    assert month_jump(steps, cal) > 5
    assert month_jump(steps, _monthly_calendar(24)) is None  # every step starts a month


def test_seasonal_fit_and_share():
    cal = _daily_calendar(365 * 3)
    cycle = np.stack([np.sin(2 * np.pi * cal.phase), np.cos(4 * np.pi * cal.phase)], axis=1)
    fit = seasonal_cycle(cycle + 1.0, cal)
    assert np.allclose(fit, cycle + 1.0, atol=1e-8)
    gappy = cycle.copy()
    gappy[::7, 0] = np.nan
    assert np.allclose(seasonal_cycle(gappy, cal)[:, 0], cycle[:, 0], atol=1e-8)
    assert seasonal_share(cycle, cal) == pytest.approx(1.0)
    noise = np.random.default_rng(1).standard_normal((cal.phase.size, 2))
    assert seasonal_share(noise, cal) < 0.02
    mcal = _monthly_calendar(36)
    monthly = np.tile(np.arange(12.0), 3)[:, None]
    assert np.allclose(seasonal_cycle(monthly, mcal), monthly)


def test_relative_change():
    z = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    out = relative_change(z, z + 0.1)
    assert out["relative_change"] == pytest.approx(np.linalg.norm(np.full((3, 2), 0.1)) / np.linalg.norm(z))
    assert out["relative_to_variability"] > out["relative_change"]


def test_regimes_find_planted_clusters(rng):
    centres = 5 * rng.standard_normal((4, 6))
    labels = np.repeat(np.arange(4), 50)
    z = centres[labels] + 0.05 * rng.standard_normal((200, 6))
    months = np.tile(np.arange(1, 13), 17)[:200]
    out = regimes(z, months, ks=(4, 5))
    assert out[4]["silhouette"] > 0.9
    assert out[4]["dwell_time"] == pytest.approx(50.0)
    assert sorted(out[4]["sizes"]) == [50, 50, 50, 50]
    assert all(sum(c) == pytest.approx(1.0) for c in out[4]["seasons"])
    assert dwell_time(np.array([0, 0, 1, 1, 1, 0])) == pytest.approx(2.0)


def test_box_percentile_and_index_parsing():
    lat = np.linspace(-80, 80, 17)
    lon = np.arange(0, 360, 20.0)
    values = np.zeros((17, 18))
    values[12:14, 4:6] = 5.0  # 40-50N, 80-100E
    assert box_percentile(values, lat, lon, (40, 50, 80, 100)) >= 0.95
    assert box_percentile(values, lat, lon, (-10, 10, 80, 100)) < 0.5
    spec = IndexSpec.parse("nino34=sst:-5:5,-170:-120")
    assert spec.name == "nino34" and spec.variable == "sst" and spec.box == (-5, 5, -170, -120)
    for bad in ("nino34", "x=sst:5:-5,0:10", "x=sst:-5:5,a:b"):
        with pytest.raises(Exception, match="--index"):
            IndexSpec.parse(bad)


# -- the command ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stores(tiny_checkpoint, tmp_path_factory):
    cube, ckpt, _ = tiny_checkpoint
    root = tmp_path_factory.mktemp("evaluate")
    for name, extra in (("a.zarr", []), ("p.zarr", ["--perturb", "noise=0.05"])):
        r = runner.invoke(
            app, ["embed", str(cube), "--checkpoint", str(ckpt), "--out", str(root / name),
                  "--attention-query", "enso=-10:10,190:270", *extra],
        )  # fmt: skip
        assert r.exit_code == 0, r.output
    return cube, root


def test_cli_end_to_end(stores, tmp_path):
    pytest.importorskip("sklearn")
    cube, root = stores
    out = tmp_path / "report"
    args = ["evaluate", str(root / "a.zarr"), str(root / "a.zarr"), "--input", str(cube),
            "--out", str(out), "--index", "enso=sst:-10:10,190:270", "--leads", "0,1",
            "--perturbed", str(root / "p.zarr"), "--eof-targets", "2", "--folds", "3"]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["faextract_evaluation"] == 1
    s = rep["stores"][0]
    for key in ("path", "cell", "embedding_dim", "probe", "effective_rank", "seasonal_share",
                "month_jump", "regimes", "robustness", "attention"):  # fmt: skip
        assert key in s, key
    assert set(s["probe"]) == {"enso", "sst_pc1", "sst_pc2", "t2m_pc1", "t2m_pc2"}
    assert set(s["probe"]["enso"]) == {"0", "1"}
    assert set(rep["baselines"]) == {"eof", "random"}
    assert rep["baselines"]["eof"]["components"] == s["embedding_dim"]
    assert rep["stability"]["cka"][0][1] == pytest.approx(1.0)  # the same store twice
    perturbed = s["robustness"][str(root / "p.zarr")]
    assert perturbed["perturb"] == "noise=0.05,seed=0" and perturbed["relative_change"] > 0
    assert "enso" in s["attention"]["queries"]
    text = (out / "report.md").read_text()
    assert "eof baseline" in text and "R² enso, lead 0" in text
    # the store records its encoder's training range: probes on the steps it never saw
    unseen = s["unseen"]
    assert unseen["steps"] > 0 and len(unseen["train_range"]) == 2
    assert set(unseen["probe"]["enso"]) == {"0", "1"} and "enso" in unseen["eof_probe"]
    assert set(unseen["correlation"]["enso"]) == {"0", "1"} and "enso" in unseen["eof_correlation"]
    r = unseen["correlation"]["enso"]["0"]
    assert r is None or -1 <= r <= 1  # (None: constant predictions, the ridge chose none)
    assert "On time the encoder never saw" in text and "r enso, lead 0" in text
    for lead in ("0", "1"):  # R² minus the EOF baseline's, and its bootstrap interval
        diff = unseen["eof_difference"]["enso"][lead]
        assert len(diff) == 3 and (None in diff or diff[1] <= diff[2])
        # the same difference, and its range over the probes refitted without each fifth
        refit = unseen["eof_refit_difference"]["enso"][lead]
        assert len(refit) == 3 and (None in refit or refit[1] <= refit[0] <= refit[2])
        assert None in refit or refit[0] == pytest.approx(diff[0])
    assert "R² - EOF enso, lead 0" in text and "refitted without each fifth" in text
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0


def _report_with(stores, out, *options) -> dict:
    """``report.json`` of `faextract evaluate` on store a with ``options`` (2 EOF targets, 3
    blocks)."""
    cube, root = stores
    r = runner.invoke(app, ["evaluate", str(root / "a.zarr"), "--input", str(cube), "--out", str(out),
                            "--eof-targets", "2", "--folds", "3", *options])  # fmt: skip
    assert r.exit_code == 0, r.output
    return json.loads((out / "report.json").read_text())


def _refused_with(stores, out, *options) -> None:
    """`faextract evaluate` with ``options`` exits 2 and writes nothing."""
    cube, root = stores
    r = runner.invoke(app, ["evaluate", str(root / "a.zarr"), "--input", str(cube), "--out", str(out),
                            *options])  # fmt: skip
    assert r.exit_code == 2 and not out.exists(), r.output


def test_field_cells_sets_the_grid_of_the_eof_baseline(stores, tmp_path):
    """The EOF baseline and targets come from the anomaly field at the resolution asked for;
    the report says which (coarser fields drop small-scale noise: other EOFs, other scores)."""
    pytest.importorskip("sklearn")
    cube, _ = stores
    H, W = xr.open_dataset(cube).sst.shape[-2:]
    reports = {c: _report_with(stores, tmp_path / f"r{c}", "--field-cells", str(c)) for c in (4096, 72)}
    assert reports[4096]["field_grid"] == [H, W]
    f = int(np.ceil(np.sqrt(H * W / 72)))
    h, w = -(-H // f), -(-W // f)
    assert reports[72]["field_grid"] == [h, w] and h * w <= 72 < H * W
    assert f"{h} x {w} anomaly field" in (tmp_path / "r72" / "report.md").read_text()
    fine, coarse = (reports[c]["baselines"]["eof"]["probe"]["sst_pc1"]["0"] for c in (4096, 72))
    assert fine != coarse
    _refused_with(stores, tmp_path / "bad", "--field-cells", "0")


def test_repeats_are_recorded_and_change_only_the_probe(stores, tmp_path):
    pytest.importorskip("sklearn")
    reports = {n: _report_with(stores, tmp_path / f"r{n}", "--repeats", str(n)) for n in (1, 3)}
    assert reports[1]["repeats"] == 1 and reports[3]["repeats"] == 3
    assert "averaged over 3 placements of the blocks" in (tmp_path / "r3" / "report.md").read_text()
    one, three = (reports[n]["stores"][0] for n in (1, 3))
    assert one["probe"] != three["probe"]
    assert one["effective_rank"] == three["effective_rank"]
    _refused_with(stores, tmp_path / "bad", "--repeats", "0")


def test_bad_input_is_one_line(stores, tmp_path):
    cube, root = stores
    base = ["evaluate", str(root / "a.zarr"), "--input", str(cube), "--out", str(tmp_path / "r")]
    assert_one_line_error(runner.invoke(app, [*base, "--index", "x=sst:60:70,100:110"]), "holds no grid cell")
    assert_one_line_error(runner.invoke(app, [*base, "--index", "x=sp:-10:10,0:10"]), "no variable 'sp'")
    assert_one_line_error(runner.invoke(app, [*base, "--leads", "0,a"]), "--leads")
    assert_one_line_error(runner.invoke(app, [*base, "--tiles", "max"]), "--tiles")
    # Another cube: the store's times are not in it.
    from faextract.testing import synthetic_cube, write_netcdf

    other = tmp_path / "other.nc"
    write_netcdf(synthetic_cube(nt=40, nlat=12, nlon=24, variables=("sst", "t2m"), start="1990-01-01"), other)
    r = runner.invoke(app, ["evaluate", str(root / "a.zarr"), "--input", str(other), "--out", str(tmp_path / "r")])
    assert_one_line_error(r, "not in the input")
    # A variable the store embeds that the input lacks.
    only_sst = tmp_path / "sst.nc"
    write_netcdf(synthetic_cube(nt=40, nlat=12, nlon=24, variables=("sst",), seed=3), only_sst)
    r = runner.invoke(app, ["evaluate", str(root / "a.zarr"), "--input", str(only_sst), "--out", str(tmp_path / "r")])
    assert_one_line_error(r, "t2m")
    # A Zarr store that holds no embeddings.
    plain = tmp_path / "plain.zarr"
    synthetic_cube(nt=4, nlat=6, nlon=12, variables=("t2m",)).to_zarr(plain)
    r = runner.invoke(app, ["evaluate", str(plain), "--input", str(cube), "--out", str(tmp_path / "r")])
    assert_one_line_error(r, "not a faextract embeddings store")
    assert not (tmp_path / "r").exists()


def test_perturbation_depends_only_on_seed_and_step():
    from faextract.data.perturb import Perturbation

    p = Perturbation.parse("noise=0.5,drop=0.2,seed=4")
    assert p == Perturbation(0.5, 0.2, 4) and p.describe() == "noise=0.5,drop=0.2,seed=4"
    whole = np.zeros((10, 2, 5, 6), dtype=np.float32)
    p.apply(whole, 100)
    parts = np.zeros((10, 2, 5, 6), dtype=np.float32)
    p.apply(parts[:3], 100)
    p.apply(parts[3:], 103)
    np.testing.assert_array_equal(whole, parts)  # any block split gives the same draw
    dropped = np.isnan(whole).mean()
    assert 0.1 < dropped < 0.3
    assert 0.3 < np.nanstd(whole) < 0.7
    for bad in ("noise=-1", "drop=1", "seed=1.5", "noise", "blur=2", "noise=0"):
        with pytest.raises(Exception, match="--perturb"):
            Perturbation.parse(bad)


def test_tiled_stores_are_probed_with_tiles_side_by_side_or_averaged(tiny_checkpoint, tmp_path):
    from faextract.embed import EmbedOptions, embed
    from faextract.evaluate import EvaluateOptions, evaluate

    cube, ckpt, _ = tiny_checkpoint
    store = tmp_path / "tiled.zarr"
    embed([cube], ckpt, str(store), EmbedOptions(tile=(6, 12), halo=0))
    opts = dict(eof_targets=1, folds=3, leads=(0,), regimes=(4,))
    rep = evaluate([str(store)], [str(cube)], tmp_path / "a", EvaluateOptions(**opts))
    s = rep.stores[0]
    assert s.tiles == "concat" and s.features == 4 * s.embedding_dim
    rep = evaluate([str(store)], [str(cube)], tmp_path / "b", EvaluateOptions(tiles="mean", **opts))
    assert rep.stores[0].tiles == "mean" and rep.stores[0].features == s.embedding_dim
    assert rep.baselines["eof"].features == s.embedding_dim


def test_a_probe_on_nearly_constant_autocorrelated_features_scores_about_zero(rng):
    """Features that barely move and drift slowly (a barely trained embedding) carry nothing:
    the probe must not choose a vanishing ridge and extrapolate (it scored -167 once)."""
    t = np.arange(300)
    z = 1.0 + 1e-3 * _ar1(rng, 300, 0.99, 8) + 1e-4 * t[:, None] * rng.standard_normal(8)
    y = _ar1(rng, 300, 0.9)[:, 0]
    r2 = probe(z, {"y": y}, leads=(0, 3), window=12)["y"]
    assert all(-0.5 < v < 0.1 for v in r2.values()), r2


def test_the_refit_range_shows_how_much_a_comparison_owes_to_its_training_steps(rng):
    """``refit_difference``: the unseen R^2 of one feature set minus another's, with the least
    and greatest difference over the probes refitted without each fifth of the training rows
    (fitted features, EOFs, refitted too). The same features twice differ by exactly 0 in
    every refit; features that carry the target against noise stay ahead in every refit; a
    feature whose relation to the target is reversed on a stretch of the training rows scores
    more in the refit that leaves that stretch out."""
    from faextract.evaluate.probe import (
        MIN_UNSEEN,
        refit_difference,
        unseen_difference,
        unseen_predictions,
        unseen_refits,
    )  # fmt: skip

    T = 300
    y = _ar1(rng, T, 0.8)[:, 0]
    unseen = np.zeros(T, dtype=bool)
    unseen[240:] = True
    args = dict(leads=(0, 2), window=6, unseen=unseen)

    def compare(a, b):
        return refit_difference(unseen_predictions(a, {"y": y}, **args),
                                unseen_predictions(b, {"y": y}, **args),
                                unseen_refits(a, {"y": y}, **args),
                                unseen_refits(b, {"y": y}, **args), {"y": y})["y"]  # fmt: skip

    good = np.c_[y + 0.2 * rng.standard_normal(T), rng.standard_normal((T, 2))]
    noise = rng.standard_normal((T, 3))
    assert compare(good, good)[0] == (0.0, 0.0, 0.0)
    ahead = compare(good, noise)
    for lead in (0, 2):
        diff, low, high = ahead[lead]
        assert low <= diff <= high and low > 0  # ahead whichever fifth is left out
        # the full fit's difference is the one unseen_difference reports
        assert diff == pytest.approx(unseen_difference(good, noise, {"y": y}, **args)["y"][lead][0])
    assert ahead[0][2] - ahead[0][1] > 0  # the refits differ
    # a feature whose relation to y is reversed on training rows 100-139: the fit on all the
    # rows learns a weaker slope; the refit without the fifth that holds them, the full one
    flip = np.where((np.arange(T) >= 100) & (np.arange(T) < 140), -1.0, 1.0)
    turned = np.c_[flip * y + 0.2 * rng.standard_normal(T), rng.standard_normal((T, 2))]
    diff, low, high = compare(turned, noise)[0]
    assert high > diff + 0.05 and diff > 0.5
    # fitted features are refitted without the left-out rows as well
    field = np.c_[y, rng.standard_normal((T, 5))] @ rng.standard_normal((6, 20))
    refits = unseen_refits(EOFFeatures(field, 3), {"y": y}, **args)
    assert len(refits) == 5 and all(set(r) == {0, 2} for r in refits)
    few = np.zeros(T, dtype=bool)
    few[T - MIN_UNSEEN + 1 :] = True
    args["unseen"] = few
    assert all(np.isnan(compare(good, noise)[0]))
