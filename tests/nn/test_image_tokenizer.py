"""The input checks every image tokenizer's ``encode`` / ``decode`` shares (``zoo.nn.image_tokenizer``)."""

from __future__ import annotations

import pytest
import torch

from zoo.models.dvae.model import DVAE
from zoo.models.dvae.model import PRESETS as DVAE_PRESETS
from zoo.models.vqgan.model import PRESETS as VQGAN_PRESETS
from zoo.models.vqgan.model import TamingVQGAN
from zoo.models.vqvae.model import PRESETS as VQVAE_PRESETS
from zoo.models.vqvae.model import VQVAE

TOKENIZERS = {
    "dvae": lambda: DVAE(DVAE_PRESETS["tiny"]),
    "vqvae": lambda: VQVAE(VQVAE_PRESETS["tiny"]),
    "vqgan": lambda: TamingVQGAN(VQGAN_PRESETS["tiny"]),
}


@pytest.fixture(params=sorted(TOKENIZERS), scope="module")
def tok(request):
    torch.manual_seed(0)
    return TOKENIZERS[request.param]().eval()


def _images(*shape):
    return torch.rand(*shape) * 2 - 1


def test_good_input_round_trips_at_any_multiple_of_the_downsampling(tok):
    f = tok.downsample_factor
    codes = tok.encode(_images(2, 3, 4 * f, 6 * f))  # another aspect ratio than the preset's square
    assert codes.shape == (2, 4, 6) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < tok.codebook_size
    assert tok.decode(codes).shape == (2, 3, 4 * f, 6 * f)
    assert tok.decode(codes.int()).shape == (2, 3, 4 * f, 6 * f)  # any integer dtype


def test_a_side_the_downsampling_does_not_divide_is_refused_not_cropped(tok):
    f = tok.downsample_factor
    # before: 4f + 1 px encoded to a 4 x 4 grid that decodes to 4f px, the last row and column dropped unsaid
    with pytest.raises(ValueError, match=rf"{4 * f + 1}x{4 * f} px.*multiple of {f}.*crop to {4 * f}x{4 * f}"):
        tok.encode(_images(1, 3, 4 * f + 1, 4 * f))


def test_eight_bit_pixels_are_refused_with_the_conversion(tok):
    f = tok.downsample_factor
    u8 = (torch.rand(1, 3, 4 * f, 4 * f) * 255).to(torch.uint8)  # what torchvision.io.read_image returns
    with pytest.raises(ValueError, match=r"torch.uint8.*images.float\(\) / 127.5 - 1"):
        tok.encode(u8)


@pytest.mark.parametrize("shape", [(3, 8, 8), (1, 1, 8, 8), (1, 4, 8, 8)], ids=["unbatched", "gray", "rgba"])
def test_images_of_another_layout_are_refused_by_name(tok, shape):
    f = tok.downsample_factor
    shape = (*shape[:-2], 4 * f, 4 * f)
    with pytest.raises(ValueError, match=r"takes images \(B, 3, H, W\).*got \(" + ", ".join(map(str, shape))):
        tok.encode(_images(*shape))


@pytest.mark.parametrize("bad", ["above", "negative"])
def test_codes_outside_the_codebook_are_named_with_the_codebook_size(tok, bad):
    codes = torch.zeros(1, 4, 4, dtype=torch.long)
    codes[0, 1, 2] = tok.codebook_size if bad == "above" else -1
    with pytest.raises(ValueError, match=rf"codebook holds {tok.codebook_size} codes \(0 to {tok.codebook_size - 1}\)"):
        tok.decode(codes)


def test_codes_of_another_layout_are_refused_by_name(tok):
    with pytest.raises(ValueError, match=r"takes codes \(B, h, w\), got \(4, 4\).*codes\[None\]"):
        tok.decode(torch.zeros(4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"integer codes, got torch.float32"):
        tok.decode(torch.zeros(1, 4, 4))
