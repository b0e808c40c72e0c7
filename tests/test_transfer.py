"""Transfer evaluation on an ImageFolder written by the test (ImageNet layout, PNG and JPEG files)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from torch import nn

from ilnas.space.genotype import DARTS_V2
from ilnas.train import TransferConfig, transfer
from ilnas.train.distributed import DistContext
from ilnas.train.evaluation import eval_loader, evaluate
from ilnas.train.transfer_eval import imagefolder_datasets

GREYS = [20, 60, 100, 140, 180, 220]  # one flat grey level per class: a class is recognisable from its mean


def write_imagefolder(root, n_classes: int, per_split: dict[str, int]) -> None:
    for split, n in per_split.items():
        for c in range(n_classes):
            d = root / split / f"class_{c}"
            d.mkdir(parents=True)
            for i in range(n):
                ext = "png" if i % 2 else "jpeg"
                Image.new("L", (20, 20), GREYS[c] + (i % 3)).convert("RGB").save(d / f"img_{i}.{ext}")


def small_cfg(**kw) -> TransferConfig:
    base = dict(image_size=16, channels=4, cells=3, epochs=1, batch_size=8, device="cpu", train_scale_min=0.8,
                hflip=0.0)
    base.update(kw)
    return TransferConfig(**base)


class MeanOracle(nn.Module):
    """Ranks classes from the image mean. Even classes: correct top-1. Odd classes except the last: true class
    2nd. The last class: true class ranked last (outside the top-5 of 6)."""

    def __init__(self, means: torch.Tensor):
        super().__init__()
        self.register_buffer("means", means)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.means.numel()
        true = (x.mean(dim=(1, 2, 3))[:, None] - self.means[None]).abs().argmin(dim=1)
        logits = torch.zeros(x.shape[0], n)
        for i, c in enumerate(true.tolist()):
            order = list(range(n))
            order.remove(c)
            if c == n - 1:
                order.append(c)  # ranked last
            elif c % 2:
                order.insert(1, c)  # ranked second
            else:
                order.insert(0, c)  # ranked first
            logits[i, order] = torch.linspace(1.0, 0.0, n)
        return logits


def test_top1_top5_on_a_known_answer(tmp_path):
    n_classes, n_val = 6, 4
    write_imagefolder(tmp_path, n_classes, {"train": 1, "val": n_val})
    _, val_ds = imagefolder_datasets(tmp_path, small_cfg())
    assert val_ds.classes == [f"class_{c}" for c in range(n_classes)]
    sums = torch.zeros(n_classes)
    for x, y in val_ds:
        sums[y] += x.mean()
    oracle = MeanOracle(sums / n_val)
    ctx = DistContext(device=torch.device("cpu"))
    res = evaluate(oracle, eval_loader(val_ds, 5, ctx), ctx, n_classes)
    assert res["n"] == n_classes * n_val and res["topk"] == 5
    assert res["top1"] == pytest.approx(3 / 6)  # classes 0, 2, 4
    assert res["top5"] == pytest.approx(5 / 6)  # all but the last class


def test_transfer_end_to_end(tmp_path):
    data = tmp_path / "imagefolder"
    write_imagefolder(data, 3, {"train": 6, "val": 2})
    seen = []
    result = transfer(small_cfg(), DARTS_V2, tmp_path / "out", data_root=data,
                      callbacks=[lambda e, row: seen.append(e)])
    m = result.metrics
    assert seen == [1]  # epochs count from 1, as the search's
    assert m["num_classes"] == 3 and m["eval_images"] == 6 and m["train_images"] == 18
    assert m["topk"] == 3 and m["top5"] == 1.0  # top-3 of 3 classes always hits
    assert 0.0 <= m["top1"] <= 1.0
    assert m["params"] > 0 and m["macs"] > 0 and m["eval_images_per_s"] > 0
    assert json.loads(result.metrics_json.read_text())["params"] == m["params"]
    assert result.history_csv.exists() and result.checkpoint is not None
    assert torch.load(result.checkpoint, weights_only=True)["epoch"] == 1


def test_missing_split_names_the_folder(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="val"):
        transfer(small_cfg(), DARTS_V2, tmp_path / "out", data_root=tmp_path)


def test_eval_batches_is_a_seeded_random_subset_over_all_classes(tmp_path):
    from ilnas.train.transfer_eval import eval_subset

    write_imagefolder(tmp_path, 6, {"train": 2, "val": 8})
    _, val = imagefolder_datasets(tmp_path, small_cfg())
    sub = eval_subset(val, n_batches=2, batch_size=8, seed=0)  # 16 of 48 class-sorted images
    labels = [val.targets[i] for i in sub.indices]
    # the first 2 batches of the sorted folder hold classes 0 and 1 only; a uniform subset reaches (nearly) all
    assert len(labels) == 16 and len(set(labels)) >= 5
    assert sub.indices == eval_subset(val, 2, 8, seed=0).indices != eval_subset(val, 2, 8, seed=1).indices
    m = transfer(small_cfg(epochs=1, eval_batches=2), DARTS_V2, tmp_path / "out", data_root=tmp_path).metrics
    assert m["eval_images"] == 16 and m["eval_subset"]
    # the best epoch on the evaluation set is selection on the test set: named so, never the headline
    assert "best_top1" not in m and "max_epoch_top1_selected_on_test" in m and m["weights"] == "final"


def test_one_set_of_weights_from_retrain_to_transfer(tmp_path):
    from ilnas.data.spec import TaskConfig
    from ilnas.train import RetrainConfig, retrain
    from ilnas.train.checkpoint import load_weights

    cfg = RetrainConfig(channels=4, cells=3, epochs=2, batch_size=64, device="cpu", ema=True, ema_decay=0.5,
                        val_fraction=0.2, task=TaskConfig(name="d3", dataset="digits", classes=[0, 1, 2]))
    result = retrain(cfg, DARTS_V2, tmp_path / "retrain")
    m = result.metrics
    assert m["weights"] == "final_ema" and m["weights_epoch"] == 2 and result.checkpoint.name == "final.pth"
    state, which = load_weights(result.checkpoint)
    assert which == "final_ema"
    model_state = result.model.state_dict()  # what the stage logs to MLflow
    assert state.keys() == model_state.keys() and all(torch.equal(state[k], model_state[k]) for k in state)
    # the reported test top-1 belongs to those weights
    test = retrain.__globals__["build_retrain_data"](cfg)[2]
    again = evaluate(result.model, eval_loader(test, 64, DistContext()), DistContext(), 3)
    assert again["top1"] == m["top1"]
    # transfer.checkpoint: retrain fine-tunes from the same file (stages/transfer.py points at final.pth)
    write_imagefolder(tmp_path / "folder", 3, {"train": 2, "val": 2})
    t = transfer(small_cfg(epochs=0, checkpoint=str(result.checkpoint)), DARTS_V2, tmp_path / "transfer",
                 data_root=tmp_path / "folder").metrics
    assert t["init_weights"] == "final_ema" and t["fine_tuned_tensors"] > 0
