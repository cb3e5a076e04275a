# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Exceptions raised by the ELF reader and writer.

Every message names the file (or section/symbol) and the problem, so that a module
can hand it to ``fail_json`` unchanged.
"""

from __future__ import annotations


class ElfError(Exception):
    """Base class: something about an ELF file or model is wrong."""


class ElfFormatError(ElfError, ValueError):
    """The input is not an ELF64 little-endian x86-64 file we can read, or is malformed."""


class ElfWriteError(ElfError, ValueError):
    """The in-memory model is inconsistent and cannot be serialised."""
