"""Ablation of the pollen recipe: cut layer x frozen/fine-tuned x ImageNet/scratch (16 runs).

python -m imgcls.sweep --config=configs/pollen.py --sweep=configs/sweeps/pollen.py
"""

from imgcls.sweep import product


def get_sweep():
  return product(
    {"model.cut_at": ["block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu", "out_relu"]},
    {"model.freeze": ["all", ""]},
    {"model.weights": ["imagenet", ""]},
  )
