#!/usr/bin/env python3
"""PyTorch reference for `cargo xtask bench --peer`: the CIFAR-10 wide ResNets on the CPU,
2 threads, float32, batch 128, printing the same rows as
`cargo bench -p saddle-train --bench cifar_speed`:

- cifar_pgd_step_quick_b128, cifar_pgd_step_paper_b128: one L-inf PGD step (forward, gradient
  of the summed cross-entropy with respect to the input, sign step of 2/255, projection onto
  the 8/255 ball and [0, 1]) with batch norm in evaluation mode (images x steps per second).
  The weights are constants during the attack (requires_grad off), as in saddle.
- cifar_train_iter_quick_b128, cifar_train_iter_paper_b128: one iteration of the preset's
  training recipe written out: its attack (k signed steps of size a, from a uniform random start
  in the eps-ball or not, each step projected onto the ball and [0, 1]; N-FGSM: a start in the
  2eps-ball, one step, no projection onto the eps-ball) with batch norm in the
  preset's attack mode (training mode: each batch's statistics, running statistics untouched),
  then a training-mode forward and backward of the mean cross-entropy and an SGD step with
  momentum and weight decay (on convolution and linear weights only, as saddle's optimiser)
  (examples per second).

The networks, written here from the definition of `wrn-madry-DEPTH-WIDTH` (MadryLab's
cifar10_challenge model: per-image standardisation inside the model, leaky ReLU 0.1, an
average-pooled, zero-channel-padded shortcut where the width changes, the first unit activating
before the residual branch splits off, batch-norm eps 1e-3) and `wrn-DEPTH-WIDTH` (RobustBench's
and TRADES' WideResNet: ReLU, 1x1 convolution shortcut where the width changes, batch-norm eps
1e-5). GFLOP/s counts the multiply-adds x2 of the convolutions and the linear layer, measured
with forward hooks on one image: a PGD step is 2 forward passes' worth (the forward, and the
backward to the input only), a training iteration (attack steps x 2 + 3).

The recipes come from the environment that `cargo xtask bench` sets from saddle's presets
(SADDLE_CIFAR_QUICK_RECIPE, SADDLE_CIFAR_PAPER_RECIPE: `key=value` words as printed by the
saddle bench; SADDLE_CIFAR_QUICK_ARCH, SADDLE_CIFAR_PAPER_ARCH override the network); the
defaults below are the presets `cifar-quick` and `cifar-paper` as of writing. The quick rows
are medians of timed repetitions after two warm-up calls; the paper rows one timed call after
one warm-up (minutes each); SADDLE_BENCH_CIFAR_PAPER=0 leaves them out. Environment also:
SADDLE_THREADS (2), SADDLE_BENCH_SECS (3), SADDLE_BENCH_ROWS (comma-separated subset).
"""

import math
import os
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

BATCH = 128
EPS, ALPHA = 8.0 / 255.0, 2.0 / 255.0

DEFAULT_RECIPES = {
    "quick": "preset=cifar-quick arch=wrn-22-2 training=n_fgsm epsilon=0.03137255 k=1 "
             "a=0.03137255 random_start=true n_fgsm_noise=2 attack_bn_mode=train optimizer=sgd momentum=0.9 "
             "weight_decay=0.0005 lr=0.008 batch=128",
    "paper": "preset=cifar-paper arch=wrn-madry-34-10 training=pgd epsilon=0.03137255 k=7 "
             "a=0.007843138 random_start=true attack_bn_mode=train optimizer=sgd momentum=0.9 "
             "weight_decay=0.0002 lr=0.1 batch=128",
}


class BatchNorm(nn.BatchNorm2d):
    """torch.nn.BatchNorm2d whose training mode can leave the running statistics alone (the
    attack's training mode: each batch's statistics, nothing updated)."""

    update_stats = True

    def forward(self, x):
        if self.training and not self.update_stats:
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return super().forward(x)


class Unit(nn.Module):
    def __init__(self, madry, cin, cout, stride, first, bn_eps):
        super().__init__()
        self.madry, self.cin, self.cout, self.stride = madry, cin, cout, stride
        self.bn1 = BatchNorm(cin, eps=bn_eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = BatchNorm(cout, eps=bn_eps)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        # MadryLab: activate_before_residual in the first unit; RobustBench: where width changes.
        self.activate_first = first if madry else cin != cout
        if not madry and cin != cout:
            self.convShortcut = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def act(self, h):
        return F.leaky_relu(h, 0.1) if self.madry else F.relu(h)

    def forward(self, h):
        if self.activate_first:
            h = self.act(self.bn1(h))
            short = h
        else:
            short = h
            h = self.act(self.bn1(h))
        h = self.conv1(h)
        h = self.act(self.bn2(h))
        h = self.conv2(h)
        if self.cin != self.cout:
            if self.madry:
                if self.stride > 1:
                    short = F.avg_pool2d(short, self.stride, self.stride)
                pad = (self.cout - self.cin) // 2
                short = F.pad(short, (0, 0, 0, 0, pad, pad))
            else:
                short = self.convShortcut(short)
        return h + short


class Block(nn.Module):
    def __init__(self, units):
        super().__init__()
        self.layer = nn.ModuleList(units)

    def forward(self, h):
        for u in self.layer:
            h = u(h)
        return h


class WideResNet(nn.Module):
    """`wrn-madry-DEPTH-WIDTH` or `wrn-DEPTH-WIDTH` for [n, 3, 32, 32] inputs in [0, 1]; the
    parameter names are saddle's (PyTorch state_dict names)."""

    def __init__(self, arch):
        super().__init__()
        parts = arch.split("-")
        if parts[0] != "wrn" or len(parts) not in (3, 4) or (len(parts) == 4 and parts[1] != "madry"):
            raise SystemExit(f"unknown architecture {arch!r}")
        self.madry = len(parts) == 4
        depth, width = int(parts[-2]), int(parts[-1])
        assert depth >= 10 and (depth - 4) % 6 == 0, "depth must be 6n+4"
        n = (depth - 4) // 6
        ch = [16, 16 * width, 32 * width, 64 * width]
        bn_eps = 1e-3 if self.madry else 1e-5
        self.conv1 = nn.Conv2d(3, ch[0], 3, 1, 1, bias=False)
        cin = ch[0]
        for s in (1, 2, 3):
            units = []
            for i in range(n):
                stride = 2 if (s > 1 and i == 0) else 1
                units.append(Unit(self.madry, cin, ch[s], stride, s == 1 and i == 0, bn_eps))
                cin = ch[s]
            setattr(self, f"block{s}", Block(units))
        self.bn1 = BatchNorm(cin, eps=bn_eps)
        self.fc = nn.Linear(cin, 10)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                k = m.kernel_size[0]
                m.weight.data.normal_(0.0, math.sqrt(2.0 / (k * k * m.out_channels)))

    def forward(self, x):
        if self.madry:  # tf.image.per_image_standardization
            n = x[0].numel()
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            std = x.var(dim=(1, 2, 3), keepdim=True, unbiased=False).sqrt()
            x = (x - mean) / torch.clamp(std, min=1.0 / math.sqrt(n))
        h = self.conv1(x)
        h = self.block3(self.block2(self.block1(h)))
        h = self.bn1(h)
        h = F.leaky_relu(h, 0.1) if self.madry else F.relu(h)
        return self.fc(h.mean(dim=(2, 3)))


def forward_flop(model):
    """Multiply-adds x2 per image of the convolutions and the linear layer, from the output
    shapes of one forward pass on one image."""
    total = [0]

    def conv_hook(m, _inp, out):
        k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
        total[0] += 2 * out.numel() * k

    def linear_hook(m, _inp, out):
        total[0] += 2 * out.numel() * m.in_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    was = model.training
    model.eval()
    with torch.no_grad():
        model(torch.rand(1, 3, 32, 32))
    model.train(was)
    for h in hooks:
        h.remove()
    return float(total[0])


def set_grad(model, on):
    for p in model.parameters():
        p.requires_grad_(on)


def set_update_stats(model, on):
    for m in model.modules():
        if isinstance(m, BatchNorm):
            m.update_stats = on


def project(x, x0, eps):
    return torch.min(torch.max(x, x0 - eps), x0 + eps).clamp_(0.0, 1.0)


def pgd_step(model, x, x0, y, alpha, eps):
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, x)
    with torch.no_grad():
        return project(x + alpha * g.sign(), x0, eps)


def parse_recipe(short):
    text = os.environ.get(f"SADDLE_CIFAR_{short.upper()}_RECIPE", DEFAULT_RECIPES[short])
    r = dict(w.split("=", 1) for w in text.split())
    arch = os.environ.get(f"SADDLE_CIFAR_{short.upper()}_ARCH")
    if arch:
        r["arch"] = arch
    if r["training"] not in ("pgd", "fast_fgsm", "fgsm", "n_fgsm"):
        raise SystemExit(f"preset {r['preset']}: training = {r['training']} is not written "
                         "out here (pgd, fast_fgsm, fgsm and n_fgsm are)")
    if r["optimizer"] != "sgd":
        raise SystemExit(f"preset {r['preset']}: optimizer {r['optimizer']} is not written out "
                         "here (sgd is)")
    return r


class TrainIteration:
    """One iteration of a preset's recipe on a fresh network."""

    def __init__(self, r):
        self.model = WideResNet(r["arch"])
        self.eps, self.a, self.k = float(r["epsilon"]), float(r["a"]), int(r["k"])
        self.random_start = r["random_start"] == "true"
        # N-FGSM (de Jorge et al. 2022), as saddle: a start uniform in the ball of radius
        # n_fgsm_noise * eps (2eps by default) clipped to [0, 1], k = 1 signed step of a,
        # projected onto the (n_fgsm_noise + 1)eps-ball (which such a start and a step a <= eps
        # never leave) and [0, 1]. Recipe lines of saddle benches before the key: 2.
        self.n_fgsm = r["training"] == "n_fgsm"
        self.noise = float(r.get("n_fgsm_noise", "2"))
        self.attack_train_mode = r["attack_bn_mode"] == "train"
        # Weight decay on convolution and linear weights only, as saddle's optimiser.
        decay, rest = [], []
        for name, p in self.model.named_parameters():
            (decay if name.endswith("weight") and p.dim() > 1 else rest).append(p)
        self.opt = torch.optim.SGD(
            [{"params": decay, "weight_decay": float(r["weight_decay"])},
             {"params": rest, "weight_decay": 0.0}],
            lr=float(r["lr"]), momentum=float(r["momentum"]))

    def __call__(self, x0, y):
        m = self.model
        m.train(self.attack_train_mode)
        set_update_stats(m, False)
        set_grad(m, False)
        x, radius = x0, self.eps
        if self.n_fgsm:
            r = self.noise * self.eps
            x, radius = x0 + torch.empty_like(x0).uniform_(-r, r), r + self.eps
            x = x.clamp_(0.0, 1.0)
        elif self.random_start:
            x = project(x0 + torch.empty_like(x0).uniform_(-self.eps, self.eps), x0, self.eps)
        for _ in range(self.k):
            x = pgd_step(m, x, x0, y, self.a, radius)
        set_update_stats(m, True)
        set_grad(m, True)
        m.train()
        self.opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        self.opt.step()


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


def timed_once(f):
    f()
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def row(name, rate, unit, secs, gflops):
    print(f"row={name} rate={rate:.2f} unit={unit} ms={secs * 1e3:.1f} gflops={gflops:.1f}",
          flush=True)


def main():
    threads = int(os.environ.get("SADDLE_THREADS", "2"))
    secs = float(os.environ.get("SADDLE_BENCH_SECS", "3"))
    only = os.environ.get("SADDLE_BENCH_ROWS")
    want = lambda r: only is None or r in only.split(",")
    paper_on = os.environ.get("SADDLE_BENCH_CIFAR_PAPER") != "0"
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    recipes = {s: parse_recipe(s) for s in ("quick", "paper")}
    print(f"# PyTorch {torch.__version__}, CPU, {torch.get_num_threads()} threads, "
          f"mkldnn {torch.backends.mkldnn.is_available()}, batch {BATCH}: "
          f"cifar-quick = {recipes['quick']['arch']}, cifar-paper = {recipes['paper']['arch']}",
          flush=True)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(BATCH, 3, 32, 32, generator=g)
    y = torch.arange(BATCH) % 10
    for short, r in recipes.items():
        paper = short == "paper"
        step_row, train_row = f"cifar_pgd_step_{short}_b{BATCH}", f"cifar_train_iter_{short}_b{BATCH}"
        if not (want(step_row) or want(train_row)):
            continue
        if paper and not paper_on:
            print(f"# {step_row}, {train_row} left out: SADDLE_BENCH_CIFAR_PAPER=0 (the paper's "
                  "network takes tens of seconds per PGD step and minutes per training "
                  "iteration here)", flush=True)
            continue
        probe = WideResNet(r["arch"])
        fwd = forward_flop(probe)
        print(f"# {r['arch']}: {fwd / 1e9:.4f} GFLOP per image forward (convolutions and "
              "linear layer)", flush=True)
        if want(step_row):
            model = probe.eval()
            set_grad(model, False)
            state = {"x": x.clone()}

            def step():
                state["x"] = pgd_step(model, state["x"], x, y, ALPHA, EPS)

            t = timed_once(step) if paper else timed(secs, step)
            row(step_row, BATCH / t, "images*steps/s", t, BATCH / t * 2 * fwd / 1e9)
        del probe
        if want(train_row):
            it = TrainIteration(r)
            k = int(r["k"])
            t = timed_once(lambda: it(x, y)) if paper else timed(secs, lambda: it(x, y))
            row(train_row, BATCH / t, "examples/s", t, BATCH * (k * 2 + 3) * fwd / t / 1e9)


if __name__ == "__main__":
    main()
