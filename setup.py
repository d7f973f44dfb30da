"""The one thing pyproject.toml cannot say: the optional compiled step accounting.

``pip install stallwatch`` is pure Python. ``STALLWATCH_COMPILE=1 pip install stallwatch``
(from the sdist or a checkout; a C compiler and the Python headers needed) also builds
``stallwatch._cstep``, the compiled twin of ``stallwatch/loop/steps.py``. The build is
optional: where it fails, pip says so and installs the pure package, which runs the same.
"""

import os

from setuptools import Extension, setup

ext_modules = []
if os.environ.get("STALLWATCH_COMPILE", "") not in ("", "0"):
    ext_modules.append(Extension("stallwatch._cstep", ["stallwatch/_cstep.c"], optional=True))

setup(ext_modules=ext_modules)
