# -*- coding: utf-8 -*-
"""Target runtime: livepatch sysfs, module loading and state (standard library only)."""
