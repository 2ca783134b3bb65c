"""The model wing: what loads and calls FLUX (the transformer, the VAE, the checkpoint and its LoRA).

Open ``student.py`` first (v_theta: the transformer called on latents at a flow time), then
``flows.py`` (the straight flows of docs/method.md) and ``loading.py`` (weights from disk or the Hub).
Imports only the shared ground at the package's top level.
"""
