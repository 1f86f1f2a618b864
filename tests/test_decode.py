"""``imgclass.data.load_image``: orientation, modes, formats, names and the errors for bad files."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from PIL import Image

from imgclass.data import load_image
from imgclass.errors import ImageLoadError, ImgclassError


def _px(img):
    return np.asarray(img)


def _left_red_right_blue(w=40, h=20):
    im = Image.new("RGB", (w, h), (255, 0, 0))
    im.paste((0, 0, 255), (w // 2, 0, w, h))
    return im


# --------------------------------------------------------------------------- EXIF orientation
@pytest.mark.parametrize("orientation, size, top_left, bottom_right", [
    (1, (40, 20), "red", "blue"),
    (6, (20, 40), "red", "blue"),    # rotate 90 clockwise: the left (red) half ends up on top
    (8, (20, 40), "blue", "red"),    # rotate 90 counter-clockwise: the left (red) half ends up at the bottom
])
def test_exif_orientation_is_applied(tmp_path, orientation, size, top_left, bottom_right):
    path = tmp_path / f"o{orientation}.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    _left_red_right_blue().save(path, exif=exif.tobytes(), quality=95)

    img = load_image(path)
    assert img.mode == "RGB"
    assert img.size == size
    a = _px(img).astype(int)
    dominant = {"red": 0, "blue": 2}
    assert a[0, 0].argmax() == dominant[top_left]
    assert a[-1, -1].argmax() == dominant[bottom_right]


def test_exif_orientation_applied_with_jpeg_draft(tmp_path):
    path = tmp_path / "o6.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    _left_red_right_blue(80, 40).save(path, exif=exif.tobytes(), quality=95)
    img = load_image(path, draft_size=16)
    w, h = img.size
    assert h > w  # still portrait after the draft shrink
    assert w >= 16 and h >= 16


# --------------------------------------------------------------------------- modes
def test_mode_1(tmp_path):
    im = Image.new("1", (2, 1))
    im.putpixel((0, 0), 1)
    im.save(tmp_path / "bw.png")
    out = load_image(tmp_path / "bw.png")
    assert out.mode == "RGB"
    assert _px(out).tolist() == [[[255, 255, 255], [0, 0, 0]]]


def test_mode_L(tmp_path):
    im = Image.new("L", (2, 1))
    im.putpixel((0, 0), 77)
    im.putpixel((1, 0), 200)
    im.save(tmp_path / "gray.png")
    out = load_image(tmp_path / "gray.png")
    assert out.mode == "RGB"
    assert _px(out).tolist() == [[[77, 77, 77], [200, 200, 200]]]


def test_mode_LA_transparent_on_white(tmp_path):
    im = Image.new("LA", (2, 1))
    im.putpixel((0, 0), (100, 0))      # fully transparent
    im.putpixel((1, 0), (100, 255))    # opaque
    im.save(tmp_path / "la.png")
    assert Image.open(tmp_path / "la.png").mode == "LA"
    out = load_image(tmp_path / "la.png")
    assert out.mode == "RGB"
    assert _px(out).tolist() == [[[255, 255, 255], [100, 100, 100]]]


def test_mode_P_with_transparency_on_white(tmp_path):
    im = Image.new("P", (3, 1))
    im.putpalette([10, 20, 30, 200, 0, 0] + [0] * (256 * 3 - 6))
    im.putpixel((1, 0), 1)
    im.putpixel((2, 0), 1)
    im.save(tmp_path / "p.png", transparency=0)   # palette index 0 is transparent
    assert "transparency" in Image.open(tmp_path / "p.png").info
    out = load_image(tmp_path / "p.png")
    assert out.mode == "RGB"
    assert _px(out).tolist() == [[[255, 255, 255], [200, 0, 0], [200, 0, 0]]]


def test_mode_P_without_transparency(tmp_path):
    im = Image.new("P", (1, 1))
    im.putpalette([10, 20, 30] + [0] * (256 * 3 - 3))
    im.save(tmp_path / "p.png")
    assert _px(load_image(tmp_path / "p.png")).tolist() == [[[10, 20, 30]]]


def test_mode_RGBA_transparent_on_white(tmp_path):
    im = Image.new("RGBA", (3, 1))
    im.putpixel((0, 0), (10, 20, 30, 0))
    im.putpixel((1, 0), (10, 20, 30, 255))
    im.putpixel((2, 0), (0, 0, 0, 128))
    im.save(tmp_path / "rgba.png")
    out = load_image(tmp_path / "rgba.png")
    assert out.mode == "RGB"
    a = _px(out).astype(int)
    assert a[0, 0].tolist() == [255, 255, 255]
    assert a[0, 1].tolist() == [10, 20, 30]
    assert np.all(np.abs(a[0, 2] - 127) <= 2)  # half-transparent black over white is mid grey


def test_mode_CMYK(tmp_path):
    im = Image.new("CMYK", (3, 1))
    im.putpixel((0, 0), (0, 0, 0, 0))        # no ink: white
    im.putpixel((1, 0), (0, 0, 0, 255))      # full black
    im.putpixel((2, 0), (255, 0, 0, 0))      # cyan
    im.save(tmp_path / "cmyk.tif")
    assert Image.open(tmp_path / "cmyk.tif").mode == "CMYK"
    out = load_image(tmp_path / "cmyk.tif")
    assert out.mode == "RGB"
    assert _px(out).tolist() == [[[255, 255, 255], [0, 0, 0], [0, 255, 255]]]


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_mode_I16_scaled_not_clipped(tmp_path, ext):
    arr = np.array([[65535, 32768, 1000, 0]], dtype=np.uint16)
    im = Image.fromarray(arr)
    assert im.mode == "I;16"
    im.save(tmp_path / f"deep.{ext}")
    out = load_image(tmp_path / f"deep.{ext}")
    assert out.mode == "RGB"
    a = _px(out)
    assert np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])
    assert a[0, 0, 0] == 255
    assert abs(int(a[0, 1, 0]) - 128) <= 1
    assert a[0, 2, 0] <= 5      # 1000/65535 of full scale, not clipped to 255
    assert a[0, 3, 0] == 0


def test_mode_I16_in_memory():
    im = Image.fromarray(np.array([[65535, 32768]], dtype=np.uint16))
    a = _px(load_image(im))
    assert a[0, 0].tolist() == [255, 255, 255]
    assert abs(int(a[0, 1, 0]) - 128) <= 1


def test_mode_F_unit_range_scaled(tmp_path):
    im = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert im.mode == "F"
    im.save(tmp_path / "float.tif")
    for src in (im, tmp_path / "float.tif"):
        out = load_image(src)
        assert out.mode == "RGB"
        a = _px(out)[0, :, 0].astype(int)
        assert a[0] == 0 and a[2] == 255
        assert abs(a[1] - 128) <= 1


def test_mode_F_outside_unit_range_is_stretched():
    im = Image.fromarray(np.array([[-1.0, 1.0, 3.0]], dtype=np.float32))
    a = _px(load_image(im))[0, :, 0].astype(int)
    assert a[0] == 0 and a[2] == 255
    assert abs(a[1] - 128) <= 1


def test_mode_La_premultiplied():
    out = load_image(Image.new("La", (2, 2)))
    assert out.mode == "RGB"


# --------------------------------------------------------------------------- formats and names
def test_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(tmp_path / "anim.gif").n_frames == 3
    out = load_image(tmp_path / "anim.gif")
    assert out.mode == "RGB" and out.size == (8, 8)
    r, g, b = _px(out)[4, 4].astype(int)
    assert r > 200 and g < 50 and b < 50


@pytest.mark.parametrize("ext, kw", [("bmp", {}), ("tif", {}), ("tiff", {}), ("webp", {"lossless": True}),
                                     ("jpeg", {"quality": 95})])
def test_formats_load(tmp_path, ext, kw):
    src = Image.new("RGB", (12, 10), (30, 160, 90))
    src.save(tmp_path / f"img.{ext}", **kw)
    out = load_image(tmp_path / f"img.{ext}")
    assert out.mode == "RGB" and out.size == (12, 10)
    assert np.abs(_px(out)[5, 6].astype(int) - [30, 160, 90]).max() <= 4


def test_uppercase_extension(tmp_path):
    Image.new("RGB", (7, 5), (1, 2, 3)).save(tmp_path / "PHOTO.JPG", format="JPEG")
    out = load_image(tmp_path / "PHOTO.JPG")
    assert out.size == (7, 5)


def test_unicode_file_name(tmp_path):
    path = tmp_path / "café_猫.png"
    Image.new("RGB", (6, 4), (9, 8, 7)).save(path)
    out = load_image(path)
    assert out.size == (6, 4)
    assert _px(out)[0, 0].tolist() == [9, 8, 7]
    out2 = load_image(str(path))
    assert out2.size == (6, 4)


def test_bytes_input():
    buf = io.BytesIO()
    Image.new("RGB", (5, 3), (11, 22, 33)).save(buf, "PNG")
    out = load_image(buf.getvalue())
    assert out.mode == "RGB" and out.size == (5, 3)
    assert _px(out)[1, 1].tolist() == [11, 22, 33]
    assert load_image(bytearray(buf.getvalue())).size == (5, 3)


def test_array_and_pil_input():
    arr = np.zeros((4, 6, 3), dtype=np.uint8)
    arr[..., 1] = 255
    assert load_image(arr).size == (6, 4)
    assert load_image(np.zeros((4, 6), dtype=np.uint8)).mode == "RGB"
    with pytest.raises(ImageLoadError):
        load_image(np.zeros((4, 6), dtype=np.float32))
    with pytest.raises(ImageLoadError):
        load_image(np.zeros((4, 6, 2), dtype=np.uint8))


# --------------------------------------------------------------------------- bad files
def _expect_error(src, **kw) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        load_image(src, **kw)
    err = info.value
    assert isinstance(err, ImgclassError)
    assert err.reason
    return err


def test_zero_byte_file(tmp_path, make_bad_files):
    bad = make_bad_files(tmp_path)
    err = _expect_error(bad["zero"])
    assert err.path == str(bad["zero"])
    assert "empty" in err.reason


def test_empty_bytes():
    err = _expect_error(b"")
    assert "empty" in err.reason


@pytest.mark.parametrize("kind", ["truncated_jpeg", "truncated_png"])
def test_truncated_files(tmp_path, make_bad_files, kind):
    bad = make_bad_files(tmp_path)
    err = _expect_error(bad[kind])
    assert err.path == str(bad[kind])
    assert "truncat" in err.reason.lower() or "decode" in err.reason.lower()


def test_truncated_jpeg_is_not_decoded_partially(tmp_path, encoded_noise):
    """The full file decodes; its first half must not (no half-grey pictures)."""
    data = encoded_noise("JPEG")
    (tmp_path / "full.jpg").write_bytes(data)
    assert load_image(tmp_path / "full.jpg").size == (32, 32)
    (tmp_path / "half.jpg").write_bytes(data[: len(data) // 2])
    err = _expect_error(tmp_path / "half.jpg")
    assert "truncated" in err.reason


def test_corrupt_file(tmp_path, make_bad_files):
    bad = make_bad_files(tmp_path)
    err = _expect_error(bad["corrupt"])
    assert err.path == str(bad["corrupt"])


def test_text_file_with_image_extension(tmp_path, make_bad_files):
    bad = make_bad_files(tmp_path)
    err = _expect_error(bad["not_image"])
    assert err.path == str(bad["not_image"])
    assert "identify" in err.reason


def test_missing_file(tmp_path):
    err = _expect_error(tmp_path / "nope.png")
    assert err.path == str(tmp_path / "nope.png")


def test_decompression_bomb_guard(tmp_path, make_bad_files):
    bad = make_bad_files(tmp_path)   # the "bomb" is a real 100x100 PNG
    err = _expect_error(bad["bomb"], max_pixels=5000)
    assert err.path == str(bad["bomb"])
    assert "10,000" in err.reason and "5,000" in err.reason
    # raising the limit (or disabling it) makes the same file load
    assert load_image(bad["bomb"], max_pixels=20_000).size == (100, 100)
    assert load_image(bad["bomb"], max_pixels=None).size == (100, 100)
    assert load_image(bad["bomb"]).size == (100, 100)


def test_decompression_bomb_guard_on_bytes(tmp_path, make_bad_files):
    data = make_bad_files(tmp_path)["bomb"].read_bytes()
    _expect_error(data, max_pixels=9999)
    assert load_image(data, max_pixels=10_000).size == (100, 100)


def test_image_load_error_pickles():
    err = ImageLoadError("/x/y.png", "empty file (0 bytes)")
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.reason) == ("/x/y.png", "empty file (0 bytes)")
    assert str(back) == "/x/y.png: empty file (0 bytes)"


def _png_header_only(path, w, h):
    """A PNG that declares ``w`` x ``h`` pixels but carries almost no pixel data (cheap to write)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b""))
    return path


def test_huge_declared_size_is_refused_cheaply(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)   # load_image may raise it; restore after
    path = _png_header_only(tmp_path / "huge.png", 40_000, 40_000)
    err = _expect_error(path, max_pixels=5000)
    assert "bomb" in err.reason or "exceeds" in err.reason
    # with a limit above its size the guard lets it through and decoding fails on the missing data
    err = _expect_error(path, max_pixels=2_000_000_000)
    assert "bomb" not in err.reason


def test_max_pixels_none_disables_the_guard(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)
    path = _png_header_only(tmp_path / "huge.png", 40_000, 40_000)
    err = _expect_error(path, max_pixels=None)   # still unreadable (no pixel data) ...
    assert "bomb" not in err.reason              # ... but not refused as a bomb


def test_large_limit_leaves_pillows_global_guard_untouched(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)
    path = _png_header_only(tmp_path / "huge.png", 40_000, 40_000)
    _expect_error(path, max_pixels=2_000_000_000)
    _expect_error(path, max_pixels=None)
    assert Image.MAX_IMAGE_PIXELS == 89_478_485
