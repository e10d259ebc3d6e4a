#!/usr/bin/env python3
"""PyTorch reference for `cargo xtask bench --peer`: the paper's MNIST network (Madry et al.
2018, MadryLab's mnist_challenge) on the CPU, 2 threads, float32, printing the same rows as
`cargo bench -p saddle-models --bench mnist_speed`:

- pgd_step_b50, pgd_step_b256: forward, gradient of the summed cross-entropy with respect to
  the input, L-inf sign step and projection (images x steps per second). The weights are
  constants during the attack (requires_grad off), as in saddle.
- train_iter_b50: PGD-40 from a random start (eps 0.3, alpha 0.01) on a batch of 50, then
  forward and backward for every parameter on the adversarial batch and an Adam step (lr 1e-4)
  (examples per second).
- inference_b50, inference_b256: logits under torch.no_grad() (images per second).

Each figure is the median of timed repetitions after two warm-up calls. Environment:
SADDLE_THREADS (2), SADDLE_BENCH_SECS (3), SADDLE_BENCH_ROWS (comma-separated subset).
"""

import os
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

EPS, ALPHA, STEPS = 0.3, 0.01, 40
FWD_FLOP = 2.0 * (28 * 28 * 32 * 25 + 14 * 14 * 64 * 800 + 3136 * 1024 + 10240)


class MnistNet(nn.Module):
    """conv 5x5x32 (pad 2) -> ReLU -> maxpool 2 -> conv 5x5x64 (pad 2) -> ReLU -> maxpool 2
    -> fc 3136 -> 1024 -> ReLU -> fc 1024 -> 10."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.fc1 = nn.Linear(3136, 1024)
        self.fc2 = nn.Linear(1024, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


def timed(secs, f):
    f()
    t0 = time.perf_counter()
    f()
    once = max(time.perf_counter() - t0, 1e-6)
    reps = min(max(int(secs / once), 3), 200)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def set_grad(model, on):
    for p in model.parameters():
        p.requires_grad_(on)


def pgd_step(model, x, x0, y):
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, x)
    with torch.no_grad():
        x = x + ALPHA * g.sign()
        x = torch.min(torch.max(x, x0 - EPS), x0 + EPS).clamp_(0.0, 1.0)
    return x


def row(name, rate, unit, secs, gflops=None):
    gf = f" gflops={gflops:.1f}" if gflops is not None else ""
    print(f"row={name} rate={rate:.1f} unit={unit} ms={secs * 1e3:.2f}{gf}", flush=True)


def main():
    threads = int(os.environ.get("SADDLE_THREADS", "2"))
    secs = float(os.environ.get("SADDLE_BENCH_SECS", "3"))
    only = os.environ.get("SADDLE_BENCH_ROWS")
    want = lambda r: only is None or r in only.split(",")
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    print(f"# PyTorch {torch.__version__}, CPU, {torch.get_num_threads()} threads, "
          f"mkldnn {torch.backends.mkldnn.is_available()}", flush=True)
    model = MnistNet().eval()
    g = torch.Generator().manual_seed(2)

    def batch(n):
        return torch.rand(n, 1, 28, 28, generator=g), torch.arange(n) % 10

    x50, y50 = batch(50)
    x256, y256 = batch(256)
    set_grad(model, False)
    for n, x, y in [(50, x50, y50), (256, x256, y256)]:
        name = f"pgd_step_b{n}"
        if want(name):
            state = {"x": x.clone()}

            def step():
                state["x"] = pgd_step(model, state["x"], x, y)

            t = timed(secs, step)
            row(name, n / t, "images*steps/s", t, n / t * 2 * FWD_FLOP / 1e9)
    if want("train_iter_b50"):
        train_model = MnistNet()
        opt = torch.optim.Adam(train_model.parameters(), lr=1e-4)

        def iteration():
            train_model.eval()
            set_grad(train_model, False)
            x = x50 + torch.empty_like(x50).uniform_(-EPS, EPS)
            x = torch.min(torch.max(x, x50 - EPS), x50 + EPS).clamp_(0.0, 1.0)
            for _ in range(STEPS):
                x = pgd_step(train_model, x, x50, y50)
            set_grad(train_model, True)
            train_model.train()
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(train_model(x), y50)
            loss.backward()
            opt.step()

        t = timed(secs, iteration)
        row("train_iter_b50", 50 / t, "examples/s", t, 50 * (STEPS * 2 + 3) * FWD_FLOP / t / 1e9)
    for n, x in [(50, x50), (256, x256)]:
        name = f"inference_b{n}"
        if want(name):
            def infer():
                with torch.no_grad():
                    model(x)

            t = timed(secs, infer)
            row(name, n / t, "images/s", t, n / t * FWD_FLOP / 1e9)


if __name__ == "__main__":
    main()
