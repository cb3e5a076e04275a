# -*- coding: utf-8 -*-
"""ELF64 model, reader and writer for relocatable objects and kernel modules."""
