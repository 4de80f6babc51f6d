"""cvs_core.imaging: every supported format, and every way an input file can be wrong.

All files are written in tmp_path at test time (cv2 / Pillow / tifffile / pydicom), except the
bundled public samples in data/samples.
"""
from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from cvs_core.imaging import (SUPPORTED_EXTENSIONS, ImageError, LoadedImage, image_size,
                              read_image)

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

ROI = "roi/LC (1).jpg"
ORIGINAL = "original/LC (1).jpg"


# --- builders ------------------------------------------------------------------------------

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width×height (8-bit grey) but holds only a few bytes of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + _png_chunk(b"IEND", b""))


def tiff_declaring(width: int, height: int) -> bytes:
    """A little-endian baseline TIFF whose single IFD declares width×height 8-bit grey."""
    entries = [  # tag, type (3 SHORT, 4 LONG), count, value
        (256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
        (273, 4, 1, 8 + 2 + 12 * 9 + 4), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, 16),
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        ifd += struct.pack("<HHI", tag, typ, count) + (struct.pack("<HH", value, 0) if typ == 3
                                                       else struct.pack("<I", value))
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + b"\x00" * 16


def bmp_declaring(width: int, height: int) -> bytes:
    """A 24-bit BMP whose BITMAPINFOHEADER declares width×height but holds 16 bytes of pixels."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 16, 0, 0, 54) + info + b"\x00" * 16


def make_dicom(path, pixels: np.ndarray | None, photometric: str = "MONOCHROME2",
               rows: int | None = None, cols: int | None = None, pixel_bytes: bytes | None = None,
               **elements) -> None:
    """Write a DICOM (Explicit VR Little Endian) with the given uint16/uint8 pixels, or none.

    rows/cols override the declared size; pixel_bytes overrides the PixelData payload.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientName = "Phantom^Test"
    if pixels is not None or rows is not None:
        shape = pixels.shape if pixels is not None else (rows, cols)
        ds.Rows = rows if rows is not None else shape[0]
        ds.Columns = cols if cols is not None else shape[1]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        bits = 8 if pixels is not None and pixels.dtype == np.uint8 else 16
        ds.BitsAllocated = bits
        ds.BitsStored = bits if bits == 8 else 12
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 0
    if pixels is not None or pixel_bytes is not None:
        ds.PixelData = pixel_bytes if pixel_bytes is not None else np.ascontiguousarray(pixels).tobytes()
        ds["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)


def ramp16(h: int = 40, w: int = 32) -> np.ndarray:
    """``(h, w)`` uint16 test pattern using 12 bits (0–4095), distinct rows and columns."""
    return ((np.arange(h)[:, None] * 97 + np.arange(w)[None, :] * 13) % 4096).astype(np.uint16)


# --- the real samples ------------------------------------------------------------------------

def test_real_samples_read_as_uint8_grey(samples_dir):
    for rel, size in ((ORIGINAL, (1804, 2136)), (ROI, (250, 600))):
        img = read_image(samples_dir / rel)
        assert isinstance(img, LoadedImage)
        assert img.format == "JPEG" and img.original_dtype == "uint8"
        assert img.pixels.dtype == np.uint8 and img.pixels.shape == (size[1], size[0])
        assert img.size == size and image_size(samples_dir / rel) == size
        assert img.spacing_mm is None
        # Stored as RGB with R = G = B: no colour note, same pixels as OpenCV's grey decode.
        assert not any("colour" in n for n in img.notes)
        np.testing.assert_array_equal(img.pixels, cv2.imread(str(samples_dir / rel), cv2.IMREAD_GRAYSCALE))


def test_bytes_and_file_like_uploads_match_path(samples_dir):
    path = samples_dir / ROI
    data = path.read_bytes()
    from_path = read_image(path)
    from_bytes = read_image(data, name="LC (1).jpg")
    upload = io.BytesIO(data)
    upload.name = "upload.jpg"
    from_file = read_image(upload)
    assert from_bytes.source == "LC (1).jpg" and from_file.source == "upload.jpg"
    np.testing.assert_array_equal(from_path.pixels, from_bytes.pixels)
    np.testing.assert_array_equal(from_path.pixels, from_file.pixels)
    assert image_size(data) == (250, 600)


def test_supported_extensions():
    assert {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm"} <= set(SUPPORTED_EXTENSIONS)
    assert all(e.startswith(".") and e == e.lower() for e in SUPPORTED_EXTENSIONS)


# --- bad inputs (each asserts its specific message) ------------------------------------------

def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.png' is empty \(0 bytes\)"):
        read_image(path)
    with pytest.raises(ImageError, match=r"is empty \(0 bytes\)"):
        image_size(path)
    with pytest.raises(ImageError, match=r"'x\.jpg' is empty \(0 bytes\)"):
        read_image(b"", name="x.jpg")


def test_text_renamed_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("patient list\nname,age\n")
    with pytest.raises(ImageError, match=r"notes\.png' is not a recognised image \(PNG, JPEG, TIFF, BMP or DICOM\)"
                                         r" - it looks like a text file"):
        read_image(path)


def test_random_bytes_not_an_image():
    with pytest.raises(ImageError, match=r"'blob' is not a recognised image \(PNG, JPEG, TIFF, BMP or DICOM\)$"):
        read_image(bytes(range(256)) * 4, name="blob")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match=r"nope\.png' does not exist"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match=r"is a directory, not an image file"):
        read_image(tmp_path)


def test_truncated_real_jpeg(samples_dir, tmp_path):
    data = (samples_dir / ORIGINAL).read_bytes()
    path = tmp_path / "half.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"half\.jpg' is truncated or corrupt \(JPEG: .*truncated"):
        read_image(path)
    # The header is intact, so the cheap size probe still works.
    assert image_size(path) == (1804, 2136)


def test_jpeg_cut_inside_header(samples_dir):
    data = (samples_dir / ROI).read_bytes()[:40]
    with pytest.raises(ImageError, match=r"'cut\.jpg' is truncated or corrupt \(JPEG"):
        read_image(data, name="cut.jpg")


def test_corrupt_png_data(tmp_path):
    ok, buf = cv2.imencode(".png", np.full((32, 32), 100, np.uint8))
    data = bytearray(buf.tobytes())
    idat = data.index(b"IDAT")
    data[idat + 4: idat + 14] = b"\xff" * 10  # garbage in the zlib stream (CRC now wrong too)
    with pytest.raises(ImageError, match=r"'bad\.png' is truncated or corrupt \(PNG"):
        read_image(bytes(data), name="bad.png")


def test_one_pixel_image(tmp_path):
    path = tmp_path / "dot.png"
    Image.new("L", (1, 1), 128).save(path)
    with pytest.raises(ImageError, match=r"dot\.png' is 1×1 px; at least 8×8 needed"):
        read_image(path)


def test_thin_image_too_small(tmp_path):
    path = tmp_path / "strip.bmp"
    cv2.imwrite(str(path), np.zeros((100, 4), np.uint8))
    with pytest.raises(ImageError, match=r"is 4×100 px; at least 8×8 needed"):
        read_image(path)


@pytest.mark.parametrize("builder, ext", [(png_declaring, "png"), (tiff_declaring, "tif"), (bmp_declaring, "bmp")])
def test_huge_declared_size_rejected_before_decoding(builder, ext, tmp_path):
    path = tmp_path / f"bomb.{ext}"
    path.write_bytes(builder(100_000, 100_000))
    with pytest.raises(ImageError, match=r"bomb\.\w+' declares 100000×100000 = 10000 megapixels, "
                                         r"over the 50-megapixel limit"):
        read_image(path)
    # The header alone gives the size (no decode, no Pillow DecompressionBombError).
    assert image_size(path) == (100_000, 100_000)


def test_huge_declared_dicom(tmp_path):
    path = tmp_path / "bomb.dcm"
    make_dicom(path, None, rows=60_000, cols=60_000, pixel_bytes=b"\x00" * 16)  # only 16 bytes of pixels
    with pytest.raises(ImageError, match=r"declares 60000×60000 = 3600 megapixels, over the 50-megapixel limit"):
        read_image(path)


def test_custom_pixel_limit_on_real_sample(samples_dir):
    with pytest.raises(ImageError, match=r"declares 1804×2136 = 3.9 megapixels, over the 1-megapixel limit"):
        read_image(samples_dir / ORIGINAL, max_pixels=1_000_000)
    assert read_image(samples_dir / ROI, max_pixels=None).pixels.shape == (600, 250)


def test_dicom_without_pixel_data(tmp_path):
    path = tmp_path / "header_only.dcm"
    make_dicom(path, None)
    with pytest.raises(ImageError, match=r"header_only\.dcm' is a DICOM file without pixel data"):
        read_image(path)


def test_garbage_with_dcm_extension(tmp_path):
    path = tmp_path / "junk.dcm"
    path.write_bytes(b"\x01\x02\x03\x04" * 100)
    with pytest.raises(ImageError, match=r"junk\.dcm' is not a recognised image \(PNG, JPEG, TIFF, BMP or DICOM\)"):
        read_image(path)


def test_truncated_dicom_pixel_data(tmp_path):
    path = tmp_path / "short.dcm"
    make_dicom(path, ramp16(64, 64))
    data = path.read_bytes()
    with pytest.raises(ImageError, match=r"'short\.dcm' is truncated or corrupt \(DICOM"):
        read_image(data[:-2000], name="short.dcm")


def test_text_mode_file_object(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("hello")
    with open(path) as fh, pytest.raises(ImageError, match="opened in text mode"):
        read_image(fh)


# --- wider and unusual formats ---------------------------------------------------------------

def test_16bit_tiff_reads_as_float32_with_values_preserved(tmp_path):
    data = ramp16() * 16  # use the full 16-bit range
    path = tmp_path / "wide.tif"
    tifffile.imwrite(path, data)
    img = read_image(path)
    assert img.format == "TIFF" and img.original_dtype == "uint16"
    assert img.pixels.dtype == np.float32 and img.pixels.shape == data.shape
    np.testing.assert_array_equal(img.pixels, data.astype(np.float32))
    u8 = img.as_uint8()
    assert u8.dtype == np.uint8 and u8.min() == 0 and u8.max() == 255
    assert image_size(path) == (32, 40)


def test_16bit_png_reads_as_float32(tmp_path):
    data = ramp16() * 16
    path = tmp_path / "wide.png"
    cv2.imwrite(str(path), data)
    img = read_image(path)
    assert img.format == "PNG" and img.original_dtype == "uint16" and img.pixels.dtype == np.float32
    np.testing.assert_array_equal(img.pixels, data.astype(np.float32))


def test_8bit_tiff_and_rgb_tiff(tmp_path):
    grey = (ramp16() % 256).astype(np.uint8)
    tifffile.imwrite(tmp_path / "g.tif", grey)
    img = read_image(tmp_path / "g.tif")
    assert img.pixels.dtype == np.uint8
    np.testing.assert_array_equal(img.pixels, grey)
    rgb = np.stack([grey, grey // 2, 255 - grey], axis=-1)
    tifffile.imwrite(tmp_path / "c.tif", rgb, photometric="rgb")
    img = read_image(tmp_path / "c.tif")
    expected = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    assert img.pixels.dtype == np.uint8 and img.pixels.shape == grey.shape
    assert np.abs(img.pixels.astype(int) - expected).max() <= 1
    assert any("converted to grey" in n for n in img.notes)


def test_rgba_png_reads_to_grey_ignoring_alpha(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[..., 1] = np.arange(30, dtype=np.uint8)[None, :] * 5
    rgb[..., 2] = 50
    alpha = np.zeros((20, 30), np.uint8)
    alpha[:, 15:] = 255
    path = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path)
    img = read_image(path)
    assert img.pixels.shape == (20, 30) and img.pixels.dtype == np.uint8
    np.testing.assert_array_equal(img.pixels, np.asarray(Image.fromarray(rgb, "RGB").convert("L")))
    assert "alpha channel ignored" in img.notes


def test_bmp_grey(tmp_path):
    grey = (ramp16() % 251).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "g.bmp"), grey)
    img = read_image(tmp_path / "g.bmp")
    assert img.format == "BMP"
    np.testing.assert_array_equal(img.pixels, grey)


def test_exif_rotated_jpeg(tmp_path):
    stored = np.zeros((24, 40), np.uint8)  # H=24, W=40 as stored; left half bright
    stored[:, :20] = 230
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90° clockwise
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored, "L").save(path, exif=exif.tobytes(), quality=95)
    img = read_image(path)
    assert img.pixels.shape == (40, 24)  # displayed: 24 wide, 40 high
    assert image_size(path) == (24, 40)
    # Rotating clockwise puts the stored left half on top.
    assert img.pixels[:18].mean() > 200 and img.pixels[22:].mean() < 30
    assert any("orientation 6" in n for n in img.notes)
    np.testing.assert_array_equal(img.pixels > 128, np.rot90(stored, -1) > 128)


def test_tiff_orientation_tag(tmp_path):
    stored = (ramp16(16, 24) % 256).astype(np.uint8)
    path = tmp_path / "o.tif"
    tifffile.imwrite(path, stored, extratags=[(274, "H", 1, 8, True)])  # 8: rotate 90° counter-clockwise
    img = read_image(path)
    np.testing.assert_array_equal(img.pixels, np.rot90(stored, 1))
    assert image_size(path) == (16, 24)


# --- DICOM -----------------------------------------------------------------------------------

def test_dicom_with_imager_pixel_spacing(tmp_path):
    path = tmp_path / "spaced.dcm"
    make_dicom(path, ramp16(), ImagerPixelSpacing=[0.1, 0.125], PixelSpacing=[0.2, 0.2])
    img = read_image(path)
    assert img.format == "DICOM" and img.original_dtype == "uint16"
    assert img.spacing_mm == (0.1, 0.125)  # ImagerPixelSpacing wins, [row, col]
    assert img.pixels.dtype == np.float32 and img.pixels.shape == (40, 32)
    np.testing.assert_array_equal(img.pixels, ramp16().astype(np.float32))
    assert image_size(path) == (32, 40)


def test_dicom_pixel_spacing_fallback(tmp_path):
    path = tmp_path / "ps.dcm"
    make_dicom(path, ramp16(), PixelSpacing=[0.15, 0.16])
    assert read_image(path).spacing_mm == (0.15, 0.16)


def test_dicom_without_spacing_gives_none_and_note(tmp_path):
    path = tmp_path / "nospacing.dcm"
    make_dicom(path, ramp16())
    img = read_image(path)
    assert img.spacing_mm is None
    assert any("no pixel spacing" in n for n in img.notes)


def test_dicom_monochrome1_is_inverted(tmp_path):
    data = ramp16()
    make_dicom(tmp_path / "m1.dcm", data, photometric="MONOCHROME1")
    make_dicom(tmp_path / "m2.dcm", data, photometric="MONOCHROME2")
    m1 = read_image(tmp_path / "m1.dcm").pixels
    m2 = read_image(tmp_path / "m2.dcm").pixels
    np.testing.assert_allclose(m1, data.max() + data.min() - data.astype(np.float32))
    assert np.corrcoef(m1.ravel(), m2.ravel())[0, 1] < -0.999
    assert any("MONOCHROME1" in n for n in read_image(tmp_path / "m1.dcm").notes)


def test_dicom_modality_and_voi_lut_applied(tmp_path):
    data = ramp16()
    make_dicom(tmp_path / "r.dcm", data, RescaleSlope="2", RescaleIntercept="-100")
    np.testing.assert_allclose(read_image(tmp_path / "r.dcm").pixels, data * 2.0 - 100)
    make_dicom(tmp_path / "w.dcm", data, WindowCenter="2048", WindowWidth="1024")
    px = read_image(tmp_path / "w.dcm").pixels
    assert px.min() == 0 and px.max() == 4095  # clamped to the 12-bit output range
    assert (px[data <= 1500] == 0).all() and (px[data >= 2600] == 4095).all()


def test_dicom_from_bytes_and_8bit(tmp_path):
    data = (ramp16() % 256).astype(np.uint8)
    path = tmp_path / "u8.dcm"
    make_dicom(path, data, ImagerPixelSpacing=[0.1, 0.1])
    img = read_image(path.read_bytes(), name="upload.dcm")
    assert img.source == "upload.dcm" and img.original_dtype == "uint8"
    np.testing.assert_array_equal(img.pixels, data.astype(np.float32))
    assert img.as_uint8().dtype == np.uint8


@pytest.mark.parametrize("ext", ["png", "jpg", "tif", "bmp"])
def test_image_size_matches_read_image(ext, tmp_path):
    path = tmp_path / f"a.{ext}"
    cv2.imwrite(str(path), np.full((33, 47), 90, np.uint8))
    assert image_size(path) == (47, 33) == read_image(path).size


def test_dicom_without_preamble_needs_dcm_extension(tmp_path):
    make_dicom(tmp_path / "a.dcm", ramp16())
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    ds.preamble = None
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=False)  # no 128-byte preamble, no 'DICM'
    data = buf.getvalue()
    assert data[128:132] != b"DICM"
    assert read_image(data, name="bare.dcm").pixels.shape == (40, 32)
    with pytest.raises(ImageError, match=r"'bare' is not a recognised image"):
        read_image(data, name="bare")


def _encoded_samples(tmp_path) -> dict[str, bytes]:
    grey = (ramp16(48, 40) % 256).astype(np.uint8)
    out = {ext: cv2.imencode(f".{ext}", grey)[1].tobytes() for ext in ("png", "jpg", "bmp")}
    buf = io.BytesIO()
    tifffile.imwrite(buf, ramp16(48, 40))
    out["tif"] = buf.getvalue()
    make_dicom(tmp_path / "f.dcm", ramp16(48, 40), ImagerPixelSpacing=[0.1, 0.1])
    out["dcm"] = (tmp_path / "f.dcm").read_bytes()
    return out


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about damaged VRs; fine here
def test_damaged_files_only_ever_raise_image_error(tmp_path):
    """Truncations and random byte corruption of every format: a LoadedImage or an ImageError, never
    another exception (deterministic fuzzing)."""
    rng = np.random.default_rng(1234)
    for ext, data in _encoded_samples(tmp_path).items():
        assert read_image(data, name=f"ok.{ext}").pixels.shape == (48, 40)
        variants = [data[:n] for n in rng.integers(1, len(data), 25)]
        for _ in range(25):
            damaged = bytearray(data)
            for pos in rng.integers(0, len(data), 4):
                damaged[pos] = int(rng.integers(0, 256))
            variants.append(bytes(damaged))
        for variant in variants:
            try:
                img = read_image(variant, name=f"damaged.{ext}")
            except ImageError as exc:
                assert "damaged." in str(exc)
            else:
                assert img.pixels.ndim == 2 and min(img.pixels.shape) >= 8
