"""CT reconstruction with 3D Gaussians (3DGR-CT), with zero-shot MedGMAE initialisation (paper 4.2, 5.2).

    projectors.py     parallel-beam and cone-beam forward projectors in torch, with exact adjoints
    fbp.py            filtered back-projection (parallel) and FDK (cone)
    volume.py         reading a CT volume, the pretraining window, simulated (noisy) projections
    gaussian_field.py the fitted Gaussians: parameters, per-parameter learning rates, densify / prune
    initialisers.py   `fbp` (3DGR's baseline) and `medgmae` / `medgmae-star` (zero-shot decoder) inits
    metrics.py        3D PSNR and SSIM at data range 1
    fit.py            the fitting loop and its records (PSNR/SSIM curves, iterations to thresholds)
    plots.py          curve and slice PNGs
    cli.py            the `medgmae_reconstruct` command
"""
import medgmae_plans  # noqa: F401  (first: it sets OpenMP's wait policy before torch loads)

from .projectors import ConeBeamProjector, ParallelBeamProjector, make_projector

__all__ = ["ParallelBeamProjector", "ConeBeamProjector", "make_projector"]
