"""nnU-Net's default 3D network for a patch: the `architecture` block `nnUNetv2_plan_experiment` writes.

The `nnunet` init (Table 1's anchor row) trains the network a user of nnU-Net would get, at the patch
and spacing of our runs, so both sides see the same crops. nnU-Net's planner picks the patch from a
GPU-memory target; here the patch is given (the plans' 48^3 at 3 mm fits a CPU step), and the rest is
the planner's rule for it: pooling and kernel sizes from `get_pool_and_conv_props` (feature maps down
to 4 voxels), 32 features doubling per stage up to 320, two convolutions per stage, instance norm,
leaky ReLU.
"""
from __future__ import annotations

# nnU-Net's ExperimentPlanner defaults for 3D (UNet_base_num_features, UNet_max_features_3d, ...).
BASE_FEATURES, MAX_FEATURES, MIN_FEATURE_MAP, CONVS_PER_STAGE = 32, 320, 4, 2
NNUNET_LR = 1e-2  # nnUNetTrainer.initial_lr: SGD with Nesterov momentum 0.99, poly decay per epoch
NETWORK_CLASS = "dynamic_network_architectures.architectures.unet.PlainConvUNet"


def plainconv_arch_kwargs(spacing, patch_size) -> dict:
    """PlainConvUNet's constructor arguments for a patch (voxels) at a spacing (mm), as nnU-Net plans them."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    _, pools, kernels, _, _ = get_pool_and_conv_props(list(spacing), list(patch_size), MIN_FEATURE_MAP, 999999)
    n = len(pools)
    return {"n_stages": n, "features_per_stage": [min(BASE_FEATURES * 2 ** i, MAX_FEATURES) for i in range(n)],
            "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": kernels, "strides": pools,
            "n_conv_per_stage": [CONVS_PER_STAGE] * n, "n_conv_per_stage_decoder": [CONVS_PER_STAGE] * (n - 1),
            "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}


def plainconv_architecture(arch_kwargs: dict) -> dict:
    """The plans' `architecture` block for PlainConvUNet with these constructor arguments."""
    return {"network_class_name": NETWORK_CLASS, "arch_kwargs": dict(arch_kwargs),
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
