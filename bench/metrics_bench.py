"""Benchmark: the full nc_core metric suite vs a re-implementation of the seed per-sample NC1 path (issue 2)."""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nc_core.metrics import ClassStats, SampleStats, compute_metrics, evaluate_split, nc_metrics  # noqa: E402

GOF = {"weight_decay": 5e-4, "feature_decay": 5e-4, "depth_linear": 1}


def synthetic(N: int, d: int, K: int, seed: int, device: str):
    """float32 features (N, d) around random class means, labels (N,), classifier W (K, d), b (K,)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(K, d, generator=g) * 2.0  # (K, d)
    y = torch.randint(0, K, (N,), generator=g)  # (N,)
    X = means[y] + torch.randn(N, d, generator=g)  # (N, d) float32
    W = means + 0.5 * torch.randn(K, d, generator=g)  # (K, d)
    b = 0.1 * torch.randn(K, generator=g)  # (K,)
    return X.to(device), y.to(device), W.to(device), b.to(device)


def seed_path(X: torch.Tensor, y: torch.Tensor, W: torch.Tensor, b: torch.Tensor, K: int,
              batch: int = 256, chunk: int = 256) -> float:
    """The seed repos' per-sample path, re-written from nc-spec §2/§7 (MSE repo): `compute_info` walks
    every sample in Python (`.item()` on the label, a device→host copy of the feature and of the logit
    row per sample, class sums in dicts), `compute_Sigma_W` stacks each class list and sums B × d × d
    outer products in chunks of 256 (float32), `compute_Sigma_B`, NC1 = Tr(Σ_W pinv(Σ_B))/K with
    scipy.linalg.pinv. Copies use GPU semantics (no CPU aliasing, nc-spec §2.9.1). Returns NC1."""
    mu_g = torch.zeros(X.shape[1], device=X.device)
    mu_c: dict[int, torch.Tensor] = {}
    before: dict[int, list] = {}
    after: dict[int, list] = {}
    correct = 0
    for s in range(0, X.shape[0], batch):  # the loader loop (features already computed)
        feats, labels = X[s:s + batch], y[s:s + batch]
        outputs = feats @ W.T + b  # (B, K) the logits the seed gets from the model
        mu_g += feats.sum(0)
        for i in range(labels.shape[0]):
            c = labels[i].item()
            f_host = feats[i, :].detach().cpu().numpy().copy()  # .cpu() copies like a device transfer
            o_host = outputs[i, :].detach().cpu().numpy().copy()
            if c not in mu_c:
                mu_c[c] = feats[i, :].clone()
                before[c], after[c] = [f_host], [o_host]
            else:
                mu_c[c] += feats[i, :]
                before[c].append(f_host)
                after[c].append(o_host)
        correct += int((outputs.argmax(1) == labels).sum().item())
    N = X.shape[0]
    mu_g /= N
    for c in mu_c:
        mu_c[c] /= len(before[c])
    sigma_w = 0
    for c in before:  # compute_Sigma_W
        feats = torch.from_numpy(np.array(before[c])).float().to(X.device)
        for s in range(0, feats.shape[0], chunk):
            diff = feats[s:s + chunk] - mu_c[c]  # (B, d)
            sigma_w = sigma_w + (diff.unsqueeze(2) @ diff.unsqueeze(1)).sum(0)  # B × d × d temporary
    sigma_w = (sigma_w / N).cpu().numpy()
    sigma_b = 0
    for c in range(K):  # compute_Sigma_B
        v = (mu_c[c] - mu_g)
        sigma_b = sigma_b + v.unsqueeze(1) @ v.unsqueeze(0)
    sigma_b = (sigma_b / K).cpu().numpy()
    return float(np.trace(sigma_w @ scipy.linalg.pinv(sigma_b))) / K


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, repeats: int, device: str):
    times, out = [], None
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), max(times), out


def machine() -> str:
    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
                 platform.processor() or "?") if os.path.exists("/proc/cpuinfo") else platform.processor()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"nproc={os.cpu_count()}, CPU {model}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"GPU {gpu}, load average at start {load:.2f}")


def breakdown(X, y, W, b, K, device):
    t0 = time.perf_counter()
    st = ClassStats(K, X.shape[1], X.device).update(X, y)
    _sync(device)
    t1 = time.perf_counter()
    ss = SampleStats.from_features(st, X, y, W, b)
    _sync(device)
    t2 = time.perf_counter()
    compute_metrics(st, W, b, gof=GOF, per_sample=ss)
    _sync(device)
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2


def gpu_forward_comparison(args, X, y, W, b) -> None:
    """Metric cost vs the forward pass of a ResNet18 (torchvision, CIFAR-size input) producing the features."""
    import torchvision

    dev = args.device
    net = torchvision.models.resnet18(num_classes=args.K).to(dev).eval()
    fc = net.fc
    net.fc = torch.nn.Identity()  # net(x) → (B, 512) features

    def forward(x):
        h = net(x)
        return h, fc(h)

    g = torch.Generator(device=dev).manual_seed(args.seed)
    bs = 1000
    images = [torch.randn(bs, 3, 32, 32, device=dev, generator=g) for _ in range(args.N // bs)]
    labels = [torch.randint(0, args.K, (bs,), device=dev, generator=g) for _ in range(args.N // bs)]
    batches = list(zip(images, labels))

    def forward_only():
        with torch.inference_mode():
            for x, _ in batches:
                forward(x)

    def full_eval():
        return evaluate_split(forward, batches, num_classes=args.K, weight=fc.weight, bias=fc.bias,
                              loss_fn=torch.nn.functional.cross_entropy, gof=GOF)

    forward_only(), full_eval()  # warm-up (cuDNN autotune, allocator)
    fwd = timed(forward_only, args.repeats, dev)
    ev = timed(full_eval, args.repeats, dev)
    print(f"ResNet18 forward over {args.N} 32×32 images: median {fwd[0]:.4f} s")
    print(f"evaluate_split (forward + acc/loss + all metrics): median {ev[0]:.4f} s")
    print(f"metric overhead over the forward pass: {100 * (ev[0] - fwd[0]) / fwd[0]:.2f} % (goal ≤ 5 %)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--N", type=int, default=50_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--K", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5, help="runs of the nc_core suite (median reported)")
    ap.add_argument("--seed-repeats", type=int, default=2, help="runs of the seed path (median reported)")
    ap.add_argument("--skip-seed", action="store_true", help="do not run the (slow) seed path")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(machine())
    print(f"N={args.N}, d={args.d}, K={args.K}, float32 features, seed {args.seed}, device {args.device}")
    X, y, W, b = synthetic(args.N, args.d, args.K, args.seed, args.device)
    nc_metrics(X[:2000], y[:2000], W, b, num_classes=args.K, gof=GOF)  # warm-up (lazy init, allocator)
    ours = timed(lambda: nc_metrics(X, y, W, b, num_classes=args.K, gof=GOF), args.repeats, args.device)
    print(f"nc_core full suite ({len(ours[3])} keys): median {ours[0]:.3f} s [{ours[1]:.3f}-{ours[2]:.3f}] "
          f"over {args.repeats} runs")
    parts = breakdown(X, y, W, b, args.K, args.device)
    print(f"  breakdown (one run): ClassStats {parts[0]:.3f} s, SampleStats {parts[1]:.3f} s, "
          f"metric functions {parts[2]:.3f} s")
    if not args.skip_seed:
        seed = timed(lambda: seed_path(X, y, W, b, args.K), args.seed_repeats, args.device)
        print(f"seed path (compute_info + Σ_W chunk 256 + Σ_B + pinv NC1): median {seed[0]:.3f} s "
              f"[{seed[1]:.3f}-{seed[2]:.3f}] over {args.seed_repeats} runs")
        print(f"NC1: seed path (float32) {seed[3]:.6g}, nc_core (float64) {ours[3]['nc1']:.6g}")
        print(f"speed-up (median/median): {seed[0] / ours[0]:.1f}x (goal >= 25x)")
    if args.device.startswith("cuda"):
        gpu_forward_comparison(args, X, y, W, b)
    if hasattr(os, "getloadavg"):
        print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
