"""DICOM decoding: pydicom's shipped files, display transforms checked by hand, privacy."""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medray.data.dicom import decode_dicom_gray, is_dicom
from medray.data.preprocess import decode_gray
from medray.errors import DecodeError

SECRET = "SECRETPATIENT"


def shipped(name: str) -> str:
    """A test file that pydicom ships in its wheel (never downloaded)."""
    p = Path(pydicom.data.__file__).parent / "test_files" / name
    assert p.is_file(), f"pydicom no longer ships {name}"
    return str(p)


def raw(name: str) -> tuple[Dataset, np.ndarray]:
    ds = pydicom.dcmread(shipped(name))
    return ds, ds.pixel_array.astype(np.float64)


def linear_window(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR window onto 0..255, written out by hand."""
    lo, hi = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
    y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0
    y = np.where(x <= lo, 0.0, np.where(x > hi, 255.0, y))
    return np.rint(y).astype(np.uint8)


def minmax(x: np.ndarray) -> np.ndarray:
    return np.rint((x - x.min()) / (x.max() - x.min()) * 255.0).astype(np.uint8)


def save_copy(ds: Dataset, path: Path) -> str:
    ds.save_as(path, enforce_file_format=True)
    return str(path)


# --------------------------------------------------------------------------- transforms


def test_ct_rescale_without_window_is_min_max_of_hounsfield_units():
    ds, stored = raw("CT_small.dcm")
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0) and "WindowCenter" not in ds
    hu = stored * 1.0 - 1024.0
    np.testing.assert_array_equal(decode_dicom_gray(shipped("CT_small.dcm")), minmax(hu))


def test_mr_window_center_width_linear():
    ds, stored = raw("MR_small.dcm")
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (600.0, 1600.0)
    got = decode_dicom_gray(shipped("MR_small.dcm"))
    expect = linear_window(stored, 600.0, 1600.0)
    assert np.abs(got.astype(int) - expect).max() <= 1  # float rounding at .5 only
    assert (got != expect).mean() < 0.01


def test_compressed_ct_with_rescale_and_window_jpeg2000():
    # A real head CT (JPEG 2000, 14-bit signed, intercept -1024, window 40/100).
    ds, stored = raw("693_J2KI.dcm")
    hu = stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    got = decode_dicom_gray(shipped("693_J2KI.dcm"))
    assert np.abs(got.astype(int) - linear_window(hu, 40.0, 100.0)).max() <= 1


def test_monochrome1_is_inverted(tmp_path):
    ds = pydicom.dcmread(shipped("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    inv = decode_dicom_gray(save_copy(ds, tmp_path / "m1.dcm"))
    np.testing.assert_array_equal(inv, 255 - decode_dicom_gray(shipped("MR_small.dcm")))


def test_sigmoid_voi_function(tmp_path):
    ds, stored = raw("MR_small.dcm")
    ds.VOILUTFunction = "SIGMOID"
    got = decode_dicom_gray(save_copy(ds, tmp_path / "sig.dcm"))
    expect = np.rint(255.0 / (1 + np.exp(-4 * (stored - 600.0) / 1600.0)))
    assert np.abs(got.astype(int) - expect).max() <= 1


def _voi_lut_item(first: int, data: np.ndarray, bits: int) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [len(data), first, bits]
    item.LUTData = [int(v) for v in data]
    item["LUTData"].VR = "US"
    return item


def test_voi_lut_sequence_is_preferred_over_the_window(tmp_path):
    ds, stored = raw("CT_small.dcm")
    hu = (stored - 1024).astype(np.int64)
    # A 12-bit LUT over HU -1024..1023: a steep ramp (not a window pydicom could guess).
    first, n = -1024, 2048
    lut = np.clip((np.arange(n) ** 1.5) / (n**1.5) * 4095 * 1.3, 0, 4095).astype(np.uint16)
    ds.VOILUTSequence = Sequence([_voi_lut_item(first, lut, 12)])
    ds.WindowCenter, ds.WindowWidth = 0, 10  # present too: the LUT wins (pydicom prefer_lut)
    got = decode_dicom_gray(save_copy(ds, tmp_path / "voi.dcm"))
    idx = np.clip(hu - first, 0, n - 1)
    expect = np.rint(lut[idx] / 4095.0 * 255.0).astype(np.uint8)
    np.testing.assert_array_equal(got, expect)


def test_voi_lut_declared_16_bits_holding_12(tmp_path):
    # Writers that declare 16 bits per entry but store 12-bit values: mapped by 4095.
    ds, stored = raw("CT_small.dcm")
    hu = (stored - 1024).astype(np.int64)
    lut = np.linspace(0, 4095, 4096).astype(np.uint16)
    ds.VOILUTSequence = Sequence([_voi_lut_item(-1024, lut, 16)])
    got = decode_dicom_gray(save_copy(ds, tmp_path / "voi16.dcm"))
    expect = np.rint(lut[np.clip(hu + 1024, 0, 4095)] / 4095.0 * 255.0).astype(np.uint8)
    np.testing.assert_array_equal(got, expect)


def test_modality_lut_sequence(tmp_path):
    ds, stored = raw("MR_small.dcm")
    for k in ("WindowCenter", "WindowWidth"):
        del ds[k]
    item = Dataset()
    table = (np.arange(4096) // 2 + 100).astype(np.uint16)
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = [int(v) for v in table]
    item["LUTData"].VR = "US"
    item.ModalityLUTType = "US"
    ds.ModalityLUTSequence = Sequence([item])
    got = decode_dicom_gray(save_copy(ds, tmp_path / "mlut.dcm"))
    np.testing.assert_array_equal(got, minmax(table[np.clip(stored.astype(int), 0, 4095)].astype(np.float64)))


def test_rgb_dicom_becomes_luma():
    ds, _ = raw("examples_rgb_color.dcm")
    rgb = ds.pixel_array.astype(np.float64)
    expect = np.rint(np.clip(rgb @ np.array([0.299, 0.587, 0.114]) / 255.0, 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(decode_dicom_gray(shipped("examples_rgb_color.dcm")), expect)


def test_decode_gray_dispatches_dcm_and_resizes():
    from PIL import Image

    full = decode_dicom_gray(shipped("CT_small.dcm"))
    small = decode_gray(shipped("CT_small.dcm"), 32)
    np.testing.assert_array_equal(small, np.asarray(Image.fromarray(full).resize((32, 32), Image.BILINEAR)))


def test_dicom_without_suffix_is_found_by_magic(tmp_path):
    p = tmp_path / "IM000001"  # PACS exports often have no suffix
    shutil.copy(shipped("CT_small.dcm"), p)
    assert is_dicom(str(p)) and not is_dicom(b"\0" * 200)
    np.testing.assert_array_equal(decode_gray(str(p), 32), decode_gray(shipped("CT_small.dcm"), 32))
    np.testing.assert_array_equal(decode_gray(p.read_bytes(), 32), decode_gray(shipped("CT_small.dcm"), 32))


# --------------------------------------------------------------------------- bad files


@pytest.mark.parametrize(
    "name, reason",
    [
        ("rtdose.dcm", "multi-frame DICOM (15 frames)"),
        ("MR_truncated.dcm", "pixel data cannot be decoded"),
        ("rtplan.dcm", "DICOM file without pixel data"),
        ("examples_palette.dcm", "photometric interpretation PALETTE COLOR is not supported"),
    ],
)
def test_shipped_files_that_are_not_one_grey_image_fail_naming_the_file(name, reason):
    with pytest.raises(DecodeError) as e:
        decode_gray(shipped(name), 32)
    assert str(e.value).startswith(shipped(name) + ": ") and reason in str(e.value)
    assert e.value.path == shipped(name) and reason in e.value.reason


def test_empty_and_garbage_dcm_files(tmp_path):
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"this is not DICOM" * 20)
    with pytest.raises(DecodeError, match=r"empty\.dcm: empty file \(0 bytes\)"):
        decode_gray(str(empty), 32)
    with pytest.raises(DecodeError, match=r"junk\.dcm: (not a readable DICOM file|DICOM file without pixel data)"):
        decode_gray(str(junk), 32)


def test_jpeg_ls_decodes_with_the_dicom_extra_or_says_what_to_install():
    """MR_small_jpeg_ls_lossless.dcm is MR_small.dcm compressed losslessly."""
    try:
        import jpeg_ls  # noqa: F401  (pyjpegls, in medray[dicom])
    except ImportError:
        with pytest.raises(DecodeError, match=r"JPEG-LS Lossless.*cannot be decompressed here; install medray\[dicom\]"):
            decode_gray(shipped("MR_small_jpeg_ls_lossless.dcm"), 32)
        return
    np.testing.assert_array_equal(
        decode_dicom_gray(shipped("MR_small_jpeg_ls_lossless.dcm")), decode_dicom_gray(shipped("MR_small.dcm"))
    )


def test_a_stream_every_installed_decoder_refuses():
    # JPEG-lossy.dcm: a 12-bit JPEG Extended stream Pillow cannot and libjpeg will not decode.
    with pytest.raises(DecodeError, match=r"JPEG Extended.*(could not be decompressed by the installed|install medray\[dicom\])"):
        decode_gray(shipped("JPEG-lossy.dcm"), 32)


# --------------------------------------------------------------------------- privacy


def _with_identity(src: str, dst: Path) -> str:
    ds = pydicom.dcmread(src)
    ds.PatientName = f"{SECRET}^NAME"
    ds.PatientID = f"{SECRET}-ID"
    ds.PatientBirthDate = f"{SECRET}-not-a-date"  # invalid DA: pydicom would warn quoting it
    ds.InstitutionName = SECRET
    return save_copy(ds, dst)


def test_no_identifying_tag_reaches_logs_warnings_or_errors(tmp_path, caplog):
    good = _with_identity(shipped("CT_small.dcm"), tmp_path / "good.dcm")
    bad = _with_identity(shipped("MR_truncated.dcm"), tmp_path / "bad.dcm")
    many = _with_identity(shipped("rtdose.dcm"), tmp_path / "many.dcm")
    caplog.clear()  # writing the files above made pydicom warn (about the bad date): not ours
    caplog.set_level(logging.DEBUG)
    logging.getLogger("pydicom").setLevel(logging.DEBUG)
    messages = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decode_gray(good, 32)
        for p in (bad, many):
            with pytest.raises(DecodeError) as e:
                decode_gray(p, 32)
            messages.append(str(e.value))
    text = "\n".join(messages + [r.getMessage() for r in caplog.records] + [str(w.message) for w in caught])
    assert SECRET not in text
    assert pydicom.dcmread(good).PatientID.startswith(SECRET)  # the tags really are there


def test_a_photometric_interpretation_value_never_reaches_the_error(tmp_path):
    """The break-it round: a PhotometricInterpretation value appeared verbatim in the error,
    metrics.json, report.md and report.html.  A defined term may be named; any other text
    is a tag value and is not."""
    ds = pydicom.dcmread(shipped("CT_small.dcm"))
    ds.PhotometricInterpretation = SECRET
    ds.save_as(tmp_path / "odd.dcm")
    with pytest.raises(DecodeError) as e:
        decode_gray(tmp_path / "odd.dcm", 32)
    assert SECRET not in str(e.value) and "photometric interpretation a non-standard value" in str(e.value)
    ds.PhotometricInterpretation = "CMYK"
    ds.save_as(tmp_path / "cmyk.dcm")
    with pytest.raises(DecodeError, match="photometric interpretation CMYK is not supported"):
        decode_gray(tmp_path / "cmyk.dcm", 32)
