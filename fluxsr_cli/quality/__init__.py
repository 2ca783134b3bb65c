"""The quality wing: the paper's metrics on folders of outputs (``fluxsr eval``) and LPIPS for training.

Open ``evaluate.py`` first; ``metrics.py`` holds PSNR and SSIM on Y, ``lpips.py`` LPIPS and
TV-LPIPS in plain torch. Imports the images wing.
"""
