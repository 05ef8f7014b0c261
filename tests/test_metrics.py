import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from fedleak.attacks.base import Reconstruction
from fedleak.fl import ClientData
from fedleak.metrics import evaluate, label_accuracy, match_batch, psnr, ssim


def _pairs(channels, size, noise, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, channels, size, size, generator=g)
    y = (x + noise * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return x, y


@pytest.mark.parametrize("channels, size, noise", [(3, 32, 0.1), (1, 28, 0.3), (3, 11, 0.05), (3, 64, 0.5)])
def test_ssim_matches_scikit_image(channels, size, noise):
    x, y = _pairs(channels, size, noise)
    ours = ssim(x, y)
    for i in range(3):
        ref = structural_similarity(
            x[i].numpy(), y[i].numpy(), gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False, data_range=1.0, channel_axis=0,
        )
        assert abs(float(ours[i]) - float(ref)) < 1e-3


def test_ssim_identity_and_small_images():
    x, _ = _pairs(3, 8, 0)
    torch.testing.assert_close(ssim(x, x), torch.ones(3))
    assert (ssim(x, 1 - x) < 0.5).all()


def test_psnr_formula():
    x = torch.zeros(1, 1, 4, 4)
    y = torch.full((1, 1, 4, 4), 0.1)
    assert float(psnr(x, y)) == pytest.approx(20.0, abs=1e-4)  # 10·log10(1/0.01)
    assert float(psnr(x, x)) == pytest.approx(100.0)  # capped


def test_hungarian_matching_recovers_a_permutation():
    g = torch.Generator().manual_seed(1)
    originals = torch.rand(5, 3, 8, 8, generator=g)
    perm = torch.tensor([3, 0, 4, 1, 2])
    reconstructions = (originals[perm] + 0.05 * torch.randn(5, 3, 8, 8, generator=g)).clamp(0, 1)
    order = match_batch(reconstructions, originals)
    assert torch.equal(reconstructions[order].sub(originals).abs().max() < 0.3, torch.tensor(True))
    assert torch.equal(perm[order], torch.arange(5))


def test_label_accuracy_is_order_free():
    assert label_accuracy(torch.tensor([2, 1, 1]), torch.tensor([1, 2, 1])) == 1.0
    assert label_accuracy(torch.tensor([1, 1, 1]), torch.tensor([1, 2, 1])) == pytest.approx(2 / 3)
    assert label_accuracy(torch.tensor([0]), torch.tensor([3])) == 0.0


def test_evaluate_scores_matched_pairs():
    g = torch.Generator().manual_seed(2)
    originals = torch.rand(2, 3, 16, 16, generator=g)
    rec = Reconstruction(images=originals.flip(0), labels=torch.tensor([4, 7]), matching_loss=0.0,
                         restart_losses=[0.0], iterations=1, seconds=0.0)
    ev = evaluate(rec, ClientData(originals, torch.tensor([7, 4]), (10, 20)))
    assert ev.order == [1, 0]
    assert ev.psnr == pytest.approx(100.0) and ev.ssim == pytest.approx(1.0)
    assert ev.label_accuracy == 1.0
    assert [s.dataset_index for s in ev.images] == [10, 20]
    assert [s.recovered_label for s in ev.images] == [7, 4]
    assert not math.isnan(ev.psnr) and np.isfinite(ev.ssim)


def test_rog_ssim_matches_the_rog_paper_s_code_on_a_hand_computed_pair():
    """ROG's metric (global SSIM of 8-bit YCrCb channels, 0.8/0.1/0.1) on a fixed 6×6 pair; the values
    were computed once with the authors' ``src/metric.py`` ``ssim`` and OpenCV 5.1's ``cvtColor``."""
    from fedleak.metrics.image import ssim_rog, ycrcb_8bit

    c, i, j = torch.meshgrid(torch.arange(3), torch.arange(6), torch.arange(6), indexing="ij")
    x = (((c + 1) * (i * 5 + j * 3)) % 17).double() / 16.0
    y = x.sqrt() * 0.8 + 0.05 * ((i + j) % 3)
    assert ssim_rog(x[None], y[None]).item() == pytest.approx(0.9162633998637523, abs=1e-6)
    assert ssim_rog(x[None, :1], y[None, :1]).item() == pytest.approx(0.9003020162964754, abs=1e-6)  # grey
    assert ssim_rog(x[None], x[None]).item() == pytest.approx(1.0)
    # OpenCV's 8-bit conversion: white, black, pure red
    rgb = torch.tensor([[255, 0, 255], [255, 0, 0], [255, 0, 0]]).view(1, 3, 1, 3)
    assert ycrcb_8bit(rgb).view(3, 3).T.tolist() == [[255, 128, 128], [0, 128, 128], [76, 255, 85]]
