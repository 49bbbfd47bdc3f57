"""Focus on real SEM scans (tests/data/sem-kriss, MIT, see its README) and the scan-noise model."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import scipy.signal

from conftest import KRISS_DIR, read_results
from mhd.contracts.record import TileRecord
from mhd.functions import detect, get_backend
from mhd.functions._noise import level_noise_std, noise_spectrum
from mhd.functions._scalespace import dog_pairs, scales
from mhd.functions.simulate import disk_otf, scan_lowpass, sem_scan
from mhd.functions.worker.tileio import trim_frame

KRISS = KRISS_DIR


def _pairs(folder: str, fast: str, slow: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """The image areas of the (fast, slow) pairs, as a tile is read (``trim_frame``: the PNGs kept a line of the
    microscope's black frame, whose step the detector counted and the blur fit read as sharpness)."""
    out = []
    for f in sorted((KRISS / folder).glob(f"{fast}_*.png")):
        slow_file = KRISS / folder / f"{slow}_{f.stem.rsplit('_', 1)[1]}.png"
        out.append((trim_frame(iio.imread(f)), trim_frame(iio.imread(slow_file))))
    return out


@pytest.fixture(scope="module")
def kriss():
    pairs = _pairs("time", "fast_100ns", "slow_30us")[:4] + _pairs("line", "single_line", "integrated_50x")[:4]
    assert len(pairs) == 8
    return [(detect(f, backend="numpy"), detect(s, backend="numpy")) for f, s in pairs]


def test_real_scan_noise_adds_no_features(kriss):
    """A fast scan of an in-focus field shows the slow scan's features and no more (noise only hides)."""
    ratio = np.array([f.count / s.count for f, s in kriss])
    assert np.median(ratio) <= 1.1 and ratio.max() <= 1.35, ratio.round(2).tolist()


def test_blur_of_two_scans_of_one_field_agrees(kriss):
    ok = [abs(f.blur - s.blur) <= 0.3 + 0.15 * max(f.blur, s.blur) for f, s in kriss]
    assert np.mean(ok) >= 0.9, [(round(f.blur, 2), round(s.blur, 2)) for f, s in kriss]


def test_scan_noise_does_not_read_as_blur_on_real_slow_scans():
    """Noise cannot blur the signal: real slow scans with synthetic noise at the fast scans' level and correlation
    (rows independent, lag-1 0.55 along x, 6.5 % of the range, as ``bench/sem_focus.py bias``) keep their blur within
    0.3 px + 15 %, and move by less than 0.1 px (median; 0.03 on these eight scans). With the line of the microscope's
    frame still in the scans the move was 0.20 px here and 0.25 / 0.18 over all 50 + 50 (0.03 / 0.04 on their image
    area): the noise hid the frame's sharp step from the finest levels; with the fit's per-level noise uncertainty at
    5 % instead of 2 % as well, 0.31 px."""
    rng = np.random.default_rng(0)
    moved = []
    for _, slow in _pairs("time", "fast_100ns", "slow_30us")[:4] + _pairs("line", "single_line", "integrated_50x")[:4]:
        lo, hi = np.percentile(slow, [0.1, 99.9])
        noise = scipy.signal.lfilter([0.45], [1, -0.55], rng.standard_normal((slow.shape[0], slow.shape[1] + 20)), axis=1)[:, 20:]
        noisy = np.clip(np.round(slow + noise * 0.065 * (hi - lo) / noise.std()), 0, 255).astype(np.uint8)
        clean, d = detect(slow, backend="numpy"), detect(noisy, backend="numpy")
        assert d.count <= clean.count  # noise only hides features
        moved.append((clean.blur, d.blur))
    ok = [abs(b - a) <= 0.3 + 0.15 * max(a, b) for a, b in moved]
    assert np.mean(ok) >= 0.9 and np.median([b - a for a, b in moved]) < 0.1, np.round(moved, 2).tolist()


def test_blurred_slow_scans_have_more_blur_than_every_in_focus_scan(kriss):
    rng = np.random.default_rng(0)
    sharp = max(max(f.blur, s.blur) for f, s in kriss)
    for _, slow in _pairs("time", "fast_100ns", "slow_30us")[:3]:
        blurred = detect(sem_scan(slow, 2.0, dose=20.0, tau=0.75, rng=rng), backend="numpy")
        assert blurred.blur > sharp + 0.3


@pytest.mark.parametrize("a", [0.0, 0.57, 0.8])
def test_noise_model_gives_each_levels_noise_response(a):
    """Rows independent, AR(1) along x: the predicted std of every DoG level matches the measured one within 5 %."""
    rng = np.random.default_rng(1)
    e = rng.normal(0, 0.05, (512, 512))
    n = scipy.signal.lfilter([1 - a], [1, -a], e, axis=1) if a else e
    t = scales(16, 1.0, 8.0)
    t0, t1, g = dog_pairs(t)
    pred = level_noise_std(noise_spectrum(n[None].astype(np.float32), get_backend("numpy")), t0, t1, g)[0]
    F = np.fft.fft2(n)
    k2 = (2 * np.pi * np.fft.fftfreq(512))[:, None] ** 2 + (2 * np.pi * np.fft.fftfreq(512))[None] ** 2
    emp = np.array(
        [np.fft.ifft2(F * gg * (np.exp(-0.5 * k2 * b * b) - np.exp(-0.5 * k2 * aa * aa))).real.std() for aa, b, gg in zip(t0, t1, g)]
    )
    np.testing.assert_allclose(pred, emp, rtol=0.05)


def test_noise_model_does_not_read_in_focus_structure_as_noise():
    """On a clean slow scan the measured noise is far below what the fast scan of the same field has."""
    fast, slow = _pairs("time", "fast_100ns", "slow_30us")[0]
    f, s = detect(fast, backend="numpy"), detect(slow, backend="numpy")
    assert s.noise < 0.25 * f.noise


def test_sem_scan_noise_is_correlated_along_the_line_only():
    """tau 0.75 dwells: lag-1 autocorrelation ~0.57 along x (the real 100 ns scans: 0.54-0.57), ~0 across rows."""
    n = scan_lowpass(np.random.default_rng(2).normal(size=(256, 512)), 0.75)
    n -= n.mean()
    ax = np.mean(n[:, 1:] * n[:, :-1]) / n.var()
    ay = np.mean(n[1:] * n[:-1]) / n.var()
    assert 0.52 < ax < 0.62 and abs(ay) < 0.03


def test_disk_otf_is_a_unit_disk():
    H = disk_otf((64, 64), 3.0)
    assert H[0, 0] == 1.0
    psf = np.fft.irfft2(H, s=(64, 64))
    assert abs(psf.sum() - 1) < 1e-9
    # second moment per axis of a uniform disk of radius R is R^2 / 4
    y = np.fft.fftfreq(64, 1 / 64)
    assert abs((psf * y[None, :] ** 2).sum() - 9 / 4) < 0.15


@pytest.mark.parametrize("radius", [3.0, 6.0])
def test_astigmatism_under_scan_noise_and_strong_defocus(isbi, radius):
    """A 2:1 elliptical disk reads astigmatic along its long axis; the round disk of equal area and an
    in-focus scan with scan-correlated noise (tau 1.5 dwells, dose 10) do not.

    The angle is checked on the median of three noise realizations: at radius 3 px the noise pulls it
    ~6 degrees towards the scan line (medians 53-54 for 60 over 8 realizations, each within 46-59;
    62 without noise), so one realization can land just over 10 degrees off."""
    from mhd.functions import ASTIGMATISM_THRESHOLD

    rng = np.random.default_rng(3)
    img = np.block([[isbi[3], isbi[4]], [isbi[5], isbi[6]]])
    q = np.sqrt(2.0)
    kw = dict(dose=10.0, tau=1.5, jitter=0.005, rng=rng)
    sharp = detect(sem_scan(img, 0.0, **kw), backend="numpy")
    iso = detect(sem_scan(img, radius, **kw), backend="numpy")
    astig = [detect(sem_scan(img, radius * q, radius_minor=radius / q, angle=60.0, **kw), backend="numpy") for _ in range(3)]
    assert sharp.astigmatism < ASTIGMATISM_THRESHOLD and iso.astigmatism < ASTIGMATISM_THRESHOLD
    assert all(a.astigmatism >= ASTIGMATISM_THRESHOLD for a in astig)
    assert abs(np.median([a.astigmatism_angle for a in astig]) - 60.0) < 10.0


@pytest.mark.slow
@pytest.mark.usefixtures("isolated_config")
@pytest.mark.parametrize("measure, radii", [("blur", (1.5, 4.0)), ("count", (2.0, 4.0))])
def test_client_flags_the_blurred_tiles_of_a_mixed_dose_section(tmp_path, monkeypatch, measure, radii):
    """Real fast and slow scans in focus (noise changes ~10x from tile to tile) and slow scans blurred by a
    disk probe (radius in ``radii``, px) with fast-scan-like noise: ``client submit`` calls the blurred ones,
    and only them, out of focus by defocus.

    The blur rule does for disks of 1.5-4 px. The count rule calls no in-focus tile, but it misses most 2-4 px
    disks here: on the scans' image area a disk lowers this specimen's count by only 0.11-0.44 (log), while fast
    and slow scans of one field differ by up to 0.19 (seeds 1, 2, 5: 0 of 4 found against the whole section's
    limit, 1 of 4 by the client's running baseline). The scans used to keep a line of the microscope's frame,
    whose features every blurred copy lost as well: that doubled the count's drop (0.31-0.65) and let this test
    pass for the count rule too. Across doses the blur separates better, which is why it is the default. No
    in-focus tile is called partly defocused: a partial rule on the cells' feature density called 5 of these 24
    partial (a cell of a few particles counts a tenth of its neighbours); on the cells' blur, with cells of smooth
    content (the inside of a large particle) left unjudged, it calls none.
    """
    from click.testing import CliRunner

    from mhd.client.cli import main

    monkeypatch.setenv("MHD_WORKERS", "1")  # verdicts are final when recorded: one worker fixes their order
    monkeypatch.setenv("MHD_FOCUS_MEASURE", measure)
    rng = np.random.default_rng(5)
    section = tmp_path / "section"
    section.mkdir()
    blurred = set()
    for k, (fast, slow) in enumerate(_pairs("time", "fast_100ns", "slow_30us") + _pairs("line", "single_line", "integrated_50x")[:4]):
        iio.imwrite(section / f"tile_{3 * k:02d}.png", fast)
        iio.imwrite(section / f"tile_{3 * k + 1:02d}.png", slow)
        if k % 3 == 0:
            name = f"tile_{3 * k + 2:02d}.png"
            iio.imwrite(section / name, sem_scan(slow, float(rng.uniform(*radii)), dose=20.0, tau=0.75, rng=rng))
            blurred.add(name)
    result = CliRunner().invoke(main, ["submit", "--dir", str(section)])
    recs = read_results(section)
    # exactly the blurred tiles are out of focus. The slow scans of this specimen read weakly anisotropic (0.06-0.29
    # along ~95 and ~173 deg: the scan resolves one axis a little worse; their fast scans hide it under noise), and
    # 5 of the 24 were called astigmatic before the verdict asked for a worst-direction blur above the limit; a rule on
    # the cells' feature density called 5 partial. A blurred copy that reads anisotropic may be called astigmatic.
    oof = {r["tile"] for r in recs if r["verdict"] == "oof"}
    sharpest = max(r["blur"] for r in recs if r["tile"] not in blurred)
    assert len(recs) == 24 + len(blurred) and all("blur" in r and "blur_err" in r for r in recs)
    assert result.exit_code == 2, result.output
    assert oof == blurred if measure == "blur" else oof and oof <= blurred, result.output
    for r in recs:
        if r["tile"] in oof:
            assert r["kind"] == "defocus" or (r["kind"] == "astigmatism" and r["blur"] > sharpest), result.output


def test_blur_calibration_recovers_a_known_law_and_judges_by_it():
    """blur^2 = a + b defocus^2 from noisy values; the stored rule estimates |defocus| and flags beyond max."""
    from mhd.client.calibration import fit_blur
    from mhd.client.judge import Judge
    from mhd.client.rule import Rule

    rng = np.random.default_rng(4)
    defocus = np.repeat(np.arange(-4.0, 4.5, 0.5), 2)
    blur = np.sqrt(0.64 + 0.81 * defocus**2) * (1 + rng.normal(0, 0.01, defocus.size))
    cal = fit_blur([f"i{k}.png" for k in range(defocus.size)], defocus, blur, max_defocus=1.5).calibration
    assert cal.measure == "blur" and cal.intercept == pytest.approx(0.64, abs=0.1) and cal.slope == pytest.approx(0.81, abs=0.03)
    assert cal.blur_threshold == pytest.approx(np.sqrt(0.64 + 0.81 * 1.5**2), rel=0.03)
    judge = Judge(Rule(calibration=cal))
    far = {
        "tile": "far.png",
        "features": 10,
        "density": 100.0,
        "blur": float(np.sqrt(0.64 + 0.81 * 9)),
        "grid": None,
        "shape": [512, 512],
        "error": None,
    }
    near = {"tile": "near.png", "features": 10, "density": 100.0, "blur": 0.85, "grid": None, "shape": [512, 512], "error": None}
    [far_judged], [near_judged] = judge.add(TileRecord.from_json(far)), judge.add(TileRecord.from_json(near))
    assert "verdict" not in far  # a new record: the input is left as it was
    assert far_judged.verdict == "oof" and far_judged.kind == "defocus" and far_judged.defocus == pytest.approx(3.0, abs=0.2)
    assert near_judged.verdict == "ok" and near_judged.defocus < 0.7


def test_blur_err_covers_the_scatter_between_noise_realizations():
    """One real field re-scanned with independent shot noise: ``blur_err`` never understates the spread of ``blur``.

    It overstates it: on this field (disk radius 2 px, dose 20) the realizations fall in two modes of the fit
    0.16 px apart, about half in each; over 16 realizations the standard deviation was 0.082-0.088 px for four sets
    of seeds, against ``blur_err`` 0.113. So ``blur_err``
    is an upper bound that covers the mode jumps, not the standard deviation within a mode.
    """
    _, slow = _pairs("time", "fast_100ns", "slow_30us")[0]
    dets = [detect(sem_scan(slow, 2.0, dose=20.0, tau=0.75, rng=k), backend="numpy") for k in range(16)]
    blur = np.array([d.blur for d in dets])
    err = np.median([d.blur_err for d in dets])
    assert np.std(blur, ddof=1) < 1.5 * err, (blur, err)
    assert np.all(np.abs(blur - np.median(blur)) < 2.5 * err), (blur, err)  # a mode jump is 1.4 err
    assert err < 0.2  # px: still small against the blur differences verdicts are made on (0.5 px and more)


def test_disk_radius_is_the_beam_cone_cross_section():
    """1 um of defocus at 5 mrad is a 5 nm radius: 1 px at 5 nm/px, either side of focus."""
    from mhd.functions.simulate import disk_radius

    assert disk_radius(1.0, 5.0, 5.0) == pytest.approx(1.0)
    np.testing.assert_allclose(disk_radius(np.array([-2.0, 0.0, 3.0]), 4.0, 2.0), [4.0, 0.0, 6.0])
    with pytest.raises(ValueError):
        disk_radius(1.0, 0.0, 5.0)


#: Slow scans vendored (``tests/data/sem-kriss/README.md``), in acquisition order, and where their microscope's record
#: (``record.csv``) puts them: 036-038 were taken 235-280 um of stage travel after the working distance was last set,
#: and the operator then changed it by 2.1 um (field 039); ``bench/focus_record.py fit`` reads the blur of all 50 fields
#: against that record (r 0.95).
DRIFT = ["001", "002", "003", "004", "005", "006", "007", "008", "036", "037", "038", "040", "041", "042"]
REFOCUSED, DRIFTED = {"001", "002", "040", "041", "042"}, {"036", "037", "038"}


def test_the_record_shows_the_focus_changed_between_the_drifted_and_the_refocused_fields():
    """The vendored record: one working distance from 003 to 038, 2.1 um less from 039 on; the stage travelled."""
    import csv

    with open(KRISS / "record.csv", newline="") as fh:
        slow = {r["field"]: r for r in csv.DictReader(fh) if r["scan"] == "slow_30us"}
    assert len(slow) == 50
    assert {slow[f]["wd_um"] for f in ("003", "020", "038")} == {"10044.6"} and slow["039"]["wd_um"] == "10042.5"
    travel = np.hypot(*(float(slow["038"][k]) - float(slow["003"][k]) for k in ("stage_x_um", "stage_y_um")))
    assert 250 < travel < 300


@pytest.mark.parametrize("focus, flagged", [("0.25", DRIFTED), ("0.5", {"036"})])
def test_a_real_focus_drift_is_flagged_and_the_refocused_fields_are_not(tmp_path, monkeypatch, focus, flagged):
    """Real slow scans in the order the microscope took them: `client submit` flags the fields its record puts 2-3 um
    from focus (a blur of 1.45-1.59 px against 0.94-1.01 px) and passes the fields right after a refocus.

    Against the section's median (``blur_focus`` 0.5) only 036 is flagged: the six mildly drifted fields 003-008
    carry the median along. 037 and 038 clear their limits (the warm-up's floor) by 0.01-0.02 px of added blur only: a
    change of the detector that moves them that much fails this test, and the finding should then be measured again
    (``bench/blur_validation.py drift``).
    """
    from click.testing import CliRunner

    from mhd.client.cli import main

    monkeypatch.setenv("MHD_WORKERS", "1")
    monkeypatch.setenv("MHD_BLUR_FOCUS", focus)
    section = tmp_path / "section"
    section.mkdir()
    for k, field in enumerate(DRIFT):
        iio.imwrite(section / f"tile_{k:02d}_{field}.png", iio.imread(KRISS / "time" / f"slow_30us_{field}.png"))
    result = CliRunner().invoke(main, ["submit", "--dir", str(section)])
    recs = {r["tile"].rsplit("_", 1)[1][:3]: r for r in read_results(section)}
    assert result.exit_code == 2, result.output
    assert min(recs[f]["blur"] for f in DRIFTED) > max(recs[f]["blur"] for f in REFOCUSED) + 0.3
    assert {f for f, r in recs.items() if r["verdict"] == "oof"} == flagged, result.output
    assert all(recs[f]["verdict"] == "ok" for f in REFOCUSED)


def test_the_blur_follows_the_microscope_s_record_of_its_focus(monkeypatch):
    """The 14 vendored slow scans' blur against their record: one tilted specimen, one working distance a scan, a
    disk-shaped probe (``bench/focus_record.py``). The five numbers explain the blur (measured: r 0.952, 0.059 px rms)
    with a probe's opening of a few milliradians (kappa 0.50 px/um: 2.9 nm of Gaussian blur per um of defocus)."""
    import importlib

    from conftest import ROOT

    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # the bench's worker processes import it by name
    focus_record = importlib.import_module("focus_record")
    monkeypatch.setattr(focus_record, "KRISS", KRISS)
    rows = focus_record.measured([r for r in focus_record.read_record() if r["scan"] == "slow_30us"], None)
    assert sorted(r["field"] for r in rows) == sorted(DRIFT)
    params = focus_record.fit_record(rows)
    blur, model = np.array([r["blur"] for r in rows]), focus_record.predicted(params, rows)
    assert np.corrcoef(blur, model)[0, 1] > 0.9 and np.sqrt(np.mean((blur - model) ** 2)) < 0.1
    assert 0.3 < params[1] < 0.7  # px of blur per um of defocus
