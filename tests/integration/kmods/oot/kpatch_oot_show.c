// SPDX-License-Identifier: GPL-2.0-or-later
/* The function the out-of-tree patch replaces; kpatch_oot_count is the module's own data. */
#include <linux/seq_file.h>

static unsigned long kpatch_oot_count;

int kpatch_oot_show(struct seq_file *m, void *v)
{
	kpatch_oot_count++;
	seq_printf(m, "kpatch_oot original %lu\n", kpatch_oot_count);
	return 0;
}
