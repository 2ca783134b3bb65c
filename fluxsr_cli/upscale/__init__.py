"""The upscale wing: the product's main job, one LR photo to one x4 photo, alone or by the folder.

Open ``restore.py`` first (the one-step restore and :func:`load_upscaler`); ``tiling.py``,
``tiled_vae.py`` and ``budget.py`` make it work at any size, ``batch.py`` on files and folders.
Imports the model and images wings.
"""
