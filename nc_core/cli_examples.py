"""The commented example specs `python -m nc_core example-spec [--kind ufm]` prints."""

EXAMPLE_SPEC = """\
# A RunSpec: one training run. A field left out takes its default (the values below are an example, not all
# defaults); a commented line shows a field's default or an example value. `python -m nc_core run this.yaml`.
# A field its run never reads (loss.gamma with ce, milestones without multistep) is refused, not ignored.
kind: train            # train | ufm (unconstrained-feature model, needs a `ufm:` section)
seed: 0                # a sweep takes its seeds from its `seeds:` list: leave this out of a sweep's base
epochs: 30
batch_size: 128
device: auto           # auto | cpu | cuda
precision: fp32        # fp32 | tf32 (a GPU's TF32 tensor cores) | bf16 (autocast)
deterministic: true    # torch.use_deterministic_algorithms; resumed runs reproduce bitwise on CPU
data:
  name: digits         # mnist | fashion_mnist | cifar10 | cifar100 | svhn | digits | gaussian
  augment: none        # none | crop_flip (per batch, on the device)
  # root: ~/data       # where the torchvision datasets lie (default NCSWEEP_DATA_ROOT)
  # download: false    # true lets torchvision fetch a missing dataset
  # per_class: 100     # first n samples of each class
  # imbalance_factor: 0.1   # n_k = floor(n_max·f^(k/(K−1)))
  # class_counts: [500, 250, 100, 50, 50, 50, 50, 50, 50, 50]   # explicit train counts, one per class
  # train_size: 1000   # a seeded random subset of the train split
  # test_size: 450     # digits and gaussian only
  # random_labels: false    # seeded permutation of the train labels
  # label_noise: 0.0   # fraction of train labels redrawn uniformly over the K classes
model:
  name: mlp            # mlp | resnet18 | resnet34 | resnet50 | wide_resnet50 | vgg11..vgg19
  width: 64            # MLP hidden units (default 128); ResNet/VGG channel multiplier (default 1)
  depth: 3
  # feature_dim: 10    # d (default: the architecture's natural width)
  # batch_norm: true
  # stem: cifar        # ResNets: cifar (3x3) | imagenet (7x7 + maxpool)
  # temperature: 10.0  # features = τ·h/‖h‖ (default: off)
head:
  name: learned        # learned | fixed_etf | implicit_etf
  bias: true
  depth_linear: 1      # deep-linear head: bias-free layers before the classifier
  # hidden: 64         # width of those layers (default d; depth_linear > 1 only)
  # delta: 1.0e-3      # implicit_etf: proximal weight δ
loss:
  name: ce             # ce | mse | rescaled_mse | focal | label_smoothing
  # target_scale: 1.0  # mse: targets = scale·one-hot (nc_loss: 15)
  # M: 1.0             # rescaled_mse: target value
  # k: 1.0             # rescaled_mse: true-class weight (the MSE paper's α)
  # gamma: 3.0         # focal: γ
  # alpha: 0.05        # label_smoothing: α
optim:
  name: sgd            # sgd | adam | adamw | lbfgs
  lr: 0.05
  momentum: 0.9        # sgd only (adam/adamw: betas 0.9, 0.999)
  # nesterov: false    # sgd
  # history_size: 10   # lbfgs
  weight_decay: 5.0e-4
  sep_decay: false     # true: λ_W = weight_decay on the head only, λ_H = feature_decay on features
  feature_decay: 1.0e-4
  # grad_clip: 2.0
schedule:
  name: multistep      # constant | step | multistep | cosine
  milestones: [0.5, 0.75]   # multistep: epochs (>= 1) or fractions of training (< 1)
  gamma: 0.1           # step and multistep: the LR factor at each drop
  # step_size: 40      # step: epochs between drops
eval:
  every: 5             # NC metrics every n epochs (the last epoch always)
  # epochs: [1, 2, 5, 10, 30]   # an explicit list instead
  # log_points: 20     # ~n log-spaced epochs instead
  splits: [train, test]
checkpoint:
  every: 5
  keep_last: 2         # null keeps every checkpoint (needed to validate old epochs later)
"""

EXAMPLE_UFM_SPEC = """\
# A UFM RunSpec: free features H and a (deep) linear classifier optimised directly, full batch. Only seed,
# device, deterministic, checkpoint.keep_last and the ufm section apply; `python -m nc_core run this.yaml`.
kind: ufm
seed: 0                # a sweep takes its seeds from its `seeds:` list: leave this out of a sweep's base
device: auto           # auto | cpu | cuda
ufm:
  class_counts: [100, 100, 100, 100]   # samples per class: unequal counts make an imbalanced UFM
  dim: 64              # feature dimension d
  depth_linear: 1      # linear layers of the classifier (bias-free ones before the last)
  bias: true           # GOF metrics need bias: false
  lambda_w: 5.0e-4     # weight decay on the classifier
  lambda_h: 5.0e-4     # weight decay on the features
  lr: 0.1
  momentum: 0.9
  iterations: 30000
  eval_every: 1000     # NC metrics (and a checkpoint) every n iterations, and at the last
checkpoint:
  keep_last: 2
"""
