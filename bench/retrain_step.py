"""Training throughput of the derived CIFAR network vs timm's resnet18 (32x32 input, batch 64).

    .venv/bin/python bench/retrain_step.py [--steps 3] [--warmup 1] [--batch 64] [--device cpu|cuda|all]

One training step = forward (with the auxiliary head and drop path, as in retraining), cross-entropy,
backward, SGD step. Images/s = batch * timed steps / seconds. GPU rows use AMP (fp16) and channels_last,
as the trainer does. The ratio column is network / resnet18 measured in the same run on the same device.
"""

from __future__ import annotations

import argparse
import time

import timm
import torch
from torch import nn

import ilnas.nets  # noqa: F401
from ilnas.nets import count_macs, count_params
from ilnas.space.genotype import DARTS_V2

NETS = [
    ("ilnas_cifar DARTS_V2 36ch/20 cells (paper)", "ilnas_cifar", dict(channels=36, cells=20, auxiliary=True,
                                                                       drop_path_rate=0.2)),
    ("ilnas_cifar DARTS_V2 16ch/8 cells", "ilnas_cifar", dict(channels=16, cells=8, auxiliary=True,
                                                              drop_path_rate=0.2)),
    ("timm resnet18", "resnet18", {}),
]


def images_per_s(name: str, kwargs: dict, device: torch.device, batch: int, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    extra = {"genotype": DARTS_V2} if name.startswith("ilnas") else {}
    model = timm.create_model(name, num_classes=10, **extra, **kwargs).to(device)
    amp = device.type == "cuda"
    if amp:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    x = torch.randn(batch, 3, 32, 32, device=device)
    if amp:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    loss_fn = nn.CrossEntropyLoss()
    model.train()

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            out = model(x)
            loss = loss_fn(out[0], y) + 0.4 * loss_fn(out[1], y) if isinstance(out, tuple) else loss_fn(out, y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="all", help="cpu, cuda or all (cpu, plus cuda when available)")
    args = parser.parse_args()
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d != "cuda" or torch.cuda.is_available()]

    sizes = {}
    for label, name, kw in NETS:
        extra = {"genotype": DARTS_V2} if name.startswith("ilnas") else {}
        m = timm.create_model(name, num_classes=10, **extra, **kw)
        sizes[label] = (count_params(m), count_macs(m, (3, 32, 32)))

    print(f"torch {torch.__version__}, timm {timm.__version__}, threads {torch.get_num_threads()}, "
          f"batch {args.batch}, input 3x32x32, {args.steps} timed steps after {args.warmup} warmup")
    header = f"{'device':<6} {'network':<44} {'params':>8} {'MACs':>8} {'img/s':>9} {'vs resnet18':>11}"
    print(header)
    print("-" * len(header))
    for dev in devices:
        device = torch.device(dev)
        if dev == "cuda":
            torch.backends.cudnn.benchmark = True
        steps = args.steps if dev == "cpu" else max(args.steps, 20)
        warmup = args.warmup if dev == "cpu" else max(args.warmup, 5)
        rates = {label: images_per_s(name, kw, device, args.batch, steps, warmup) for label, name, kw in NETS}
        ref = rates["timm resnet18"]
        for label, rate in rates.items():
            params, macs = sizes[label]
            print(f"{dev:<6} {label:<44} {params / 1e6:>7.2f}M {macs / 1e6:>7.0f}M {rate:>9.1f} "
                  f"{rate / ref:>10.3f}x")


if __name__ == "__main__":
    main()
