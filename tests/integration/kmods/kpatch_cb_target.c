// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * kpatch_cb_target - a module whose static a patch's callback reads (#19 item 3).
 *
 * Test fixture for kpatch.livepatch: /proc/kpatch_cb_target prints kpatch_cb_target_show()'s
 * text and the static cb_target_magic (a parameter, so gcc keeps it a variable of this module:
 * only a livepatch relocation against this module reaches it from a patch).  The patched
 * variant (made by the test) changes the text and adds a post-patch callback reading the static.
 * /proc/kpatch_cb_debug prints kpatch_cb_debug_show()'s text, a function with a pr_debug() (a
 * jump label keyed in this module's dynamic-debug table) and this module's own tracepoint
 * kpatch_cb_read (kpatch_cb_trace.h), for the #19 item 4 test.
 */
#include <linux/module.h>
#include <linux/proc_fs.h>
#include <linux/sched.h>
#include <linux/seq_file.h>

#define CREATE_TRACE_POINTS
#include "kpatch_cb_trace.h"

static int cb_target_magic = 4242;
module_param(cb_target_magic, int, 0444);
MODULE_PARM_DESC(cb_target_magic, "the value the patch's callback reports");

static struct proc_dir_entry *proc_entry, *debug_entry;

static noinline int kpatch_cb_target_show(struct seq_file *m, void *v)
{
	seq_printf(m, "cb_target original %d\n", cb_target_magic);
	return 0;
}

static noinline int kpatch_cb_debug_show(struct seq_file *m, void *v)
{
	pr_debug("kpatch_cb_debug_show read by %d\n", current->pid);
	trace_kpatch_cb_read(current->pid);
	seq_puts(m, "cb_debug original\n");
	return 0;
}

static int __init cb_target_init(void)
{
	proc_entry = proc_create_single("kpatch_cb_target", 0444, NULL, kpatch_cb_target_show);
	debug_entry = proc_create_single("kpatch_cb_debug", 0444, NULL, kpatch_cb_debug_show);
	if (!proc_entry || !debug_entry) {
		proc_remove(proc_entry);
		proc_remove(debug_entry);
		return -ENOMEM;
	}
	return 0;
}

static void __exit cb_target_exit(void)
{
	proc_remove(debug_entry);
	proc_remove(proc_entry);
}

module_init(cb_target_init);
module_exit(cb_target_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kpatch.livepatch test fixture: a static read by a patch callback");
