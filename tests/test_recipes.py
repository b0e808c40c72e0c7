"""The DARTS recipes beside timm's: the values, the weight-decay rule, the schedules, the augmentations, the
per-dataset normalisation, and the presets that use them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from ilnas.data.spec import TaskConfig
from ilnas.data.tasks import CIFAR10_MEAN, CIFAR100_MEAN, IMAGENET_MEAN
from ilnas.params import validate_params
from ilnas.space.genotype import DARTS_V2
from ilnas.train import RetrainConfig, TransferConfig
from ilnas.train.augment import Cutout
from ilnas.train.optim import build_optimizer
from ilnas.train.retraining import build_model, retrain_transforms

REPO = Path(__file__).resolve().parents[1]


def test_darts_recipes_fill_the_published_values():
    r = RetrainConfig(recipe="darts")
    assert (r.epochs, r.batch_size, r.lr, r.lr_min, r.sched, r.weight_decay, r.grad_clip) == \
        (600, 96, 0.025, 0.0, "cosine", 3e-4, 5.0)
    assert (r.auxiliary, r.auxiliary_weight, r.drop_path_rate, r.cutout, r.val_fraction) == (True, 0.4, 0.2, 16, 0.0)
    assert r.wd_on_norm_and_bias and (r.channels, r.cells) == (36, 20) and not r.ema and r.re_prob == 0
    t = TransferConfig(recipe="darts")
    assert (t.epochs, t.batch_size, t.lr, t.lr_base_batch, t.sched, t.decay_rate, t.decay_epochs) == \
        (250, 128, 0.1, 128, "step", 0.97, 1.0)
    assert (t.weight_decay, t.label_smoothing, t.auxiliary, t.auxiliary_weight) == (3e-5, 0.1, True, 0.4)
    assert (t.channels, t.cells, t.image_size) == (48, 14, 224) and t.wd_on_norm_and_bias
    # keys set explicitly win over the recipe (a short CPU run keeps the rest of it)
    assert RetrainConfig(recipe="darts", epochs=3).epochs == 3 and RetrainConfig(recipe="darts", epochs=3).cutout == 16
    assert RetrainConfig().recipe == "timm" and not RetrainConfig().wd_on_norm_and_bias


def _decayed(cfg) -> tuple[set[int], set[int]]:
    model = build_model("ilnas_cifar", DARTS_V2, 10, 3, 4, 3, auxiliary=True)
    optimizer, _ = build_optimizer(model, cfg, cfg.lerac)
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    return decayed, {id(p) for p in model.parameters()}


def test_darts_decays_batchnorm_and_biases_timm_does_not():
    decayed, every = _decayed(RetrainConfig(recipe="darts", channels=4, cells=3))
    assert decayed == every  # DARTS: weight decay 3e-4 on every parameter
    decayed, every = _decayed(RetrainConfig(recipe="timm", channels=4, cells=3))
    assert decayed < every  # timm's rule: 1-d tensors (BatchNorm, biases) undecayed
    decayed, every = _decayed(RetrainConfig(recipe="darts", channels=4, cells=3, lerac={"enabled": True}))
    assert decayed == every  # the LeRaC groups follow the same rule


def test_imagenet_step_decay_and_linear_batch_scaling():
    cfg = TransferConfig(recipe="darts", epochs=4, batch_size=256, channels=4, cells=3)
    assert cfg.effective_lr() == pytest.approx(0.2)  # lr 0.1 per 128 images, global batch 256
    model = build_model("ilnas_imagenet", DARTS_V2, 10, 3, 4, 3)
    optimizer, scheduler = build_optimizer(model, cfg, None)
    for epoch in range(4):
        scheduler.step(epoch)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.2 * 0.97 ** epoch)
    with pytest.raises(ValueError, match="batch_size: 256 is the global batch over 3 processes"):
        cfg.per_process_batch(3)


def test_darts_cifar_augmentation_and_per_dataset_statistics():
    from torchvision import transforms as T

    train, _ = retrain_transforms(RetrainConfig(recipe="darts", task=TaskConfig(name="c", dataset="cifar100",
                                                                                 root="x")), 32)
    kinds = [type(t) for t in train.transforms]
    assert kinds == [T.RandomCrop, T.RandomHorizontalFlip, T.ToTensor, T.Normalize, Cutout]
    assert train.transforms[0].padding == 4 and train.transforms[-1].length == 16
    assert tuple(train.transforms[3].mean) == CIFAR100_MEAN  # not CIFAR-10's statistics
    for dataset, mean in (("cifar10", CIFAR10_MEAN), ("imagefolder", IMAGENET_MEAN)):
        for recipe in ("darts", "timm"):
            cfg = RetrainConfig(recipe=recipe, task=TaskConfig(name="t", dataset=dataset, root="x"))
            norm = [t for t in retrain_transforms(cfg, 32)[1].transforms if isinstance(t, T.Normalize)][0]
            assert torch.allclose(torch.as_tensor(norm.mean, dtype=torch.float64),
                                  torch.tensor(mean, dtype=torch.float64), atol=1e-6), (dataset, recipe)


def test_cutout_zeroes_one_clipped_square():
    torch.manual_seed(0)
    for _ in range(20):
        out = Cutout(16)(torch.ones(3, 32, 32))
        zeros = (out[0] == 0).nonzero()
        h = zeros[:, 0].max() - zeros[:, 0].min() + 1
        w = zeros[:, 1].max() - zeros[:, 1].min() + 1
        assert int((out[0] == 0).sum()) == int(h * w) and h <= 16 and w <= 16  # one rectangle, clipped
        assert torch.equal(out[0] == 0, out[2] == 0)  # the same square on every channel


@pytest.mark.parametrize("preset", ["configs/cifar.yaml", "configs/imagenet.yaml"])
def test_presets_use_the_papers_recipes(preset):
    params = validate_params(yaml.safe_load((REPO / preset).read_text()), source=preset)
    r, t = params.retrain, params.transfer
    assert r.recipe == "darts" and {"recipe"} <= r.model_fields_set and {"recipe"} <= t.model_fields_set
    assert (r.batch_size, r.lr, r.cutout, r.val_fraction, r.weight_decay) == (96, 0.025, 16, 0.0, 3e-4)
    assert (t.weight_decay, t.label_smoothing) == (3e-5, 0.1)
    assert not r.amp and not t.amp  # DARTS and PC-DARTS train in fp32
    assert r.opt == t.opt == "momentum"
    world = params.distributed.world_size
    assert r.per_process_batch(world) * world == 96  # never 8 x 96 at an unscaled lr
    if preset.endswith("imagenet.yaml"):  # PC-DARTS' ImageNet schedule for its batch of 1024 on 8 GPUs
        assert t.recipe == "pcdarts" and (t.sched, t.warmup_epochs) == ("pcdarts_linear", 5)
        assert (world, t.batch_size, t.per_process_batch(world)) == (8, 1024, 128)
        assert t.effective_lr() == pytest.approx(0.5)
    else:
        assert t.recipe == "darts" and (t.sched, t.decay_rate) == ("step", 0.97)
        assert t.effective_lr() == pytest.approx(0.1 * t.batch_size / 128)


def test_study_cifar_names_the_darts_recipe():
    base = yaml.safe_load((REPO / "configs/study_cifar.yaml").read_text())["base"]
    cfg = RetrainConfig.model_validate(base["retrain"])
    assert cfg.recipe == "darts" and not cfg.amp and cfg.val_fraction == 0.0 and cfg.re_prob == 0.0


@pytest.mark.parametrize("recipe", ["darts", "pcdarts"])
def test_paper_recipes_use_plain_momentum_sgd_in_fp32(recipe):
    """DARTS and PC-DARTS build torch.optim.SGD(momentum=0.9): heavy ball, not timm's Nesterov 'sgd'."""
    for cfg, name in ((RetrainConfig(recipe=recipe, channels=4, cells=3), "ilnas_cifar"),
                      (TransferConfig(recipe=recipe, channels=4, cells=3), "ilnas_imagenet")):
        assert not cfg.amp
        optimizer, _ = build_optimizer(build_model(name, DARTS_V2, 10, 3, 4, 3), cfg, None)
        assert isinstance(optimizer, torch.optim.SGD)
        assert all(g["momentum"] == 0.9 and g["nesterov"] is False for g in optimizer.param_groups)
    timm_sgd, _ = build_optimizer(build_model("ilnas_cifar", DARTS_V2, 10, 3, 4, 3),
                                  RetrainConfig(channels=4, cells=3, opt="sgd"), None)
    assert timm_sgd.param_groups[0]["nesterov"] is True  # what the darts recipe used to build


def test_pcdarts_imagenet_schedule_is_theirs():
    """PC-DARTS train_imagenet.py: lr 0.5 at batch 1024, lr * (e+1)/5 for e < 5, then adjust_lr's two slopes."""
    cfg = TransferConfig(recipe="pcdarts", channels=4, cells=3)
    assert (cfg.epochs, cfg.batch_size, cfg.effective_lr(), cfg.drop_path_rate) == (250, 1024, 0.5, 0.0)
    assert RetrainConfig(recipe="pcdarts").drop_path_rate == 0.3  # PC-DARTS train.py
    optimizer, scheduler = build_optimizer(build_model("ilnas_imagenet", DARTS_V2, 10, 3, 4, 3), cfg, None)
    expected = {0: 0.1, 1: 0.2, 4: 0.5, 5: 0.5 * 240 / 245, 100: 0.5 * 145 / 245, 244: 0.5 / 245,
                245: 0.5 * 5 / 1225, 249: 0.5 / 1225}
    for epoch, lr in expected.items():
        scheduler.step(epoch)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-12), epoch
    state = scheduler.state_dict()  # timm's Scheduler state API: a resume restores it
    scheduler.load_state_dict(state)


def test_imagenet_auxiliary_head_has_darts_single_batchnorm():
    """quark0/darts cnn/model.py AuxiliaryHeadImageNet leaves out the BatchNorm after the 768-channel conv."""
    def norms(name: str) -> int:
        model = build_model(name, DARTS_V2, 10, 3, 4, 3, auxiliary=True)
        counts = [sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.auxiliary_head.modules())]
        model.reset_classifier(5)
        counts.append(sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.auxiliary_head.modules()))
        return counts

    assert norms("ilnas_imagenet") == [1, 1]
    assert norms("ilnas_cifar") == [2, 2]


def test_implicit_recipe_warns_once_naming_the_recipe(caplog):
    import logging

    from ilnas.train.config import warn_implicit_recipe

    params = validate_params({"retrain": {"epochs": 1}, "transfer": {"recipe": "darts"}}, source="p.yaml")
    with caplog.at_level(logging.WARNING, logger="ilnas.train"):
        for _ in range(3):  # a process may validate more than once: the message shows once
            assert warn_implicit_recipe("retrain", params.retrain, "implicit.yaml") is not None
        assert warn_implicit_recipe("transfer", params.transfer, "implicit.yaml") is None
    records = [r for r in caplog.records if r.name == "ilnas.train"]
    assert len(records) == 1 and records[0].levelname == "WARNING"
    assert "implicit.yaml: retrain.recipe is not set, so recipe 'timm' applies" in records[0].getMessage()
    assert "darts | pcdarts | timm" in records[0].getMessage()


def test_ilnas_recipe_prints_what_a_preset_resolves_to() -> None:
    from typer.testing import CliRunner

    from ilnas.cli import app

    out = CliRunner().invoke(app, ["recipe", str(REPO / "configs" / "darts.yaml")])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].endswith("darts.yaml:")
    assert lines[1].startswith("  retrain: recipe darts,") and "Cutout 4" in lines[1]
    assert lines[2].startswith("  transfer: recipe darts,")
    bad = CliRunner().invoke(app, ["recipe", str(REPO / "configs" / "absent.yaml")])
    assert bad.exit_code == 2 and "absent.yaml" in bad.output
