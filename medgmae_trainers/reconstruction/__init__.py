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

Importing this package imports nothing: `medgmae_reconstruct` sets OpenMP's wait policy before torch loads.
"""
