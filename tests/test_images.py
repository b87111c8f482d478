"""Image preprocessing equal to transformers 5.23's Gemma 4 image processor on its Pillow path (torchvision is not
installed), file for file; and one clear `ImageError` line for every image that cannot be used."""

from __future__ import annotations

import struct
import zlib

import pytest
import torch
from dgemma_runtime.images import ImageError, ImageSettings, open_image, preprocess
from PIL import Image

RELEASED = ImageSettings()  # 16-pixel patches, up to 280 soft tokens
TINY = ImageSettings(patch_size=4, max_soft_tokens=70)


def noise(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    """Random pixels in any mode, so every channel and every patch differs."""
    bands = len(Image.new(mode, (1, 1)).getbands())
    values = torch.randint(0, 256, (size[1], size[0], bands), generator=torch.Generator().manual_seed(seed))
    return Image.frombytes(mode, size, bytes(values.to(torch.uint8).flatten().tolist()))


def palette_with_transparency(size: tuple[int, int]) -> Image.Image:
    image = noise("L", size, 5).convert("P")
    image.info["transparency"] = 7  # one palette entry is see-through: the reference whitens it
    return image


def rotated_jpeg(path):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    noise("RGB", (40, 24), 6).save(path, exif=exif)


IMAGES = {
    "odd.png": lambda path: noise("RGB", (37, 23), 1).save(path),
    "large.png": lambda path: noise("RGB", (1500, 900), 2).save(path),  # resized down to the patch budget
    "gray.png": lambda path: noise("L", (64, 200), 3).save(path),
    "rgba.png": lambda path: noise("RGBA", (90, 91), 4).save(path),  # the reference drops alpha
    "palette.png": lambda path: palette_with_transparency((33, 20)).save(path),
    "thin.png": lambda path: noise("RGB", (3, 400), 7).save(path),  # one side rounds to zero cells
    "photo.jpg": lambda path: noise("RGB", (333, 222), 8).save(path, quality=90),
    "rotated.jpg": rotated_jpeg,
}


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pictures")
    for name, write in IMAGES.items():
        write(folder / name)
    return folder


@pytest.mark.parametrize("settings", [RELEASED, TINY], ids=["released", "tiny"])
@pytest.mark.parametrize("name", IMAGES)
def test_patches_equal_the_reference_processor(pictures, name, settings):
    from transformers import Gemma4ImageProcessorPil

    reference = Gemma4ImageProcessorPil(
        patch_size=settings.patch_size,
        max_soft_tokens=settings.max_soft_tokens,
        pooling_kernel_size=settings.pooling_kernel_size,
    )
    expected = reference(images=[str(pictures / name)], return_tensors="pt")  # a path: its `load_image` opens it
    ours = preprocess(open_image(pictures / name), settings)
    assert ours.soft_tokens == expected["num_soft_tokens_per_image"][0]
    assert torch.equal(ours.positions, expected["image_position_ids"][0])
    assert torch.equal(ours.pixels, expected["pixel_values"][0])


def test_bytes_read_like_the_file(pictures):
    path = pictures / "rotated.jpg"
    from_file, from_bytes = (preprocess(open_image(s), TINY) for s in (path, path.read_bytes()))
    assert torch.equal(from_file.pixels, from_bytes.pixels)


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims a size and holds no pixels: enough for Pillow's decompression-bomb check."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def animated_gif(path) -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ("red", "green", "blue")]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


def truncated_png(path) -> None:
    noise("RGB", (64, 64), 9).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


BAD = {
    "notes.txt": (lambda path: path.write_text("not a picture"), "not an image"),
    "cut.png": (truncated_png, "cannot decode"),
    "bomb.png": (lambda path: path.write_bytes(png_header(50_000, 50_000)), "too many pixels"),
    "moving.gif": (animated_gif, "animated image"),
    "absent.png": (lambda path: None, "no such file"),
}


@pytest.mark.parametrize("name", BAD)
def test_a_bad_image_is_one_clear_error_line(tmp_path, name):
    write, message = BAD[name]
    write(tmp_path / name)
    with pytest.raises(ImageError, match=message) as caught:
        open_image(tmp_path / name)
    assert name in str(caught.value) and "\n" not in str(caught.value)
