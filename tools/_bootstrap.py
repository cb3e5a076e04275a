"""Make ``ansible_collections.kpatch.livepatch`` importable from a plain checkout.

Tools and tests run from the repository, which is not laid out under an
``ansible_collections/`` path.  A symlink tree under ``.collection/`` gives it that
layout without copying anything.
"""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(REPO, ".collection")


def ensure_collection_path() -> str:
    """Create ``.collection/ansible_collections/kpatch/livepatch`` → repo and put it on sys.path."""
    ns_dir = os.path.join(COLLECTIONS, "ansible_collections", "kpatch")
    link = os.path.join(ns_dir, "livepatch")
    if not os.path.islink(link):
        os.makedirs(ns_dir, exist_ok=True)
        try:
            os.symlink(os.path.relpath(REPO, ns_dir), link)
        except FileExistsError:
            pass
    if COLLECTIONS not in sys.path:
        sys.path.insert(0, COLLECTIONS)
    return COLLECTIONS


ensure_collection_path()
