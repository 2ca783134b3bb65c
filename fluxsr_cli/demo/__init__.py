"""The demo wing: ``fluxsr demo``, a local web page to upscale a photo and compare it with bicubic.

Open ``service.py`` first (:class:`~fluxsr_cli.demo.service.DemoService`: one loaded model, one job
at a time, a file in and a file out through the same code as ``fluxsr upscale``; no web code),
then ``ui.py`` (the Gradio page around it, imported only when the demo starts: ``pip install
"fluxsr[demo]"``). Imports the upscale, images and model wings; never the train wing.
"""
