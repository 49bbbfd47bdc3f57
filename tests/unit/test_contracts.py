"""mhd.contracts: what the worker, the client and the endpoint share is complete and agrees with itself."""

from __future__ import annotations

import io

import pytest

from mhd.client.discover import discover
from mhd.contracts import files, formats, limits
from mhd.contracts.formats import FORMATS, is_complete
from mhd.contracts.verdicts import LOOKS, Kind, Verdict, look
from mhd.functions.worker.settings import ENV_VARS, Limits
from mhd.functions.worker.tileio import DECODERS, read_tile
from tilegen import blobs, encode


def test_every_verdict_and_kind_has_a_look():
    assert set(LOOKS) == {*Verdict, *Kind}
    assert {len(shown.label) for shown in LOOKS.values()} == {5}  # console lines align
    assert len({look("oof", k).marker for k in Kind}) == len(Kind) and len({look("oof", k).mark for k in Kind}) == len(Kind)


def test_a_kind_written_by_a_newer_version_looks_like_a_plain_oof_and_a_bad_verdict_is_refused():
    assert look("oof", "coma") == LOOKS[Verdict.OOF] and look("ok", "defocus") == LOOKS[Verdict.OK]
    with pytest.raises(ValueError):
        look("maybe")


def test_verdicts_are_their_strings_on_the_wire():
    import json

    assert json.dumps([Verdict.OOF, Kind.PARTIAL]) == '["oof", "partial"]'
    assert f"{Verdict.ERROR} {Kind.DEFOCUS}" == "error defocus" and {"ok": 1}[Verdict.OK] == 1


@pytest.mark.parametrize("fmt", formats.FORMATS, ids=lambda f: f.name)
def test_each_format_is_found_sniffed_decoded_and_checked_whole(tmp_path, fmt):
    data = encode(blobs((64, 80)), fmt.name)
    assert formats.sniff(data) is fmt and DECODERS[fmt.name] == fmt.decoder
    image = read_tile(io.BytesIO(data), max_pixels=10**6)
    assert image.shape == (64, 80)
    for suffix in fmt.suffixes:
        (tmp_path / f"t{suffix.upper()}").write_bytes(data)
    assert sorted(t.id for t in discover(tmp_path).tiles) == sorted(f"t{s.upper()}" for s in fmt.suffixes)
    assert all(formats.is_complete(tmp_path / f"t{s.upper()}") for s in fmt.suffixes)


def test_the_formats_do_not_overlap():
    suffixes = [s for f in formats.FORMATS for s in f.suffixes]
    assert len(suffixes) == len(set(suffixes)) and set(suffixes) == formats.IMAGE_SUFFIXES
    assert all(s == s.lower() and s.startswith(".") for s in suffixes)
    for f in formats.FORMATS:
        assert all(formats.sniff(m + bytes(16)) is f for m in f.magic)
    assert formats.sniff(b"GIF89a" + bytes(8)) is None and formats.names() == "PNG, TIFF, BMP or JPEG"


@pytest.mark.parametrize("name", sorted(files.OWN_FILES))
def test_nothing_the_client_writes_into_a_section_is_taken_for_a_tile(tmp_path, name):
    """After ``client focus-sweep`` the plot it wrote was scored by submit and calibrate as a tile."""
    png = encode(blobs((32, 32)), "PNG")
    (tmp_path / "tile_1.png").write_bytes(png)
    (tmp_path / name).write_bytes(png)  # an image's bytes under the name, whatever its suffix
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / name).write_bytes(png)
    (tmp_path / files.REPORT_DIR).mkdir()
    (tmp_path / files.REPORT_DIR / "montage.png").write_bytes(png)
    found = discover(tmp_path)
    assert [t.id for t in found.tiles] == ["tile_1.png"]
    assert files.is_own((files.REPORT_DIR, "x.png")) and files.is_own(("sub", files.SWEEP_PLOT)) and not files.is_own(("t.png",))


def test_the_client_sends_inline_only_what_the_worker_accepts():
    worker = Limits.from_env({})
    assert limits.INLINE_SEND_BYTES <= worker.max_inline_bytes
    assert limits.REQUEST_BYTES * 4 / 3 < 10_000_000  # the web service's limit per request, after base64
    assert {k: v for k, v in ENV_VARS.items() if v is not None} == limits.WORKER_LIMITS


def test_the_data_root_check_is_shared(tmp_path):
    assert limits.check_data_root(tmp_path / "x" / "..") == tmp_path.resolve()
    for root in ("/", "//", "/tmp/.."):
        with pytest.raises(ValueError, match="not the file system's root"):
            limits.check_data_root(root)
    with pytest.raises(ValueError, match="MHD_DATA_ROOT must be a folder"):
        Limits.from_env({"MHD_DATA_ROOT": "/"})


def test_the_allowed_serializers_admit_our_tasks_and_nothing_pickled():
    """The allow-list the endpoint and the local engine are given, applied by the SDK's own serializer."""
    from globus_compute_sdk.serialize import ComputeSerializer, DillDataBase64

    from mhd.client.registration import score_serializer
    from mhd.functions.worker.remote import score_tiles

    guard = ComputeSerializer(allowed_deserializer_types=limits.ALLOWED_SERIALIZERS)
    args = score_serializer().serialize({"tiles": ["a.png"], "params": {"sigma": 1.0}})
    assert guard.deserialize(args) == {"tiles": ["a.png"], "params": {"sigma": 1.0}}
    assert guard.deserialize(score_serializer().serialize(score_tiles)).__name__ == "score_tiles"
    pickled = ComputeSerializer(strategy_data=DillDataBase64()).serialize({"tiles": []})
    with pytest.raises(Exception, match="(?i)deserializ|allow"):
        guard.deserialize(pickled)
    assert set(limits.RESULT_SERIALIZERS) <= set(limits.ALLOWED_SERIALIZERS)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_a_truncated_file_is_incomplete_without_decoding_it(tmp_path, monkeypatch, fmt):
    """Every registered format has a completeness check (one without raised KeyError and stopped watch)."""
    import mhd.functions.worker.tileio as tileio

    def no_decoding(*args, **kwargs):
        raise AssertionError("the watcher decoded a tile")

    monkeypatch.setattr(tileio, "read_tile", no_decoding)
    monkeypatch.setattr(tileio, "_read_tiff", no_decoding)
    image = blobs((200, 300), 3)
    data = encode(image, fmt.name, **({"rowsperstrip": 16} if fmt.name == "TIFF" else {}))  # TIFF: tifffile, 13 strips
    whole = tmp_path / f"whole{fmt.suffixes[0]}"
    whole.write_bytes(data)
    assert is_complete(whole)
    for cut in (len(data) - 1, len(data) // 2, 40, 0):
        part = tmp_path / f"cut{cut}{fmt.suffixes[0]}"
        part.write_bytes(data[:cut])
        assert not is_complete(part), (fmt, cut)
    assert not is_complete(tmp_path / "missing.png")


@pytest.mark.parametrize("head", [b"BM", b"BM\x01", b"BM\x01\x00\x00"])
def test_a_bmp_cut_inside_its_header_is_not_complete_and_raises_nothing(tmp_path, head):
    """``watch`` stopped with "unpack requires a buffer of 4 bytes" on a BMP caught after its first bytes."""
    (tmp_path / "a.bmp").write_bytes(head)
    assert formats.is_complete(tmp_path / "a.bmp") is False
