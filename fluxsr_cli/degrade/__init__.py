"""Real-world degradation: the Real-ESRGAN second-order pipeline that makes LR inputs from HQ images.

``kernels`` (pure blur kernels), ``ops`` (blur, resize, noise, JPEG), ``config`` (frozen settings),
``pipeline`` (draw and apply, :func:`degrade`) and ``folder`` (a folder of images, behind
``fluxsr degrade``). Open ``pipeline.py`` first. Imports the images wing and the shared ground;
importing this package imports nothing heavy: import the submodules you need.
"""
