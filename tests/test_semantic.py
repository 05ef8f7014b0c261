"""ROG's semantic metric: the Jaccard index of an independent classifier's top-k label sets."""

import pytest
import torch
from torch import nn

from fedleak.errors import ConfigError
from fedleak.metrics.semantic import SemanticScorer, jaccard, load_semantic
from tests.test_cli import fedleak


def test_jaccard_on_hand_made_label_sets():
    assert jaccard({1, 2, 3}, {2, 3, 4}) == pytest.approx(2 / 4)
    assert jaccard({7}, {7}) == 1.0 and jaccard({1}, {2}) == 0.0
    assert jaccard([5, 5, 6], (6,)) == pytest.approx(1 / 2)  # sets: repeats count once
    assert jaccard(set(), set()) == 1.0 and jaccard(set(), {3}) == 0.0


class Fixed(nn.Module):
    """Logits read off the image: pixel (0, 0, j) is class j's logit."""

    def forward(self, x):
        return x[:, 0, 0, :4] * 10


def test_the_scorer_compares_each_pair_s_top_k_labels():
    images = torch.zeros(2, 1, 1, 4)
    images[0, 0, 0] = torch.tensor([0.9, 0.8, 0.1, 0.0])  # top-2 {0, 1}
    images[1, 0, 0] = torch.tensor([0.0, 0.1, 0.9, 0.8])  # top-2 {2, 3}
    recon = images.clone()
    recon[0, 0, 0] = torch.tensor([0.9, 0.1, 0.8, 0.0])  # top-2 {0, 2}: one of three labels shared
    scorer = SemanticScorer(Fixed(), (0.0,), (1.0,), k=2)
    assert scorer.labels(images) == [frozenset({0, 1}), frozenset({2, 3})]
    assert scorer(recon, images) == [pytest.approx(1 / 3), 1.0]
    strict = SemanticScorer(Fixed(), (0.0,), (1.0,), k=2, threshold=0.5)  # probabilities above 0.5 only
    assert strict.labels(images) == [frozenset({0}), frozenset({2})]


def test_a_run_scores_semantic_overlap_with_an_independent_checkpoint(tmp_path, cifar_root, monkeypatch, capsys):
    ckpt = tmp_path / "tagger.safetensors"
    code, _, err = fedleak(monkeypatch, capsys, "train", "--model", "mlp", "--dataset", "cifar10", "--root",
                           str(cifar_root), "--image-size", "8", "--epochs", "1", "--out", str(ckpt), "-q")
    assert code == 0, err
    from fedleak.config import build_config
    from fedleak.pipeline import run

    result = run(build_config(None, {"data.name": "cifar10", "data.root": str(cifar_root), "data.image_size": 8,
                                     "model.name": "lenet", "attack.name": "ig", "attack.iterations": 2,
                                     "client.batch_size": 2, "metrics.semantic": str(ckpt), "metrics.semantic_k": 2,
                                     "metrics.lpips": []}, []))
    m = result.metrics()
    assert 0.0 <= m["semantic"] <= 1.0 and m["ssim_rog"] is not None
    per_image = [s["semantic"] for s in m["images"]]
    assert len(per_image) == 2 and m["semantic"] == pytest.approx(sum(per_image) / 2)
    other = tmp_path / "weights.pt"
    other.write_bytes(b"not a fedleak checkpoint")
    with pytest.raises(ConfigError, match="no fedleak checkpoint"):
        load_semantic(str(other), 10, 3)
    with pytest.raises(ConfigError, match="classifies 10 classes of 3-channel images"):
        load_semantic(str(ckpt), 40, 1)
