#!/usr/bin/env bash
# Held-out recipe search for the cifar-quick preset (run from the repository root):
# each recipe trains on the first 45,000 CIFAR-10 training images and is measured on training
# images 45,000-45,999 (natural and PGD-20 at ε = 8/255, step 2/255, random start; HELDOUT=5000:
# images 45,000-49,999, all that train_limit = 45000 holds out). A recipe with ema_decay is
# measured twice: its model file (the average) and its checkpoint (the trained weights).
set -euo pipefail
S=${SADDLE:-./target/release/saddle}
D=results/cifar10-recipe-search
for e in "$@"; do
  out=runs/recipe-search/$e
  /usr/bin/time -f "%e s wall" $S train --config $D/$e.toml --out $out --data-dir datasets --threads 2 \
    > $D/$e.train.log 2>&1
  $S eval --model $out/model.safetensors --data cifar10 --split train --offset 45000 --limit ${HELDOUT:-1000} \
    --attacks pgd20 --out $D/$e.eval.json --data-dir datasets --threads 2 > $D/$e.eval.log 2>&1
  if grep -q '^ema_decay' $D/$e.toml; then
    # With ema_decay the model file holds the average; the checkpoint, the trained weights.
    $S eval --model $out/checkpoint.safetensors --data cifar10 --split train --offset 45000 \
      --limit ${HELDOUT:-1000} --attacks pgd20 --out $D/$e.trained.eval.json --data-dir datasets \
      --threads 2 > $D/$e.trained.eval.log 2>&1
  fi
  cp $out/metrics.jsonl $D/$e.metrics.jsonl
done
