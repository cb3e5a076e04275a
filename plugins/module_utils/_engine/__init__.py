# -*- coding: utf-8 -*-
"""The ELF diff engine: create-diff-object's passes, one module per pass family."""
