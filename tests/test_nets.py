"""Derived networks: timm registration, genotype object / genotype.json round trip, finite fwd+bwd, sizes."""

from __future__ import annotations

import pytest
import timm
import torch

import ilnas.nets  # noqa: F401
from ilnas.nets import NetworkCIFAR, NetworkImageNet, count_macs, count_params
from ilnas.space.genotype import DARTS_V2, GenotypeError


def test_registered_in_timm():
    assert {"ilnas_cifar", "ilnas_imagenet"} <= set(timm.list_models("ilnas*"))


@pytest.mark.parametrize("name,cls,shape", [
    ("ilnas_cifar", NetworkCIFAR, (1, 8, 8)),
    ("ilnas_imagenet", NetworkImageNet, (3, 32, 32)),
])
@pytest.mark.parametrize("source", ["object", "path"])
def test_create_model_round_trip(tmp_path, name, cls, shape, source):
    geno = DARTS_V2
    if source == "path":
        geno = tmp_path / "genotype.json"
        DARTS_V2.to_json(geno)
    torch.manual_seed(0)
    model = timm.create_model(name, genotype=geno, num_classes=7, in_chans=shape[0], channels=6, cells=3,
                              auxiliary=True, drop_path_rate=0.2)
    assert isinstance(model, cls)
    assert model.genotype == DARTS_V2
    assert model.num_classes == 7 and model.get_classifier().out_features == 7
    x = torch.randn(4, *shape)
    model.train()
    logits, aux = model(x)  # auxiliary head only in training mode
    assert logits.shape == aux.shape == (4, 7)
    (logits.square().mean() + 0.4 * aux.square().mean()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (4, 7) and torch.isfinite(out).all()
    # the auxiliary head is not counted (DARTS convention) but is trainable
    assert count_params(model) < count_params(model, exclude_auxiliary=False)
    assert count_macs(model, shape) > 0
    groups = model.depth_groups()
    assert len(groups) == 3 + 2  # stem, 3 cells, classifier
    assert sum(len(g) for g in groups) == len(list(model.parameters()))


def test_reset_classifier_and_bad_genotype(tmp_path):
    model = timm.create_model("ilnas_cifar", num_classes=10, channels=4, cells=3, auxiliary=False)
    model.reset_classifier(3)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 3)
    bad = tmp_path / "genotype.json"
    bad.write_text('{"schema_version": 1, "normal": [["conv_9x9", 0]]}')
    with pytest.raises(GenotypeError, match="genotype.json"):
        timm.create_model("ilnas_cifar", genotype=bad)
    with pytest.raises(ValueError, match="pretrained"):
        timm.create_model("ilnas_cifar", pretrained=True)


def test_paper_scale_sizes():
    """DARTS_V2 at paper scale: 3.3M params (DARTS table 1) and mobile setting (< 600M MACs) on ImageNet."""
    cifar = timm.create_model("ilnas_cifar", genotype=DARTS_V2, num_classes=10)  # 36 channels, 20 cells
    assert 3.2e6 < count_params(cifar) < 3.5e6
    assert 4.0e8 < count_macs(cifar, (3, 32, 32)) < 6.5e8
    imnet = timm.create_model("ilnas_imagenet", genotype=DARTS_V2, num_classes=1000)  # 48 channels, 14 cells
    assert 4.4e6 < count_params(imnet) < 5.0e6
    assert 4.5e8 < count_macs(imnet, (3, 224, 224)) < 6.0e8
