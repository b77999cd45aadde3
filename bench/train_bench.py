"""Epoch time: resident device tensors (nc_core.data.batches) vs a torchvision DataLoader; eval with/without NC metrics.

Usage:
  python bench/train_bench.py                        # CPU, MNIST-sized MLP (60,000 x 1x28x28), + eval overhead
  python bench/train_bench.py --device cuda          # same on the GPU (goal >= 20x)
  python bench/train_bench.py --device cuda --workload resnet18   # CIFAR-10-sized, bf16 + channels_last (goal >= 3x)

All data is synthetic and made in memory (no download). Both pipelines train the same model with the
same batch size, loss and optimizer; only the input pipeline differs. Ratios are measured side by side.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nc_core.data import batches  # noqa: E402
from nc_core.losses import build_loss  # noqa: E402
from nc_core.metrics import evaluate_split  # noqa: E402
from nc_core.models import build_model  # noqa: E402
from nc_core.spec import RunSpec  # noqa: E402
from nc_core.training.optim import build_optimizer  # noqa: E402
from nc_core.training.runtime import bf16_is_fast  # noqa: E402

WORKLOADS = {  # name -> (dataset in the spec, N, (C, H, W), model section, augment)
    "mlp": ("mnist", 60_000, (1, 28, 28), {"name": "mlp", "width": 128, "depth": 3}, "none"),
    "resnet18": ("cifar10", 50_000, (3, 32, 32), {"name": "resnet18", "width": 1}, "crop_flip"),
}


class SyntheticImages(Dataset):
    """torchvision-style dataset: uint8 images in memory, PIL conversion + transforms per item (like MNIST/CIFAR10)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform):
        self.x, self.y, self.transform = x, y, transform  # (N, H, W) or (N, H, W, C) uint8

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.x[i], mode="L" if self.x.ndim == 3 else "RGB")
        return self.transform(img), int(self.y[i])


def make_data(n: int, shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    c, h, w = shape
    x = g.integers(0, 256, size=(n, h, w) if c == 1 else (n, h, w, c), dtype=np.uint8)  # HWC like torchvision
    return x, g.integers(0, 10, size=n)


def use_bf16(workload: str, device: torch.device) -> bool:
    """ResNet18 runs under bf16 autocast where bf16 has native kernels (CUDA, AVX-512 BF16/AMX CPUs); on
    other CPUs bf16 convolutions are emulated (~27× slower than fp32), so it runs in fp32 there."""
    return workload == "resnet18" and bf16_is_fast(device)


def setup(workload: str, device: torch.device, bf16: bool):
    name, n, shape, model, augment = WORKLOADS[workload]
    spec = RunSpec.model_validate({"data": {"name": name}, "model": model, "batch_size": 128,
                                   "precision": "bf16" if bf16 else "fp32",
                                   "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}})
    torch.manual_seed(0)
    net = build_model(spec, shape, 10).to(device)
    if device.type == "cuda" and len(shape) == 3 and workload != "mlp":
        net = net.to(memory_format=torch.channels_last)
    opt = build_optimizer(spec, net)  # what fit() uses: SGD with torch's fused step
    return spec, net, opt, build_loss(spec.loss, 10), n, shape, augment


def train_epoch(net, opt, loss_fn, it, device, bf16: bool, limit: int | None = None) -> float:
    """Seconds for one pass of `it` (or its first `limit` batches), synchronised at the end."""
    net.train()
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    t0 = time.perf_counter()
    for i, (xb, yb) in enumerate(it):
        if limit is not None and i >= limit:
            break
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        if device.type == "cuda" and xb.ndim == 4:
            xb = xb.contiguous(memory_format=torch.channels_last)
        opt.zero_grad(set_to_none=True)
        with amp:
            _, logits = net(xb, yb)
            loss = loss_fn(logits, yb)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def resident(x: np.ndarray, y: np.ndarray, shape, device) -> tuple[torch.Tensor, torch.Tensor]:
    """What load_data does: uint8 → normalised float32 (N, C, H, W), moved to the device once."""
    t = torch.from_numpy(x)
    t = t[:, None] if t.ndim == 3 else t.permute(0, 3, 1, 2)  # (N, C, H, W)
    t = (t.float() / 255.0 - 0.5) / 0.25
    return t.contiguous().to(device), torch.from_numpy(y).long().to(device)


def bench_loaders(args, device: torch.device) -> dict[str, float]:
    bf16 = use_bf16(args.workload, device)
    spec, net, opt, loss_fn, n, shape, augment = setup(args.workload, device, bf16)
    x, y = make_data(min(n, args.n or n), shape)
    tx, ty = resident(x, y, shape, device)
    gen = torch.Generator(device=device).manual_seed(0)
    tfm = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if augment == "crop_flip" else []
    tfm += [transforms.ToTensor(), transforms.Normalize((0.5,) * shape[0], (0.25,) * shape[0])]
    loader = DataLoader(SyntheticImages(x, y, transforms.Compose(tfm)), batch_size=spec.batch_size, shuffle=True,
                        num_workers=args.workers, pin_memory=device.type == "cuda",
                        persistent_workers=args.workers > 0)  # torch refuses persistent workers without workers
    res_it = lambda: batches(tx, ty, spec.batch_size, shuffle=True, generator=gen, augment=augment)  # noqa: E731
    train_epoch(net, opt, loss_fn, res_it(), device, bf16, limit=20)  # warm-up (allocator, kernels, workers)
    train_epoch(net, opt, loss_fn, iter(loader), device, bf16, limit=20)
    t_res, t_dl = [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.epochs):  # alternate, so drifting machine load hits both pipelines alike
        t_res.append(train_epoch(net, opt, loss_fn, res_it(), device, bf16))
        t_dl.append(train_epoch(net, opt, loss_fn, iter(loader), device, bf16))
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"resident_s": statistics.median(t_res), "dataloader_s": statistics.median(t_dl),
            "resident_min_s": min(t_res), "dataloader_min_s": min(t_dl), "peak_gib": peak}


def bench_eval(args, device: torch.device) -> dict[str, float]:
    """One eval pass over (a prefix of) the train split: plain (acc + loss) vs evaluate_split (+ every NC metric)."""
    bf16 = use_bf16(args.workload, device)
    spec, net, _, loss_fn, n, shape, _ = setup(args.workload, device, bf16)
    x, y = make_data(min(n, args.eval_n or n), shape)
    tx, ty = resident(x, y, shape, device)
    net.eval()
    amp = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
    split = lambda: batches(tx, ty, 1024, shuffle=False, generator=None)  # noqa: E731
    w, b = net.head.effective_weight().detach().float(), net.head.effective_bias().detach().float()

    def forward(xb):
        with amp():
            f, z = net(xb)
        return f.float(), z.float()

    def plain() -> None:
        with torch.inference_mode():
            correct, total = 0, 0.0
            for xb, yb in split():
                _, logits = forward(xb)
                correct += (logits.argmax(1) == yb).sum()
                total += loss_fn(logits, yb) * len(yb)
            float(correct), float(total)

    class Again:
        def __iter__(self):
            return split()

    def full() -> None:
        evaluate_split(forward, Again(), num_classes=10, weight=w, bias=b, loss_fn=loss_fn)

    plain(), full()  # warm-up
    runs: dict[str, list[float]] = {"eval_plain_s": [], "eval_nc_s": []}
    for _ in range(args.repeats):  # interleaved: drifting machine load hits both alike
        for name, fn in (("eval_plain_s", plain), ("eval_nc_s", full)):
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            runs[name].append(time.perf_counter() - t0)
    times = {}
    for name, ts in runs.items():
        times[name], times[name.replace("_s", "_min_s")] = statistics.median(ts), min(ts)
    times["ratio_median_of_pairs"] = statistics.median(f / p for p, f in zip(runs["eval_plain_s"], runs["eval_nc_s"]))
    return times


def machine(device: torch.device) -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return f"{os.cpu_count()} CPUs ({cpu}), torch {torch.__version__}, {torch.get_num_threads()} threads{gpu}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--workload", default="mlp", choices=sorted(WORKLOADS))
    ap.add_argument("--epochs", type=int, default=1, help="timed epochs per pipeline (median)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader num_workers")
    ap.add_argument("--repeats", type=int, default=3, help="timed eval passes (median)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads of the main process (default: torch's; 1 on a loaded shared CPU, "
                         "where spinning OpenMP threads oversubscribe the cores)")
    ap.add_argument("--n", type=int, default=None, help="cap the training set size (smoke runs)")
    ap.add_argument("--eval-n", type=int, default=None, help="samples in the eval pass (default: the whole split)")
    ap.add_argument("--skip-eval", action="store_true")
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device on this machine")
    device = torch.device(args.device)
    print(f"machine: {machine(device)}; precision {'bf16' if use_bf16(args.workload, device) else 'fp32'}")
    if not args.skip_train:
        r = bench_loaders(args, device)
        print(f"{args.workload} on {args.device}, median (min) of {args.epochs} epochs: resident {r['resident_s']:.2f} "
              f"({r['resident_min_s']:.2f}) s | DataLoader(num_workers={args.workers}) {r['dataloader_s']:.2f} "
              f"({r['dataloader_min_s']:.2f}) s | speed-up {r['dataloader_s'] / r['resident_s']:.1f}x "
              f"({r['dataloader_min_s'] / r['resident_min_s']:.1f}x)"
              + (f"; peak GPU memory {r['peak_gib']:.2f} GiB (the resident split included)" if device.type == "cuda"
                 else ""))
    if not args.skip_eval:
        e = bench_eval(args, device)
        n = min(WORKLOADS[args.workload][1], args.eval_n or 10**9)
        print(f"eval pass ({n:,} x {args.workload}), median (min) of {args.repeats}: plain {e['eval_plain_s']:.3f} "
              f"({e['eval_plain_min_s']:.3f}) s | with NC metrics {e['eval_nc_s']:.3f} ({e['eval_nc_min_s']:.3f}) s"
              f" | ratio {e['eval_nc_s'] / e['eval_plain_s']:.2f}x ({e['eval_nc_min_s'] / e['eval_plain_min_s']:.2f}x;"
              f" median of the {args.repeats} side-by-side pairs {e['ratio_median_of_pairs']:.2f}x)")


if __name__ == "__main__":
    main()
