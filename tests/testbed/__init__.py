"""The real-kernel testbed (kernels, VMs, images, fleets).

Importing it puts the collection on ``sys.path`` (``tools/_bootstrap.py``), so that
``python -m tests.testbed.<tool>`` (``make demo``) and the tests share the collection's own code
(e.g. the Debian archive of the machine's apt sources, from ``_kbuild/toolroot.py``).
"""

import os
import sys

_TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tools")
if _TOOLS not in sys.path:
    sys.path.insert(0, _TOOLS)
import _bootstrap  # noqa: E402,F401  pylint: disable=unused-import,wrong-import-position
