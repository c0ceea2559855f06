"""Cost of ``privacy.secure_mode`` (CPU): OS-drawn noise and Poisson sample against the seeded ones, in one run.

Secure and seeded DP steps differ only in where the randomness comes from, so the per-step overhead
is the difference of (a) the optimizer's ``add_noise`` over every parameter of the model and (b) one
Poisson batch of the sampler. Measured on the suite's conventional ResNet-9 64-128-256 (about 2.4M
parameters, the CIFAR-10 study's "e") with N = 45,000 (its training set), best of --repeats, plus the
raw rate of OS Gaussians (Box-Muller from os.urandom) on a 2.4M vector and os.urandom's byte rate,
and, for scale, one whole seeded DP step of that model on a --batch of 32x32 images (the study's
steps have 8192 x 4 views). Absolute times drift with machine load; compare the ratios of one run.

Usage: python bench/secure_noise.py [--repeats 5] [--threads 1] [--batch 64]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import torch

warnings.filterwarnings("ignore")


def best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64, help="images in the whole DP step timed for scale")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from opacus.optimizers import DPOptimizer
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    from reproduce.models import build_model
    from reproduce.privacy.secure_rng import SecureDPOptimizer, SecurePoissonSampler, os_standard_normal

    n = 2_400_000
    t_bytes = best_of(lambda: os.urandom(8 * n), args.repeats)
    t_gauss = best_of(lambda: os_standard_normal(n), args.repeats)
    t_torch = best_of(lambda: torch.randn(n, generator=torch.Generator().manual_seed(0)), args.repeats)
    print(f"os.urandom: {8 * n / t_bytes / 1e6:.0f} MB/s")
    print(
        f"OS Gaussians (Box-Muller, float64), 2.4M vector: {n / t_gauss / 1e6:.1f} M draws/s "
        f"({t_gauss * 1e3:.0f} ms); seeded torch.randn float32: {n / t_torch / 1e6:.0f} M draws/s "
        f"({t_torch * 1e3:.1f} ms)"
    )

    model = build_model(group="e", widths=(64, 128, 256), in_channels=3, num_classes=10, seed=0)
    params = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)

    def noise_time(optimizer_class, **kwargs) -> float:
        opt = optimizer_class(
            torch.optim.SGD(params, lr=0.1), noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=8192, **kwargs
        )

        def add_noise():
            for p in params:
                p.summed_grad = torch.zeros_like(p)
            opt.add_noise()

        return best_of(add_noise, args.repeats)

    seeded = noise_time(DPOptimizer, generator=torch.Generator().manual_seed(0))
    secure = noise_time(SecureDPOptimizer)
    print(
        f"add_noise per step, {n_params:,} parameters: seeded {seeded * 1e3:.1f} ms, secure "
        f"{secure * 1e3:.0f} ms (4 OS Gaussians per entry) -> +{(secure - seeded) * 1e3:.0f} ms, "
        f"x{secure / seeded:.0f}"
    )

    N, q = 45_000, 8192 / 45_000
    seeded_sampler = UniformWithReplacementSampler(
        num_samples=N, sample_rate=q, generator=torch.Generator().manual_seed(0)
    )
    secure_sampler = SecurePoissonSampler(num_samples=N, sample_rate=q)
    s_seeded = best_of(lambda: next(iter(seeded_sampler)), args.repeats)
    s_secure = best_of(lambda: next(iter(secure_sampler)), args.repeats)
    print(f"Poisson batch, N={N:,}, q={q:.3f}: seeded {s_seeded * 1e3:.2f} ms, secure {s_secure * 1e3:.2f} ms")
    overhead = secure - seeded + s_secure - s_seeded
    print(f"secure-mode overhead per DP step: {overhead * 1e3:.0f} ms")

    import torch.nn.functional as F
    from torch.utils.data import TensorDataset

    from reproduce.privacy.dp_sgd import make_private

    B = args.batch
    data = TensorDataset(torch.randn(4 * B, 3, 32, 32), torch.randint(0, 10, (4 * B,)))
    dp = make_private(
        model,
        torch.optim.SGD(params, lr=0.1),
        data,
        batch_size=B,
        steps=1,
        target_epsilon=8.0,
        delta=1e-5,
        max_grad_norm=1.0,
        accountant="rdp",
        seed=0,
    )
    x, y = data[:B]

    def dp_step():
        dp.optimizer.zero_grad(set_to_none=True)
        dp.backward(F.cross_entropy(dp.model(x), y))
        dp.optimizer.step()

    step = best_of(dp_step, max(2, args.repeats // 2))
    print(
        f"one seeded DP step on {B} images: {step:.2f} s -> the secure overhead is {overhead / step:.1%} of it "
        f"(a smaller share of a {8192 * 4}-view step)"
    )


if __name__ == "__main__":
    main()
