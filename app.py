"""The FluxSR demo on a Hugging Face Space (or anywhere ``python app.py`` runs): ``fluxsr demo`` without a command line.

Settings come from environment variables (a Space's "Variables and secrets"): ``FLUXSR_MODEL``,
``FLUXSR_REVISION``, ``FLUXSR_BASE``, ``FLUXSR_VAE``, ``FLUXSR_OFFLINE``, ``FLUXSR_DEVICE``, ``FLUXSR_DTYPE``,
``FLUXSR_OFFLOAD``, ``FLUXSR_QUANTIZE`` (fp8 fits a 24 GB GPU), ``FLUXSR_COMPILE`` (1 or 0) and
``FLUXSR_MAX_PIXELS`` (megapixels); ``HF_TOKEN`` as a
secret for the gated FLUX.1-dev. The address is Gradio's: a Space sets ``GRADIO_SERVER_NAME=0.0.0.0``;
elsewhere the page stays on 127.0.0.1 unless you set it.
"""

import os

from fluxsr_cli.demo.service import DemoService, settings_from_env
from fluxsr_cli.demo.ui import launch, require_gradio
from fluxsr_cli.upscale.restore import load_upscaler

if __name__ == "__main__":
    require_gradio()
    model, max_pixels = settings_from_env(os.environ)
    service = DemoService(load_upscaler(model, notice=print), max_pixels=max_pixels)
    launch(service, host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
           port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
