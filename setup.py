"""The one thing pyproject.toml cannot say: the optional compiled step accounting.

``pip install stallwatch`` is pure Python. ``STALLWATCH_COMPILE=1 pip install stallwatch``
(from the sdist or a checkout; a C compiler and the Python headers needed) also builds
``stallwatch._cstep``, the compiled twin of ``stallwatch/loop/steps.py``. The build is
optional: where it fails, pip says so and installs the pure package, which runs the same.
It is not built for a free-threaded CPython: its records rely on the GIL.
"""

import os
import sysconfig

from setuptools import Extension, setup

ext_modules = []
asked = os.environ.get("STALLWATCH_COMPILE", "") not in ("", "0")
free_threaded = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))  # it relies on the GIL
if asked and not free_threaded:
    ext_modules.append(Extension("stallwatch._cstep", ["stallwatch/_cstep.c"], optional=True))

setup(ext_modules=ext_modules)
