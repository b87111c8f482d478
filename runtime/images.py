"""Image preprocessing, equal to transformers 5.23's Gemma 4 image processor on its Pillow path: open the file as
`load_image` does, resize to the patch budget keeping the aspect ratio, scale pixels to [0, 1], cut into patches
with their (x, y) positions, and pad to a fixed number of patches. Torch and Pillow only."""

from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import Fields, read_json
from .errors import DgemmaError

ImageSource = str | os.PathLike | bytes  # a file path, or the file's bytes (base64 decoded by the caller)


class ImageError(DgemmaError):
    """An image that cannot be used: unreadable, truncated, too large, animated, or given to a text-only model."""


@dataclass(frozen=True)
class ImageSettings:
    """The processor's knobs (processor_config.json); the defaults are Gemma 4's."""

    patch_size: int = 16
    max_soft_tokens: int = 280  # the most soft tokens an image may become
    pooling_kernel_size: int = 3  # soft tokens pool k x k patches

    @property
    def max_patches(self) -> int:
        return self.max_soft_tokens * self.pooling_kernel_size**2


@dataclass(frozen=True)
class Patches:
    pixels: torch.Tensor  # [max_patches, patch_size² · 3] float32 in [0, 1]; padding rows are 0
    positions: torch.Tensor  # [max_patches, 2] int64 (x, y) of each patch; padding rows are (-1, -1)
    soft_tokens: int  # placeholder tokens this image takes in the prompt


def read_settings(folder: Path) -> ImageSettings | None:
    """The image processor's settings (Gemma 4's defaults for keys it lacks): processor_config.json (nested under
    "image_processor"), else the older preprocessor_config.json; None when the folder has neither."""
    for name, key in (("processor_config.json", "image_processor"), ("preprocessor_config.json", None)):
        if (folder / name).exists():
            raw = Fields(read_json(folder / name), name)
            raw = raw.section(key) if key else raw
            defaults = ImageSettings()
            return ImageSettings(
                patch_size=raw.integer("patch_size", defaults.patch_size),
                max_soft_tokens=raw.integer("max_soft_tokens", defaults.max_soft_tokens),
                pooling_kernel_size=raw.integer("pooling_kernel_size", defaults.pooling_kernel_size),
            )
    return None


def open_image(source: ImageSource) -> Image.Image:
    """The image as transformers' `load_image` opens it (EXIF orientation applied, then RGB, so an alpha channel is
    dropped), then its Pillow backend's RGB step; every failure is one `ImageError` line."""
    name = "image" if isinstance(source, bytes) else os.fspath(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # between 1x and 2x the limit: allowed
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            if getattr(image, "n_frames", 1) > 1:  # transformers would silently read the first frame only
                raise ImageError(f"{name}: an animated image ({image.n_frames} frames); give a single still image")
            image.load()  # decode now, so a truncated file fails here
            image = ImageOps.exif_transpose(image).convert("RGB")
    except Image.DecompressionBombError:
        raise ImageError(
            f"{name}: too many pixels (more than {2 * Image.MAX_IMAGE_PIXELS:,}); likely a decompression bomb"
        ) from None
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's decoders raise these for corrupt data
        raise ImageError(f"{name}: cannot decode the image ({exc})") from None
    # A transparency key survives the RGB conversion (a palette or RGB PNG's tRNS colour): those pixels go white.
    if image.info.get("transparency") is not None:
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image


def target_size(height: int, width: int, settings: ImageSettings) -> tuple[int, int]:
    """The largest (height, width) of the same aspect ratio whose patches fit the budget, both sides multiples of
    a pooled cell (patch_size x pooling_kernel_size); a side that would round to 0 becomes one cell."""
    cell = settings.patch_size * settings.pooling_kernel_size
    factor = math.sqrt(settings.max_patches * settings.patch_size**2 / (height * width))
    new_height = math.floor(factor * height / cell) * cell
    new_width = math.floor(factor * width / cell) * cell
    longest = (settings.max_patches // settings.pooling_kernel_size**2) * cell
    if new_height == 0:
        return cell, min(math.floor(width / height) * cell, longest)
    if new_width == 0:
        return min(math.floor(height / width) * cell, longest), cell
    return new_height, new_width


def preprocess(image: Image.Image, settings: ImageSettings) -> Patches:
    """An RGB image -> its patches, positions and soft-token count."""
    height, width = target_size(image.height, image.width, settings)
    if (height, width) != (image.height, image.width):
        image = image.resize((width, height), resample=Image.Resampling.BICUBIC)
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(height, width, 3)
    # float64 times 1/255, then float32: the reference's rounding, bit for bit.
    pixels = (pixels.double() * (1 / 255)).float()
    p = settings.patch_size
    rows, cols = height // p, width // p
    # Each patch is flattened as (row in patch, column in patch, channel); patches go row by row.
    patches = pixels.view(rows, p, cols, p, 3).permute(0, 2, 1, 3, 4).reshape(rows * cols, p * p * 3)
    ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    positions = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)
    padding = settings.max_patches - rows * cols
    return Patches(
        pixels=torch.cat([patches, patches.new_zeros(padding, patches.shape[1])]),
        positions=torch.cat([positions, positions.new_full((padding, 2), -1)]),
        soft_tokens=rows * cols // settings.pooling_kernel_size**2,
    )


def load_images(sources: list[ImageSource], settings: ImageSettings) -> list[Patches]:
    return [preprocess(open_image(source), settings) for source in sources]
