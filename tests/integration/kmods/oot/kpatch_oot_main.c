// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * kpatch_oot: a small out-of-tree module for the kpatch_build tests.  It creates
 * /proc/kpatch_oot, whose show function lives in the other object (kpatch_oot_show.c),
 * so a patch to that object is a patch to a composite module built outside the tree.
 */
#include <linux/module.h>
#include <linux/proc_fs.h>
#include <linux/seq_file.h>

int kpatch_oot_show(struct seq_file *m, void *v);

static int __init kpatch_oot_init(void)
{
	if (!proc_create_single("kpatch_oot", 0444, NULL, kpatch_oot_show))
		return -ENOMEM;
	return 0;
}

static void __exit kpatch_oot_exit(void)
{
	remove_proc_entry("kpatch_oot", NULL);
}

module_init(kpatch_oot_init);
module_exit(kpatch_oot_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kpatch.livepatch test: an out-of-tree module to live patch");
