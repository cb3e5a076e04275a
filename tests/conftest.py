"""Shared pytest set-up: the collection import path and the test markers."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
# Imported for its side effect: makes ansible_collections.kpatch.livepatch importable.
import _bootstrap  # noqa: E402,F401  pylint: disable=unused-import,wrong-import-position

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
