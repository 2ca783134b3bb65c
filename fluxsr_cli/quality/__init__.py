"""The quality wing: the paper's metrics on folders of outputs (``fluxsr eval``) and LPIPS for training.

Open ``evaluate.py`` first; ``metrics.py`` holds PSNR and SSIM on Y, ``lpips.py`` LPIPS (AlexNet,
VGG16) and TV-LPIPS, ``dists.py`` DISTS, all in plain torch on the torchvision-layout backbones of
``backbones.py``; ``weights.py`` fetches and caches their published weights. Imports the images wing.
"""
