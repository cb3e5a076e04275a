"""Make ``ansible_collections.kpatch.livepatch`` importable for the tools, tests and benches.

Two layouts are possible, and neither is created at run time:

* an installed collection (``…/ansible_collections/kpatch/livepatch/tools``): its own collections
  root, three levels up, goes on ``sys.path``;
* a plain checkout: the repository commits the link
  ``playbooks/collections/ansible_collections/kpatch/livepatch -> ../../../..`` (the directory
  Ansible itself searches beside a playbook), and that ``playbooks/collections`` goes on
  ``sys.path``.  A fresh clone is therefore importable, and runnable with
  ``ansible-playbook playbooks/…``, by construction.
"""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKOUT_COLLECTIONS = os.path.join(REPO, "playbooks", "collections")


def collections_root() -> str:
    """The directory holding ``ansible_collections/kpatch/livepatch`` for this copy of the code."""
    parts = os.path.normpath(REPO).split(os.sep)
    if parts[-3:-2] == ["ansible_collections"] and parts[-2:] == ["kpatch", "livepatch"]:
        return os.sep.join(parts[:-3]) or os.sep
    link = os.path.join(CHECKOUT_COLLECTIONS, "ansible_collections", "kpatch", "livepatch")
    if not os.path.isdir(link):
        raise RuntimeError(f"{link} is missing: this checkout lacks the committed collection link "
                           "(git checkout -- playbooks/collections restores it)")
    return CHECKOUT_COLLECTIONS


def ensure_collection_path() -> str:
    """Put the collections root on ``sys.path`` (first) and return it."""
    root = collections_root()
    if root not in sys.path:
        sys.path.insert(0, root)
    return root


ensure_collection_path()
