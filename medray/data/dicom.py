"""DICOM radiographs → uint8 grey images, the way a viewer displays them (pydicom).

The display pipeline of DICOM PS3.3 C.11, applied in order:

1. stored values → modality values: Modality LUT Sequence, or Rescale Slope/Intercept
   (``pydicom.pixels.apply_modality_lut``);
2. modality values → display values: VOI LUT Sequence, or Window Center/Width (first
   view; LINEAR, LINEAR_EXACT or SIGMOID) (``pydicom.pixels.apply_voi_lut``), mapped from
   the output range of that transform to 0..255; without any VOI transform the image's
   own min..max is mapped to 0..255 (as for 16-bit PNGs);
3. MONOCHROME1 (high values dark) is inverted so that bone is bright, as in MONOCHROME2.

Colour images (RGB / YBR, converted to RGB by pydicom) become grey by ITU-R 601 luma.

Privacy: only the pixel-module tags below are read (``dcmread(specific_tags=...)``), so
names, IDs and dates are never parsed; error messages name the file and the kind of
problem, never a tag value; pydicom's own warnings (which can quote values) are not
passed on.  Sample ids come from file paths, never from tags.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np

from medray.errors import DecodeError

log = logging.getLogger("medray.data")

# pydicom's warnings and log records can quote tag values (e.g. "Invalid value for VR
# PN: '...'"): none of them is passed on while medray reads a file.  Module-level
# filters, not catch_warnings(): decoding runs in threads, and catch_warnings is not
# thread-safe.
warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
warnings.filterwarnings("ignore", module=r"medray\.data\.dicom$")
_reading = threading.local()


class _WhileReading(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_reading, "active", False)


logging.getLogger("pydicom").addFilter(_WhileReading())


@contextmanager
def _quiet_pydicom():
    _reading.active = True
    try:
        yield
    finally:
        _reading.active = False

# Everything the pixel pipeline needs — and nothing that identifies a patient.
PIXEL_TAGS = [
    "SpecificCharacterSet", "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration",
    "NumberOfFrames", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
    "PixelRepresentation", "RescaleIntercept", "RescaleSlope", "RescaleType", "ModalityLUTSequence",
    "VOILUTSequence", "WindowCenter", "WindowWidth", "VOILUTFunction",
    "ExtendedOffsetTable", "ExtendedOffsetTableLengths", "PixelData",
    "FloatPixelData", "DoubleFloatPixelData",
]
GREY = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
_LUMA = np.array([0.299, 0.587, 0.114])


def is_dicom(src: str | Path | bytes) -> bool:
    """A ``.dcm`` name, or the ``DICM`` magic after the 128-byte preamble."""
    if isinstance(src, (str, Path)):
        if str(src).lower().endswith(".dcm"):
            return True
        try:
            with open(src, "rb") as f:
                head = f.read(132)
        except OSError:
            return False
    else:
        head = bytes(src[:132])
    return len(head) == 132 and head[128:] == b"DICM"


def read_dicom(src: str | Path | bytes | BinaryIO):
    """The pixel-module tags of a DICOM file (a pydicom Dataset), or DecodeError."""
    import pydicom
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if isinstance(src, bytes):
        if not src:
            raise DecodeError("empty file (0 bytes)")
        src = io.BytesIO(src)
    elif isinstance(src, (str, Path)) and Path(src).is_file() and Path(src).stat().st_size == 0:
        raise DecodeError("empty file (0 bytes)")
    try:
        with _quiet_pydicom():
            # force=True: files without the 128-byte preamble (older archives) are common.
            ds = pydicom.dcmread(src, force=True, specific_tags=PIXEL_TAGS)
    except Exception as e:
        raise DecodeError(f"not a readable DICOM file ({type(e).__name__})") from None
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DecodeError("DICOM file without pixel data (not an image object, or not DICOM)")
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        # No file meta (a bare data set): the encoding pydicom detected tells the syntax.
        implicit, little = getattr(ds, "original_encoding", (None, None))
        uid = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
        if meta is None:
            ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = uid
    return ds


# PS3.3 C.7.6.3.1.2: the defined terms of Photometric Interpretation.
DEFINED_PHOTOMETRIC = frozenset({"MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "HSV", "ARGB", "CMYK", "YBR_FULL",
                                 "YBR_FULL_422", "YBR_PARTIAL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT"})


def pixels(ds) -> np.ndarray:
    """Decoded stored values of a single-frame DICOM, or DecodeError (no tag values quoted)."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DecodeError(f"multi-frame DICOM ({frames} frames): a classification source needs one 2D image per file")
    pi = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if pi not in GREY + COLOUR:
        # Named only when it is one of the standard's defined terms: any other text is a
        # tag value, and no tag value reaches logs, errors or outputs.
        what = pi if pi in DEFINED_PHOTOMETRIC else ("missing" if not pi else "a non-standard value")
        raise DecodeError(f"photometric interpretation {what} is not supported (grey or RGB/YBR only)")
    try:
        with _quiet_pydicom():
            return ds.pixel_array
    except Exception as e:
        ts = ds.file_meta.TransferSyntaxUID
        if "missing dependencies" in str(e) or isinstance(e, NotImplementedError):
            raise DecodeError(
                f"pixel data in '{ts.name}' cannot be decompressed here; install medray[dicom] "
                "(pylibjpeg, pylibjpeg-libjpeg, pyjpegls) for JPEG Lossless / JPEG-LS / 12-bit JPEG"
            ) from None
        if "all available plugins" in str(e):
            # Decoders are installed but each refused the stream (corrupt, or a variant
            # they do not implement); pydicom's text lists the decoders' errors.
            raise DecodeError(
                f"pixel data in '{ts.name}' could not be decompressed by the installed decoders "
                "(corrupt or unsupported compressed stream)"
            ) from None
        raise DecodeError(f"pixel data cannot be decoded ({type(e).__name__}; truncated or inconsistent pixel module)") from None


def voi_output_range(ds) -> tuple[float, float] | None:
    """Output range of the VOI transform that ``apply_voi_lut`` applies (None: no VOI)."""
    seq = ds.get("VOILUTSequence")
    if seq and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None:
        # Declared bits per entry; some writers declare 16 and store 12-bit values, so
        # take the smallest depth (>= 8) that holds the table's largest value.
        from pydicom.pixels import apply_voi

        entries, first = int(seq[0].LUTDescriptor[0]) or 2**16, int(seq[0].LUTDescriptor[1])
        declared = int(seq[0].LUTDescriptor[2])
        top = int(np.max(apply_voi(np.arange(first, first + entries), ds, 0)))
        bits = max(8, min(declared, top.bit_length()))
        return 0.0, float(2**bits - 1)
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        # Exactly the range pydicom's apply_windowing maps the window onto.
        bits = int(ds.BitsStored)
        if ds.get("ModalityLUTSequence"):
            lo, hi = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
        elif int(ds.PixelRepresentation) == 0:
            lo, hi = 0.0, float(2**bits - 1)
        else:
            lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
        if ds.get("RescaleSlope") is not None and ds.get("RescaleIntercept") is not None:
            s, b = float(ds.RescaleSlope), float(ds.RescaleIntercept)
            lo, hi = sorted((lo * s + b, hi * s + b))
        return lo, hi
    return None


def to_unit_range(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``lo..hi`` → 0..255 uint8 (clipped, rounded); a flat range gives zeros."""
    v = values.astype(np.float64)
    if hi <= lo:
        return np.zeros(v.shape, np.uint8)
    return np.rint(np.clip((v - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)


def dicom_to_gray_u8(ds) -> np.ndarray:
    """The display image of a DICOM data set as ``(rows, cols)`` uint8 (see module doc)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    arr = pixels(ds)
    pi = str(ds.PhotometricInterpretation).strip().upper()
    if pi in COLOUR:
        # pixel_array already converted YBR to RGB; luma in the stored bit range.
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise DecodeError(f"colour DICOM with unexpected pixel shape {arr.shape}")
        luma = arr.astype(np.float64) @ _LUMA
        return to_unit_range(luma, 0.0, float(2 ** int(ds.BitsStored) - 1))
    if arr.ndim != 2:
        raise DecodeError(f"grey DICOM with unexpected pixel shape {arr.shape}")
    try:
        with _quiet_pydicom():
            values = apply_modality_lut(arr, ds)
            if ds.get("VOILUTSequence") and values.dtype.kind == "f" and np.all(values == np.rint(values)):
                # A VOI LUT indexes by integer value; an integral rescale result is one.
                values = values.astype(np.int64)
            voi = apply_voi_lut(values, ds, index=0)
            rng = voi_output_range(ds) if voi is not values else None
    except DecodeError:
        raise
    except Exception as e:
        raise DecodeError(f"invalid modality/VOI LUT or window in the pixel module ({type(e).__name__})") from None
    if rng is None:
        out = to_unit_range(values, float(np.min(values)), float(np.max(values)))
    else:
        out = to_unit_range(voi, *rng)
    if pi == "MONOCHROME1":
        out = 255 - out
    return out


def decode_dicom_gray(src: str | Path | bytes | BinaryIO) -> np.ndarray:
    """Read and convert one DICOM file to a full-resolution uint8 grey image."""
    return dicom_to_gray_u8(read_dicom(src))
