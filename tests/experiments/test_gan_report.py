"""The GAN section of `convnorm report`, from hand-written records: the right numbers in the right rows."""
import os
import statistics

import pytest

from convnorm.experiments.gan_report import report_section
from convnorm.experiments.records import write_json

SUB = "gan-cifar10-resnet"  # records live one folder down, as in results/


def _config(d_norm, g_norm, seed, **overrides):
    """A config shaped like results/gan-cifar10-resnet/*.json."""
    cfg = dict(arch="resnet", batch_size=64, betas=[0.0, 0.9], d_norm=d_norm, d_width=32, dataset="cifar10", ema=False,
               ema_decay=0.9999, fid_curve_samples=1000, fid_every=200, fid_reference_samples=5000, fid_samples=5000,
               g_norm=g_norm, g_width=32, iterations=600, lr=0.0002, lr_decay="linear", n_dis=5, seed=seed, z_dim=128)
    cfg.update(overrides)
    return cfg


def _record(d_norm="sn", g_norm="bn", seed=0, *, final=(177.09, 0.1577, 0.0017), curve=(223.78, 216.91, 190.77),
            done=None, status="complete", train_time_s=1778.0, wall_time_s=4680.9, rate=0.337, diversity=0.3,
            real_diversity=0.243, name=None, **overrides):
    """A ``gan`` record: the curve at ``fid_curve_samples`` every ``fid_every`` iterations up to ``done``, then
    (for a finished run) the final evaluation ``(fid, kid, kid_std)`` at ``fid_samples``."""
    cfg = _config(d_norm, g_norm, seed, **overrides)
    done = cfg["iterations"] if done is None else done
    name = name or f"gan-cifar10-resnet-d_{d_norm.replace('+', '_')}-g_{g_norm.replace('+', '_')}-it600-s{seed}"
    its = list(range(cfg["fid_every"], done + 1, cfg["fid_every"]))
    rows = [dict(fid=fid, iteration=it, kid=fid / 1000, kid_std=fid / 100000, reference_samples=5000,
                 samples=cfg["fid_curve_samples"] or cfg["fid_samples"], seconds=1.0)
            for it, fid in zip(its, curve)]
    if final is not None and done == cfg["iterations"]:
        rows.append(dict(fid=final[0], iteration=done, kid=final[1], kid_std=final[2], reference_samples=5000,
                         samples=cfg["fid_samples"], seconds=2.0))
    order = its[:1] + its[:0:-1]  # not in iteration order (200, 600, 400): the report must pick the latest
    samples = [dict(diversity=diversity + 0.01 * (it == done), iteration=it, path=f"{name}/samples-{it:06d}.png")
               for it in order]
    return dict(kind="gan", config=cfg, seed=seed, name=name, status=status, iterations_done=done,
                fid_curve=rows, loss_curve=[], samples=samples, real_diversity=real_diversity,
                final_fid=final[0] if final and status == "complete" else None,
                train_time_s=train_time_s, wall_time_s=wall_time_s, iterations_per_s=rate, provenance={})


def _write(folder, records):
    for r in records:
        write_json(str(folder / SUB / f"{r['name']}.json"), r)


def _tables(lines, header_start):
    tables, i = [], 0
    while i < len(lines):
        if lines[i].startswith(header_start):
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            tables.append(rows)
        i += 1
    return tables


def _summary(lines):
    (rows,) = _tables(lines, "| data | arch | widths G/D |")
    return rows


def _runs(lines):
    (rows,) = _tables(lines, "| run | D norm | G norm |")
    return rows


def _mean_std(cell):
    parts = cell.split(" ± ")
    return float(parts[0]), (float(parts[1]) if len(parts) == 2 else None)


# -- nothing to report ------------------------------------------------------------------------

def test_no_gan_or_fid_validation_records_give_no_section(tmp_path):
    assert report_section(str(tmp_path / "missing")) == []
    assert report_section(str(tmp_path)) == []
    write_json(str(tmp_path / "train.json"), {"kind": "train", "config": {}})
    write_json(str(tmp_path / "robust.json"), {"kind": "robust", "config": {}})
    assert report_section(str(tmp_path)) == []
    assert not (tmp_path / "figures").exists()


# -- the summary over seeds -------------------------------------------------------------------

def test_summary_is_mean_and_sample_std_over_seeds_against_the_baseline(tmp_path):
    base = [_record("sn", "bn", 0, final=(180.0, 0.150, 0.001), train_time_s=1700.0),
            _record("sn", "bn", 1, final=(170.0, 0.160, 0.002), train_time_s=1980.0)]
    d_convnorm = _record("convnorm", "bn", 0, final=(150.25, 0.120, 0.001), train_time_s=100.0)
    g_convnorm = _record("sn", "convnorm+bn", 0, final=(190.5, 0.170, 0.001), train_time_s=9000.0)
    no_baseline = _record("convnorm", "bn", 0, n_dis=1, final=(140.0, 0.1, 0.001), name="gan-ndis1")
    _write(tmp_path, [g_convnorm, no_baseline, d_convnorm] + base)
    lines = report_section(str(tmp_path))
    rows = _summary(lines)
    # by D norm in its listed order (sn, convnorm, ...), then G norm (bn, convnorm, convnorm+bn), then the rest
    by_placement = [(r[3], r[4], r[6]) for r in rows]
    assert by_placement == [("sn", "bn", "5"), ("sn", "convnorm+bn", "5"), ("convnorm", "bn", "1"),
                            ("convnorm", "bn", "5")]
    cells = {(r[3], r[4], r[6]): r for r in rows}

    baseline = cells[("sn", "bn", "5")]
    assert baseline[:10] == ["cifar10", "resnet", "32/32", "sn", "bn", "600", "5", "no", "2", "5000 vs 5000"]
    mean, std = _mean_std(baseline[10])
    assert mean == pytest.approx(175.0, abs=0.005) and std == pytest.approx(statistics.stdev([180.0, 170.0]), abs=0.005)
    assert baseline[11] == "baseline"
    kid_mean, kid_std = _mean_std(baseline[12])
    assert kid_mean == pytest.approx(155.0, abs=0.005) and kid_std == pytest.approx(
        statistics.stdev([150.0, 160.0]), abs=0.005)
    assert baseline[13] == "31 min"  # (1700 + 1980) / 2 s

    placed = cells[("convnorm", "bn", "5")]
    assert _mean_std(placed[10]) == (pytest.approx(150.25, abs=0.005), None)  # one seed: no spread
    assert placed[11] == f"{150.25 - 175.0:+.2f}" == "-24.75"
    assert placed[13] == "100 s"
    g_placed = cells[("sn", "convnorm+bn", "5")]
    assert g_placed[11] == "+15.50" and g_placed[13] == "2.5 h"
    assert cells[("convnorm", "bn", "1")][11] == "—"  # no baseline run with n_dis 1


def test_unfinished_runs_and_runs_without_a_final_evaluation_are_not_summarised(tmp_path):
    # with fid_curve_samples 0 the curve is at the full count: a running run has rows at fid_samples too
    running_full_count = _record("sn", "bn", 1, done=400, status="running", fid_curve_samples=0, curve=(210.0, 201.5))
    _write(tmp_path, [_record("sn", "bn", 0, done=400, status="running"),
                      _record("convnorm", "bn", 0, final=None, status="complete"), running_full_count])
    lines = report_section(str(tmp_path))
    assert _tables(lines, "| data | arch | widths G/D |") == []
    assert not any(line.startswith("Finished runs") for line in lines)
    rows = {row[0].strip("`"): row for row in _runs(lines)}
    assert len(rows) == 3  # all still listed run by run
    assert rows[running_full_count["name"]][3:6] == ["400/600", "5000 vs 5000", "201.50 (it 400)"]


def test_paper_widths_and_ema_are_shown(tmp_path):
    _write(tmp_path, [_record("sn", "bn", 0, g_width=None, ema=True)])
    (row,) = _summary(report_section(str(tmp_path)))
    assert row[2] == "paper/32" and row[7] == "yes"


# -- every run --------------------------------------------------------------------------------

def test_each_run_row_shows_its_own_numbers(tmp_path):
    finished = _record("sn", "bn", 0, final=(177.0948, 0.15766, 0.001736), curve=(223.78, 216.91, 190.769),
                       wall_time_s=4680.9, rate=0.33745, diversity=0.3, real_diversity=0.24303)
    _write(tmp_path, [finished])
    (row,) = _runs(report_section(str(tmp_path)))
    assert row[0] == f"`{finished['name']}`"
    assert row[1:5] == ["sn", "bn", "600/600", "5000 vs 5000"]
    assert row[5] == "177.09"
    assert row[6] == "157.66 ± 1.74"  # KID x 10^3 and its std over subsets
    assert row[7] == "190.77 (1000, it 600)"  # the curve's last point, at its own sample count
    assert row[8] == "0.310 (0.243)"  # diversity of the latest grid (0.3 + 0.01), beside the real images'
    assert row[9:] == ["78 min", "0.34", "complete"]


def test_a_running_run_shows_its_latest_curve_point_marked_with_its_iteration(tmp_path):
    running = _record("convnorm", "bn", 1, done=400, status="running", curve=(223.0, 205.456), rate=None,
                      wall_time_s=119.0)
    _write(tmp_path, [running])
    (row,) = _runs(report_section(str(tmp_path)))
    assert row[1:5] == ["convnorm", "bn", "400/600", "1000 vs 5000"]
    assert row[5] == "205.46 (it 400)"
    assert row[6] == "205.46 ± 2.05"  # the curve point's kid, kid_std (x 10^3)
    assert row[7] == "205.46 (1000, it 400)"
    assert row[9:] == ["119 s", "—", "running"]


def test_a_run_without_evaluations_or_grids_has_dashes(tmp_path):
    bare = _record("sn", "bn", 0, final=None, curve=(), status="running", done=100)
    bare["samples"] = []
    _write(tmp_path, [bare])
    lines = report_section(str(tmp_path))
    (row,) = _runs(lines)
    assert row[1:9] == ["sn", "bn", "100/600", "—", "—", "—", "—", "—"]
    assert not any(line.startswith("![") for line in lines)  # no curve to plot, no grid to show
    assert not (tmp_path / "figures" / "gan-fid.png").exists()


def test_runs_are_listed_by_placement_then_seed(tmp_path):
    # names in the opposite alphabetical order to the placement order
    records = [_record("none", "bn", 0, name="a-none"), _record("convnorm+sn", "bn", 0, name="b-cnsn"),
               _record("convnorm", "bn", 1, name="c-cn-1"), _record("convnorm", "bn", 0, name="d-cn-0"),
               _record("sn", "bn", 1, name="e-sn-1"), _record("sn", "bn", 0, name="f-sn-0")]
    _write(tmp_path, records)
    names = [row[0].strip("`") for row in _runs(report_section(str(tmp_path)))]
    assert names == ["f-sn-0", "e-sn-1", "d-cn-0", "c-cn-1", "b-cnsn", "a-none"]


@pytest.mark.parametrize("seconds,text", [(0.4, "0 s"), (119.0, "119 s"), (120.0, "2 min"), (7199.0, "120 min"),
                                          (7200.0, "2.0 h"), (36000.0, "10.0 h")])
def test_wall_time_is_written_in_seconds_minutes_or_hours(tmp_path, seconds, text):
    _write(tmp_path, [_record(wall_time_s=seconds)])
    (row,) = _runs(report_section(str(tmp_path)))
    assert row[9] == text


# -- plot and sample grids --------------------------------------------------------------------

def test_plot_and_last_grids_are_linked_relative_to_the_folder(tmp_path):
    records = [_record("sn", "bn", 0), _record("convnorm", "convnorm", 2, ema=True)]
    _write(tmp_path, records)
    lines = report_section(str(tmp_path))
    assert "![FID over iterations](figures/gan-fid.png)" in lines
    png = tmp_path / "figures" / "gan-fid.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Last sample grid of each run (fixed noise, 8x8):" in lines
    for r, label in zip(records, ("resnet D:sn G:bn s0", "resnet D:convnorm G:convnorm EMA s2")):
        target = f"{SUB}/{r['name']}/samples-000600.png"  # the latest grid, next to the record
        assert f"{label}, iteration 600:" in lines
        assert f"![{label}]({target})" in lines


def test_the_section_and_its_plot_depend_on_the_records_only(tmp_path):
    records = [_record("sn", "bn", s, final=(170.0 + s, 0.15, 0.001)) for s in (0, 1)]
    records += [_record("convnorm", "bn", 0, done=400, status="running")]
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a, records)
    _write(b, list(reversed(records)))
    lines = report_section(str(a))
    plot = (a / "figures" / "gan-fid.png").read_bytes()
    assert report_section(str(a)) == lines
    assert (a / "figures" / "gan-fid.png").read_bytes() == plot
    assert report_section(str(b)) == lines
    assert (b / "figures" / "gan-fid.png").read_bytes() == plot


# -- FID checks and published numbers ---------------------------------------------------------

def test_fid_validation_records_alone_give_the_checks_and_published_numbers(tmp_path):
    pair = {"fid": 25.0962, "kid": -6.77e-05, "kid_std": 8.63e-05, "n1": 2000, "n2": 2000}
    write_json(str(tmp_path / "fid-validation" / "v.json"),
               {"kind": "fid-validation", "config": {"kid": {"seed": 0, "subset_size": 1000, "subsets": 100}},
                "results": {"self": {"fid": 0.000192, "n1": 2000, "n2": 2000}, "train_halves": pair,
                            "train_vs_test": dict(pair, fid=24.9397)}})
    lines = report_section(str(tmp_path))
    assert lines[:2] == ["## GANs: SN-GAN with ConvNorm", ""]
    assert not any(line.startswith("| run |") or line.startswith("Finished runs") for line in lines)
    assert "| train[:N] vs itself | 2000 | 0.00019 | — |" in lines
    assert "| train[:N] vs train[N:2N] | 2000 + 2000 | 25.10 | -0.068 ± 0.086 |" in lines
    assert "| train[:N] vs test[:M] | 2000 + 2000 | 24.94 | -0.068 ± 0.086 |" in lines
    assert lines.index("| train[:N] vs itself | 2000 | 0.00019 | — |") < lines.index(
        "### Published CIFAR-10 results (published, not run here)")
    assert not (tmp_path / "figures").exists()


def test_the_published_results_close_the_section(tmp_path):
    _write(tmp_path, [_record()])
    lines = report_section(str(tmp_path))
    start = lines.index("### Published CIFAR-10 results (published, not run here)")
    assert start > lines.index("![FID over iterations](figures/gan-fid.png)")
    rows = _tables(lines[start:], "| source | model |")[0]
    assert [(r[0], r[-2], r[-1]) for r in rows] == [
        ("SN-GAN paper (Miyato et al. 2018, ICLR), Table 2", "8.22", "21.7"),
        ("Mimicry (Lee & Town 2020), README baselines", "7.97", "16.77")]
    assert lines[-1] == ""
    assert os.path.exists(tmp_path / "figures" / "gan-fid.png")


def test_the_plot_goes_to_the_given_figure_folder_linked_relative_to_the_records(tmp_path):
    folder = tmp_path / "results" / "gan"
    _write(folder, [_record()])
    lines = report_section(str(folder), fig_dir=str(tmp_path / "results" / "figures"))
    assert "![FID over iterations](../figures/gan-fid.png)" in lines
    assert (tmp_path / "results" / "figures" / "gan-fid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (folder / "figures").exists()
    default = report_section(str(folder))  # default: <folder>/figures
    assert "![FID over iterations](figures/gan-fid.png)" in default
    assert (folder / "figures" / "gan-fid.png").exists()
    assert [line for line in default if not line.startswith("![FID")] == \
        [line for line in lines if not line.startswith("![FID")]
