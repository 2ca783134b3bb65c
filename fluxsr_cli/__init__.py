"""fluxsr: one-step real-world image super-resolution with FLUX (FluxSR, ICML 2025).

The library is the product; the ``fluxsr`` command (``cli/``) is a thin layer over it. The code
lives in wings, each importing only the ones below it::

    cli/        the command line
    train/      teacher pairs and Flow Trajectory Distillation
    demo/       the web page, ``fluxsr demo`` (beside train/: neither imports the other)
    upscale/    the one-step restore, tiling, files and folders
    quality/    metrics (PSNR, SSIM, LPIPS, ...)       degrade/  the Real-ESRGAN degradation
    images/     reading and writing photos            model/    loading and calling FLUX

and, beneath them all, the shared ground at this level: ``errors``, ``progress``, ``configs``,
``atomic``, ``processes``, ``environment``. The most used entry points can be imported from here
(``from fluxsr_cli import load_upscaler, ModelOptions, UpscaleOptions``); importing this package
does no work: heavy libraries (torch, diffusers) load when a name that needs them is first used.
"""

__version__ = "0.1.0"

_LAZY = {  # name -> the module that defines it, imported on first use
    "load_upscaler": "fluxsr_cli.upscale.restore",
    "Upscaler": "fluxsr_cli.upscale.restore",
    "ModelOptions": "fluxsr_cli.upscale.options",
    "UpscaleOptions": "fluxsr_cli.upscale.options",
    "read_image": "fluxsr_cli.images.reading",
    "write_image": "fluxsr_cli.images.writing",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fluxsr_cli' has no attribute {name!r}")
