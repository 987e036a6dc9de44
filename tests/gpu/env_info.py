#!/usr/bin/env python3
"""One line of version info for the check header. Creates no CUDA context."""

import platform


def ver(mod, attr="__version__"):
    try:
        m = __import__(mod)
        return str(getattr(m, attr, "?"))
    except Exception as e:
        return "missing(%s)" % type(e).__name__


parts = ["python %s" % platform.python_version()]
try:
    import torch

    parts.append("torch %s (cuda %s)" % (torch.__version__, torch.version.cuda))
except Exception as e:
    parts.append("torch missing(%s)" % type(e).__name__)
parts.append("cupy %s" % ver("cupy"))
try:
    from importlib.metadata import version

    parts.append("nvidia-ml-py %s" % version("nvidia-ml-py"))
except Exception:
    parts.append("pynvml %s" % ver("pynvml"))
print(" | ".join(parts))
