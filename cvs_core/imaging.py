"""Read PNG, JPEG, TIFF (8/16-bit), BMP and DICOM into one greyscale array, with a size guard.

:func:`read_image` returns a :class:`LoadedImage` whose ``pixels`` are ``(H, W)`` (rows, columns):
``uint8`` for 8-bit sources, ``float32`` for wider ones (16-bit TIFF/PNG, DICOM after its modality
and VOI LUTs). Everything that can go wrong with an input file raises :class:`ImageError` with a
message naming the file and the problem, so the app and CLI can show it as is.

Conventions
- Orientation: the EXIF/TIFF Orientation tag is honoured, so ``pixels`` (and :func:`image_size`)
  are in the frame a viewer shows; landmark coordinates refer to that frame.
- Colour: RGB(A), palette, CMYK … become grey with the ITU-R 601 luma weights
  (0.299 R + 0.587 G + 0.114 B, as Pillow and OpenCV use). Alpha is *ignored* (the colour values are
  used as stored, not composited); a note records it.
- DICOM: the modality LUT (rescale slope/intercept) and then the VOI LUT or window are applied
  (``pydicom.pixels.apply_modality_lut`` / ``apply_voi_lut``); MONOCHROME1 is inverted so bone is
  bright as in MONOCHROME2. Spacing comes from ImagerPixelSpacing (0018,1164), else
  PixelSpacing (0028,0030), both ``[row, col]`` mm/px; missing spacing gives ``None`` and a note.
  Multi-frame files (DICOM, multi-page TIFF) give their first frame and a note.
- Size guard: width × height is read from the header and checked against ``max_pixels`` *before*
  any pixel is decoded. Pillow's own decompression-bomb check (``Image.MAX_IMAGE_PIXELS``, applied
  in ``Image.open``) is sidestepped by constructing the format's ``ImageFile`` class directly, so
  this module's limit is the only one and the message can state the declared size. The global
  ``PIL.Image.MAX_IMAGE_PIXELS`` is left untouched.
"""
from __future__ import annotations

import io
import os
import string
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Union

import cv2
import numpy as np
from PIL import BmpImagePlugin, Image, ImageOps, JpegImagePlugin, PngImagePlugin

from cvs_core.limits import LimitError, check_image_header, limits, read_file_bounded
from cvs_core.preprocess import to_uint8

SUPPORTED_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom")
DEFAULT_MAX_PIXELS = 50_000_000
MIN_SIDE = 8
FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "DICOM")

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]

_PIL_CLASSES = {
    "PNG": PngImagePlugin.PngImageFile,
    "JPEG": JpegImagePlugin.JpegImageFile,
    "BMP": BmpImagePlugin.BmpImageFile,
}
_LUMA = (np.float32(0.299), np.float32(0.587), np.float32(0.114))
# Errors that decoders raise on truncated or malformed data.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError,
                  AttributeError, RuntimeError, NotImplementedError, ZeroDivisionError, struct.error,
                  OverflowError)


class ImageError(ValueError):
    """An input image that cannot be used; the message names the file and the problem."""


class ImageLimitError(ImageError, LimitError):
    """An image over one of the lab's resource limits (:mod:`cvs_core.limits`)."""


@dataclass
class LoadedImage:
    """A decoded greyscale image.

    pixels: ``(H, W)`` greyscale, rows then columns; ``uint8`` for 8-bit sources, ``float32`` for
        wider ones (16-bit TIFF/PNG, DICOM).
    spacing_mm: ``(row, col)`` pixel spacing in mm/px (from DICOM), or ``None`` when unknown.
    source: the file name or label it was read from.
    format: one of ``FORMATS``.
    original_dtype: dtype of the stored samples before conversion (e.g. ``"uint16"``).
    notes: human-readable remarks (conversions applied, spacing missing, frames dropped …).
    """

    pixels: np.ndarray
    spacing_mm: tuple[float, float] | None = None
    source: str = ""
    format: str = ""
    original_dtype: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` in pixels."""
        return self.width, self.height

    def as_uint8(self) -> np.ndarray:
        """``(H, W)`` uint8: the pixels themselves if 8-bit, else range-scaled (``preprocess.to_uint8``)."""
        return to_uint8(self.pixels)


# --- public API ----------------------------------------------------------------------------

def read_image(path_or_bytes: ImageSource, name: str | None = None,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Read a PNG, JPEG, TIFF, BMP or DICOM file (path, raw bytes, or a file-like upload).

    name: label used in messages and ``source`` (defaults to the path, or the upload's ``.name``);
    its extension also helps detect preamble-less DICOM. max_pixels: limit on width × height,
    checked from the header before decoding (``None`` disables it).
    Returns a :class:`LoadedImage` with ``pixels`` shaped ``(H, W)``. Raises :class:`ImageError`.
    """
    if max_pixels == DEFAULT_MAX_PIXELS:  # the default follows CVS_LIMIT_MAX_PIXELS
        max_pixels = limits().max_pixels
    data, label = _read_bytes(path_or_bytes, name)
    fmt, has_magic = _detect(data, label)
    if fmt == "DICOM":
        return _read_dicom(data, label, max_pixels, has_magic)
    if fmt == "TIFF":
        return _read_tiff(data, label, max_pixels)
    return _read_pil(data, label, fmt, max_pixels)


def image_size(path_or_bytes: ImageSource, name: str | None = None) -> tuple[int, int]:
    """``(width, height)`` of an image from its header only (no pixel decoding).

    The size is in the displayed frame (EXIF/TIFF orientation applied, so 90° rotations swap it),
    i.e. the frame of :func:`read_image`'s pixels. Raises :class:`ImageError`.
    """
    if isinstance(path_or_bytes, (str, os.PathLike)):
        label = name or str(path_or_bytes)
        path = Path(path_or_bytes)
        _check_path(path, label)
        with open(path, "rb") as fh:
            head = fh.read(132)
        if not head:
            raise ImageError(f"'{label}' is empty (0 bytes)")
        fmt, has_magic = _detect(head, label)
        src: object = path
    else:
        data, label = _read_bytes(path_or_bytes, name)
        fmt, has_magic = _detect(data, label)
        src = io.BytesIO(data)
    try:
        if fmt == "DICOM":
            import pydicom

            try:
                ds = pydicom.dcmread(src, stop_before_pixels=True, force=not has_magic)
                rows, cols = ds.get("Rows"), ds.get("Columns")
                rows, cols = (None, None) if rows is None or cols is None else (int(rows), int(cols))
            except MemoryError:
                raise
            except Exception as exc:  # lazy element parsing: see _read_dicom
                raise ImageError(f"'{label}' is truncated or corrupt (DICOM header: {exc})") from exc
            if rows is None or cols is None:
                raise ImageError(f"'{label}' is a DICOM file without Rows/Columns (no image)")
            return cols, rows
        if fmt == "TIFF":
            import tifffile

            with tifffile.TiffFile(src) as tif:
                page = tif.pages[0]
                w, h = int(page.imagewidth), int(page.imagelength)
                orientation = _tiff_orientation(page)
        else:
            im = _PIL_CLASSES[fmt](src)
            try:
                w, h = im.size
                orientation = _header_orientation(im)
            finally:
                im.close()
    except ImageError:
        raise
    except _DECODE_ERRORS + (MemoryError,) as exc:
        raise ImageError(f"'{label}' is truncated or corrupt ({fmt} header: {exc})") from exc
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


# --- input handling ------------------------------------------------------------------------

def _check_path(path: Path, label: str) -> None:
    if not path.exists():
        raise ImageError(f"'{label}' does not exist")
    if path.is_dir():
        raise ImageError(f"'{label}' is a directory, not an image file")


def _read_bytes(src: ImageSource, name: str | None) -> tuple[bytes, str]:
    """Raw bytes and a display label from a path, bytes, or a file-like object."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        data, label = bytes(src), name or "<uploaded bytes>"
    elif isinstance(src, (str, os.PathLike)):
        label = name or str(src)
        path = Path(src)
        _check_path(path, label)
        try:
            data = read_file_bounded(path, label)
        except LimitError as exc:
            raise ImageLimitError(str(exc)) from None
        except OSError as exc:
            raise ImageError(f"'{label}' cannot be read ({exc.strerror or exc})") from exc
    elif hasattr(src, "read"):
        label = name or str(getattr(src, "name", "") or "<uploaded file>")
        if hasattr(src, "getvalue"):  # BytesIO, Streamlit's UploadedFile
            data = bytes(src.getvalue())
        else:
            if hasattr(src, "seek"):
                src.seek(0)
            data = src.read()
        if isinstance(data, str):
            raise ImageError(f"'{label}' was opened in text mode; open it with 'rb'")
    else:
        raise TypeError(f"read_image expects a path, bytes or a binary file object, got {type(src).__name__}")
    if len(data) > limits().max_file_bytes:
        raise ImageLimitError(f"'{label}' is {len(data) / 2**20:.1f} MB, over the {limits().max_file_bytes / 2**20:.0f} MB "
                              f"per-file limit (CVS_LIMIT_MAX_FILE_BYTES)")
    if not data:
        raise ImageError(f"'{label}' is empty (0 bytes)")
    return data, label


def _detect(data: bytes, label: str) -> tuple[str, bool]:
    """Format from the magic bytes (``(format, has_magic)``); raises for unrecognised data."""
    head = data[:132]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG", True
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG", True
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF", True
    if head.startswith(b"BM"):
        return "BMP", True
    if head[128:132] == b"DICM":
        return "DICOM", True
    if Path(label).suffix.lower() in (".dcm", ".dicom"):
        return "DICOM", False  # DICOM without the 128-byte preamble; parsed with force=True
    hint = ""
    sample = head[:64]
    if sample and all(chr(b) in string.printable for b in sample):
        hint = " - it looks like a text file"
    raise ImageError(f"'{label}' is not a recognised image (PNG, JPEG, TIFF, BMP or DICOM){hint}")


def _check_size(label: str, width: int, height: int, max_pixels: int | None, samples: int = 1,
                bytes_per_sample: float = 1, frames: int = 1) -> None:
    """Reject images under ``MIN_SIDE`` px a side or over ``max_pixels`` (from the header), then
    apply :func:`cvs_core.limits.check_image_header` (decoded bytes as stored — ``samples`` per pixel
    of ``bytes_per_sample`` each, ``frames`` at once — and aspect ratio) before anything is decoded."""
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageError(f"'{label}' is {width}×{height} px; at least {MIN_SIDE}×{MIN_SIDE} needed")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageLimitError(
            f"'{label}' declares {width}×{height} = {_megapixels(width * height)} megapixels, over the "
            f"{_megapixels(max_pixels)}-megapixel limit; downscale it or raise max_pixels")
    lim = limits()
    try:
        check_image_header(label, width, height, samples, bytes_per_sample, frames,
                           lim=replace(lim, max_pixels=10 ** 15))
    except LimitError as exc:
        raise ImageLimitError(str(exc)) from None


def _megapixels(n: int) -> str:
    text = f"{n / 1e6:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _truncated(label: str, fmt: str, exc: BaseException) -> ImageError:
    detail = str(exc).strip() or type(exc).__name__
    return ImageError(f"'{label}' is truncated or corrupt ({fmt}: {detail})")


# --- pixel conversion ----------------------------------------------------------------------

def _rgb_to_grey(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, C≥3)`` → ``(H, W)`` ITU-R 601 luma of the first three channels.

    uint8 in → uint8 out (OpenCV, rounded like Pillow's ``convert("L")``); otherwise float32.
    """
    if rgb.dtype == np.uint8:
        return cv2.cvtColor(np.ascontiguousarray(rgb[..., :3]), cv2.COLOR_RGB2GRAY)
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    return _LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b


def _narrow(grey: np.ndarray, stored: np.dtype) -> np.ndarray:
    """Grey values → uint8 for 8-bit storage, float32 otherwise."""
    if stored == np.uint8 or stored == np.bool_:
        return np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    return np.asarray(grey, dtype=np.float32)


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF/TIFF Orientation (1–8) to ``(H, W, ...)`` so it displays upright."""
    if orientation == 2:
        arr = arr[:, ::-1]
    elif orientation == 3:
        arr = arr[::-1, ::-1]
    elif orientation == 4:
        arr = arr[::-1]
    elif orientation == 5:
        arr = np.swapaxes(arr, 0, 1)
    elif orientation == 6:
        arr = np.rot90(arr, -1)
    elif orientation == 7:
        arr = np.swapaxes(arr, 0, 1)[::-1, ::-1]
    elif orientation == 8:
        arr = np.rot90(arr, 1)
    return np.ascontiguousarray(arr)


# --- format readers ------------------------------------------------------------------------

def _read_pil(data: bytes, label: str, fmt: str, max_pixels: int | None) -> LoadedImage:
    try:
        im = _PIL_CLASSES[fmt](io.BytesIO(data))
    except _DECODE_ERRORS as exc:
        raise _truncated(label, fmt, exc) from exc
    width, height = im.size
    _check_size(label, width, height, max_pixels, *_pil_sample_layout(im.mode))
    notes: list[str] = []
    try:
        im.load()
        orientation = int(im.getexif().get(0x0112, 1) or 1)
        if orientation != 1:
            im = ImageOps.exif_transpose(im)
            notes.append(f"EXIF orientation {orientation} applied")
        pixels, original_dtype = _pil_to_grey(im, notes)
    except MemoryError:
        raise
    except _DECODE_ERRORS as exc:
        raise _truncated(label, fmt, exc) from exc
    return LoadedImage(pixels=pixels, spacing_mm=None, source=label, format=fmt,
                       original_dtype=original_dtype, notes=notes)


def _pil_sample_layout(mode: str) -> tuple[int, float]:
    """``(samples per pixel, bytes per sample)`` Pillow holds for an image mode (RGB is stored as 4)."""
    if mode in ("1", "L", "P", "La", "LA", "PA"):
        return (1 if mode in ("1", "L", "P") else 2), 1
    if mode.startswith("I;16"):
        return 1, 2
    if mode in ("I", "F"):
        return 1, 4
    return 4, 1  # RGB, RGBA, CMYK, YCbCr, LAB, HSV: 4 bytes per pixel in Pillow


def _pil_to_grey(im: Image.Image, notes: list[str]) -> tuple[np.ndarray, str]:
    """Pillow image of any mode → ``((H, W) uint8 or float32, original dtype name)``."""
    mode = im.mode
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.float32), "uint16"
    if mode in ("I", "F"):
        arr = np.asarray(im)
        return arr.astype(np.float32), str(arr.dtype)
    if mode == "L":
        return np.array(im, dtype=np.uint8), "uint8"
    if mode == "1":
        return np.array(im.convert("L"), dtype=np.uint8), "bool"
    if mode in ("LA", "La"):
        notes.append("alpha channel ignored")
        return np.array(im.getchannel("L"), dtype=np.uint8), "uint8"
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    has_alpha = "A" in mode or "a" in mode
    if mode != "RGB":
        im = im.convert("RGB")  # drops alpha; CMYK/YCbCr/LAB → RGB
    rgb = np.asarray(im)
    if has_alpha:
        notes.append("alpha channel ignored")
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
        notes.append(f"colour ({mode}) converted to grey (ITU-R 601 luma)")
    return np.array(im.convert("L"), dtype=np.uint8), "uint8"


def _header_orientation(im: Image.Image) -> int:
    """EXIF orientation from metadata already parsed with the header (no pixel loading; a PNG
    eXIf chunk placed after the image data is not seen here)."""
    raw = im.info.get("exif")
    if not raw:
        return 1
    try:
        exif = Image.Exif()
        exif.load(raw)
        return int(exif.get(0x0112, 1) or 1)
    except _DECODE_ERRORS:
        return 1


def _tiff_orientation(page) -> int:
    try:
        value = page.tags.valueof(274, 1)
        return int(value) if value else 1
    except (TypeError, ValueError, AttributeError):
        return 1


def _read_tiff(data: bytes, label: str, max_pixels: int | None) -> LoadedImage:
    # tifffile parses tags lazily and damaged files fail in many ways; all of them mean "corrupt".
    try:
        img = _decode_tiff(data, label, max_pixels)
    except (ImageError, MemoryError):
        raise
    except Exception as exc:
        raise _truncated(label, "TIFF", exc) from exc
    if img.pixels.ndim != 2 or min(img.pixels.shape) < MIN_SIDE:
        raise ImageError(f"'{label}' is truncated or corrupt (TIFF: decoded to shape {img.pixels.shape})")
    return img


def _decode_tiff(data: bytes, label: str, max_pixels: int | None) -> LoadedImage:
    import tifffile

    notes: list[str] = []
    try:
        tif = tifffile.TiffFile(io.BytesIO(data))
    except _DECODE_ERRORS + (tifffile.TiffFileError,) as exc:
        raise _truncated(label, "TIFF", exc) from exc
    with tif:
        try:
            page = tif.pages[0]
            width, height = int(page.imagewidth), int(page.imagelength)
            samples = int(page.samplesperpixel or 1)
            bytes_per_sample = max(1, int(page.bitspersample or 8)) / 8
            depth = int(getattr(page, "imagedepth", 1) or 1)
        except _DECODE_ERRORS + (tifffile.TiffFileError,) as exc:
            raise _truncated(label, "TIFF", exc) from exc
        _check_size(label, width, height, max_pixels, samples, bytes_per_sample, depth)
        try:
            arr = page.asarray()
            axes = page.axes
            photometric = int(page.photometric)
            colormap = page.colormap
            orientation = _tiff_orientation(page)
            n_pages = len(tif.pages)
        except MemoryError:
            raise
        except _DECODE_ERRORS + (tifffile.TiffFileError,) as exc:
            if "imagecodecs" in str(exc):  # compression tifffile cannot decode alone: try Pillow
                return _read_tiff_with_pil(data, label, exc)
            raise _truncated(label, "TIFF", exc) from exc
    if n_pages > 1:
        notes.append(f"multi-page TIFF: using page 1 of {n_pages}")
    arr = np.asarray(arr)
    original_dtype = str(arr.dtype)
    # Bring the samples axis last and drop other singleton axes: (H, W) or (H, W, S).
    if "S" in axes and arr.ndim == len(axes):
        arr = np.moveaxis(arr, axes.index("S"), -1)
    arr = np.squeeze(arr) if arr.ndim > 2 else arr
    while arr.ndim > 3 or (arr.ndim == 3 and arr.shape[-1] > 4):  # extra leading axes: first plane
        arr = arr[0]
    if photometric == 3 and colormap is not None and arr.ndim == 2:  # PALETTE
        arr = np.asarray(colormap).T[arr.astype(np.intp)]
        notes.append("palette image converted to grey")
        original_dtype = "uint8"
        arr = _rgb_to_grey(arr.astype(np.float32) / 257.0)
        stored = np.dtype(np.uint8)
    elif arr.ndim == 3:
        if arr.shape[-1] in (2, 4):
            notes.append("alpha channel ignored")
        if arr.shape[-1] >= 3:
            notes.append("colour (RGB) converted to grey (ITU-R 601 luma)")
            grey = _rgb_to_grey(arr)
        else:
            grey = arr[..., 0]
        stored = arr.dtype
        arr = grey
    else:
        stored = arr.dtype
    if stored == np.bool_:
        arr = arr.astype(np.uint8) * 255
    if photometric == 0:  # MINISWHITE: 0 is white
        if np.issubdtype(stored, np.integer):
            hi = np.iinfo(stored).max if stored != np.bool_ else 255
            arr = hi - arr.astype(np.float64)
        else:
            arr = float(np.nanmax(arr)) + float(np.nanmin(arr)) - arr.astype(np.float64)
        notes.append("MINISWHITE inverted so that bright = dense")
    if orientation != 1:
        arr = _orient(arr, orientation)
        notes.append(f"TIFF orientation {orientation} applied")
    pixels = _narrow(arr, stored) if arr.dtype != np.uint8 else arr
    return LoadedImage(pixels=np.ascontiguousarray(pixels), spacing_mm=None, source=label, format="TIFF",
                       original_dtype=original_dtype, notes=notes)


def _read_tiff_with_pil(data: bytes, label: str, first_error: BaseException) -> LoadedImage:
    notes = ["decoded with Pillow (tifffile lacks the codec)"]
    try:
        with Image.open(io.BytesIO(data), formats=["TIFF"]) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            pixels, original_dtype = _pil_to_grey(im, notes)
    except _DECODE_ERRORS + (Image.DecompressionBombError,) as exc:
        raise _truncated(label, "TIFF", first_error) from exc
    return LoadedImage(pixels=pixels, source=label, format="TIFF", original_dtype=original_dtype, notes=notes)


def _dicom_spacing(ds, notes: list[str]) -> tuple[float, float] | None:
    """``(row, col)`` mm/px from ImagerPixelSpacing, else PixelSpacing; None (plus a note) if absent."""
    for keyword, tag in (("ImagerPixelSpacing", "(0018,1164)"), ("PixelSpacing", "(0028,0030)")):
        value = ds.get(keyword)
        if value is None:
            continue
        try:
            row, col = (float(v) for v in value)
        except (TypeError, ValueError):
            notes.append(f"{keyword} {tag} is malformed ({value!r}); ignored")
            continue
        if not (np.isfinite(row) and np.isfinite(col) and row > 0 and col > 0):
            notes.append(f"{keyword} {tag} is not positive ({row}, {col}); ignored")
            continue
        notes.append(f"pixel spacing {row:g}×{col:g} mm (row×col) from {keyword} {tag}")
        return row, col
    notes.append("no pixel spacing in the DICOM header (ImagerPixelSpacing/PixelSpacing); "
                 "set it per dataset to report mm")
    return None


def _read_dicom(data: bytes, label: str, max_pixels: int | None, has_magic: bool) -> LoadedImage:
    # pydicom converts element values lazily, so a damaged file can raise almost anything
    # (BytesLengthException, NotImplementedError for unknown VRs …) on any attribute access.
    try:
        return _decode_dicom(data, label, max_pixels, has_magic)
    except (ImageError, MemoryError):
        raise
    except Exception as exc:
        raise _truncated(label, "DICOM", exc) from exc


def _decode_dicom(data: bytes, label: str, max_pixels: int | None, has_magic: bool) -> LoadedImage:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=not has_magic)
    except _DECODE_ERRORS + (InvalidDicomError,) as exc:
        raise _truncated(label, "DICOM", exc) from exc
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if not has_magic and "Rows" not in ds and "SOPClassUID" not in ds:  # a forced parse of non-DICOM
            raise ImageError(f"'{label}' is not a recognised image (PNG, JPEG, TIFF, BMP or DICOM)")
        raise ImageError(f"'{label}' is a DICOM file without pixel data (no PixelData (7FE0,0010) element)")
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if rows is None or cols is None:
        raise ImageError(f"'{label}' is truncated or corrupt (DICOM: Rows/Columns missing)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    _check_size(label, int(cols), int(rows), max_pixels, int(ds.get("SamplesPerPixel", 1) or 1),
                max(8, int(ds.get("BitsAllocated", 16) or 16)) / 8)  # one frame is decoded
    notes: list[str] = []
    try:
        raw = pixel_array(ds, index=0) if frames > 1 else pixel_array(ds)
    except MemoryError:
        raise
    except _DECODE_ERRORS as exc:
        syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        try:
            compressed = syntax is not None and bool(syntax.is_compressed)
        except ValueError:  # not a transfer syntax UID at all
            compressed = False
        if compressed:
            raise ImageError(f"'{label}' uses the compressed transfer syntax {syntax.name}, which cannot be "
                             f"decoded here ({exc}); export it uncompressed") from exc
        raise _truncated(label, "DICOM", exc) from exc
    if frames > 1:
        notes.append(f"multi-frame DICOM: using frame 1 of {frames}")
    original_dtype = str(raw.dtype)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if raw.ndim == 3:  # colour samples (pydicom converts YBR to RGB)
        grey = _rgb_to_grey(raw)
        notes.append(f"colour ({photometric}) converted to grey (ITU-R 601 luma)")
    else:
        try:
            grey = apply_modality_lut(raw, ds)
            grey = apply_voi_lut(grey, ds)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            grey = raw
            notes.append(f"modality/VOI LUT not applied ({exc})")
        grey = np.asarray(grey, dtype=np.float64)
        if photometric == "MONOCHROME1":
            grey = float(grey.max()) + float(grey.min()) - grey
            notes.append("MONOCHROME1 inverted so that bright = dense")
    spacing = _dicom_spacing(ds, notes)
    return LoadedImage(pixels=np.ascontiguousarray(grey, dtype=np.float32), spacing_mm=spacing, source=label,
                       format="DICOM", original_dtype=original_dtype, notes=notes)
