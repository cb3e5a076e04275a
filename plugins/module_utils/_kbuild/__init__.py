# -*- coding: utf-8 -*-
"""Kernel build helpers: tree preparation, single-object builds, distro locations.

* ``tree``        prepare a configured tree per release (cached), build single objects;
* ``patching``    apply patches with the guarantee the tree is pristine afterwards;
* ``objects``     changed files -> objects to rebuild, and whether they link into vmlinux or a module;
* ``compiler``    refuse a compiler other than the kernel's;
* ``structsizes`` special-section struct sizes from vmlinux DWARF;
* ``distro``      per-distribution source/config/debuginfo locations and commands;
* ``kmod``        link engine output objects and the ``kmod/`` hook into a patch module;
* ``steplog``     the step log, command runner and ``KbuildError``.
"""
