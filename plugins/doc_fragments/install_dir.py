# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0 or later; by its "any later version" clause that includes
# version 3 (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""Documentation fragment: the install directory shared by kpatch, kpatch_info and the target role."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """The O(install_dir) option, the same for every module that reads or writes installed patches."""

    DOCUMENTATION = r"""
options:
  install_dir:
    description:
      - Directory holding installed modules, one subdirectory per kernel release.
      - The boot service of the P(kpatch.livepatch.target#role) role loads from the directory that role
        was given (its C(kpatch_target_install_dir)); use the same value here.
    type: path
    default: /var/lib/kpatch
"""
