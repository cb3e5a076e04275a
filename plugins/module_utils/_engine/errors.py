# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""The engine's refusal: every reason a patch cannot become a livepatch is a ``PatchRejected``.

Its own module so that every pass (``special``, ``lookup``, ``verify`` ...) can raise a kind of it
without importing another pass; ``verify.PatchRejected`` remains the name callers import.
"""

from __future__ import annotations


class PatchRejected(Exception):
    """The patch cannot be turned into a livepatch; the message says which part and why."""
