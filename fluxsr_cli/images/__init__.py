"""The images wing: reading and writing photos without losing their mode, bit depth or metadata.

Open ``reading.py`` first (:func:`read_image`), then ``writing.py`` (:func:`write_image`);
``metadata.py`` holds the EXIF, ICC and TIFF-tag byte work. Imports only the shared ground.
"""
