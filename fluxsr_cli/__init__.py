"""fluxsr: one-step real-world image super-resolution with FLUX (FluxSR, ICML 2025).

The library is the product; the ``fluxsr`` command is a thin layer over it. Importing this package
does no work: heavy libraries (torch, diffusers) are imported by the modules that need them.
"""

__version__ = "0.1.0"
