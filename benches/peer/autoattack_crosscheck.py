#!/usr/bin/env python3
"""Cross-check of `saddle eval --attacks autoattack` against an independent AutoAttack in PyTorch.

Runs AutoAttack's standard version (APGD-CE, APGD-T, FAB-T, Square; each stage only on the
images every earlier stage left correct) twice on the same model and images:

- saddle: `saddle eval --data mnist --attacks autoattack --per-example ...` (the binary given
  with --saddle, default target/release/saddle);
- PyTorch: the four attacks of torchattacks (`pip install torchattacks`), built with AutoAttack's
  published standard settings: APGD-CE 100 iterations, 1 restart, rho 0.75; APGD-T 100 iterations,
  9 target classes; FAB-T 100 iterations, 9 target classes, alpha_max 0.1, eta 1.05, beta 0.9;
  Square 5,000 queries, p_init 0.8, margin loss. (torchattacks' own `AutoAttack` wrapper leaves
  its attacks at their 10-iteration defaults, so it is not used as is.)

It prints, per stage, both robust accuracies, their difference in points, how many images the two
disagree on, and both wall-clock times with the threads each used; it writes the same as JSON
(--out). Exit status 1 when any stage differs by more than --tolerance points (default 0.5).

Usage:
  python benches/peer/autoattack_crosscheck.py --model runs/mnist-quick/model.safetensors \\
      [--limit 1000] [--eps 0.3] [--threads 2] [--out crosscheck.json] [--skip-saddle F.npy]

The model file is saddle's safetensors (PyTorch's tensor names and layouts). The MNIST test set
is read from datasets/mnist (raw idx files, as `cargo xtask download mnist` leaves them).
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

STAGES = ["apgd-ce", "apgd-t", "fab-t", "square"]


class MnistNet(nn.Module):
    """Madry et al.'s MNIST network at width scale s (s = 16: 32 and 64 filters, 1,024 units)."""

    def __init__(self, c1, c2, hidden):
        super().__init__()
        self.conv1 = nn.Conv2d(1, c1, 5, padding=2)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=2)
        self.fc1 = nn.Linear(c2 * 49, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


def load_model(path):
    from safetensors.torch import load_file

    state = {k: v.float() for k, v in load_file(path).items()}
    c1 = state["conv1.weight"].shape[0]
    c2 = state["conv2.weight"].shape[0]
    hidden = state["fc1.weight"].shape[0]
    net = MnistNet(c1, c2, hidden)
    net.load_state_dict(state)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def read_idx(path):
    data = open(path, "rb").read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def run_torchattacks(net, x, y, eps, seed, batch):
    import torchattacks as ta

    attacks = [
        ta.APGD(net, norm="Linf", eps=eps, steps=100, n_restarts=1, seed=seed, loss="ce", rho=0.75),
        ta.APGDT(net, norm="Linf", eps=eps, steps=100, n_restarts=1, seed=seed, n_classes=10),
        ta.FAB(net, norm="Linf", eps=eps, steps=100, n_restarts=1, seed=seed,
               multi_targeted=True, n_classes=10),
        ta.Square(net, norm="Linf", eps=eps, n_queries=5000, n_restarts=1, p_init=0.8,
                  loss="margin", seed=seed),
    ]
    n = len(y)
    with torch.no_grad():
        correct = torch.cat([net(x[i:i + batch]).argmax(1) == y[i:i + batch]
                             for i in range(0, n, batch)])
    cols = [correct.clone()]
    times = []
    for name, attack in zip(STAGES, attacks):
        t0 = time.perf_counter()
        idx = torch.nonzero(correct).flatten()
        for start in range(0, len(idx), batch):
            sel = idx[start:start + batch]
            adv = attack(x[sel], y[sel]).detach()
            # The threat model, checked independently of the attack's own code.
            assert float((adv - x[sel]).abs().max()) <= eps + 1e-6, f"{name} left the ball"
            assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0, f"{name} left [0, 1]"
            with torch.no_grad():
                still = net(adv).argmax(1) == y[sel]
            correct[sel] = still
        times.append(time.perf_counter() - t0)
        cols.append(correct.clone())
        print(f"torchattacks {name}: {100.0 * correct.float().mean():.2f}% "
              f"({times[-1]:.1f} s)", flush=True)
    return torch.stack(cols, 1).numpy(), times


def run_saddle(binary, model, data_dir, limit, eps, seed, threads, batch, per_example, json_out):
    cmd = [binary, "eval", "--model", model, "--data", "mnist", "--attacks", "autoattack",
           "--eps", str(eps), "--limit", str(limit), "--seed", str(seed),
           "--batch-size", str(batch), "--per-example", per_example, "--out", json_out,
           "--threads", str(threads), "--data-dir", data_dir]
    print("saddle:", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--mnist-dir", default="datasets/mnist")
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=200)
    ap.add_argument("--saddle", default="target/release/saddle")
    ap.add_argument("--skip-saddle", metavar="PER_EXAMPLE.npy",
                    help="reuse the per-example file of an earlier saddle run instead of running it")
    ap.add_argument("--saddle-seconds", type=float, help="with --skip-saddle: its measured time")
    ap.add_argument("--tolerance", type=float, default=0.5, help="points per stage")
    ap.add_argument("--out", default="autoattack-crosscheck.json")
    args = ap.parse_args()
    if args.limit <= 0 or not 0.0 <= args.eps <= 1.0:
        sys.exit("error: --limit must be positive and --eps in [0, 1]")

    torch.set_num_threads(args.threads)
    images = read_idx(os.path.join(args.mnist_dir, "t10k-images-idx3-ubyte"))[: args.limit]
    labels = read_idx(os.path.join(args.mnist_dir, "t10k-labels-idx1-ubyte"))[: args.limit]
    x = torch.from_numpy(images.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    y = torch.from_numpy(labels.astype(np.int64))
    net = load_model(args.model)

    if args.skip_saddle:
        saddle_file, saddle_secs = args.skip_saddle, args.saddle_seconds
    else:
        saddle_file = os.path.splitext(args.out)[0] + ".saddle.npy"
        saddle_secs = run_saddle(args.saddle, args.model, os.path.dirname(os.path.abspath(args.mnist_dir)), args.limit, args.eps, args.seed,
                                 args.threads, args.batch_size, saddle_file,
                                 os.path.splitext(args.out)[0] + ".saddle.json")
    ours = np.load(saddle_file)
    if ours.shape != (args.limit, len(STAGES) + 2):
        sys.exit(f"error: {saddle_file} has shape {ours.shape}; expected "
                 f"({args.limit}, {len(STAGES) + 2}) from `saddle eval --attacks autoattack`")

    t0 = time.perf_counter()
    theirs, stage_secs = run_torchattacks(net, x, y, args.eps, args.seed, args.batch_size)
    torch_secs = time.perf_counter() - t0

    rows, worst = [], 0.0
    names = ["clean"] + STAGES
    print(f"\n{'stage':<10}{'saddle %':>10}{'torch %':>10}{'diff':>8}{'images differ':>15}")
    for j, name in enumerate(names):
        a, b = 100.0 * ours[:, j].mean(), 100.0 * theirs[:, j].mean()
        differ = int((ours[:, j] != theirs[:, j]).sum())
        worst = max(worst, abs(a - b))
        rows.append({"stage": name, "saddle": a, "torchattacks": b, "diff": a - b,
                     "images_differ": differ})
        print(f"{name:<10}{a:>10.2f}{b:>10.2f}{a - b:>+8.2f}{differ:>15}")
    speed = (torch_secs / saddle_secs) if saddle_secs else None
    print(f"\ntime: saddle {saddle_secs or float('nan'):.1f} s, torchattacks {torch_secs:.1f} s "
          f"({args.threads} threads each); speed-up {speed or float('nan'):.2f}x")
    report = {
        "model": args.model, "images": args.limit, "eps": args.eps, "seed": args.seed,
        "threads": args.threads, "torch": torch.__version__, "rows": rows,
        "saddle_seconds": saddle_secs, "torchattacks_seconds": torch_secs,
        "torchattacks_stage_seconds": dict(zip(STAGES, stage_secs)), "speedup": speed,
        "max_abs_diff_points": worst, "tolerance_points": args.tolerance,
    }
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, args.out)
    np.save(os.path.splitext(args.out)[0] + ".torchattacks.npy", theirs)
    if worst > args.tolerance:
        print(f"DISAGREE: a stage differs by {worst:.2f} points (> {args.tolerance})")
        sys.exit(1)
    print(f"agree within {args.tolerance} points at every stage")


if __name__ == "__main__":
    main()
