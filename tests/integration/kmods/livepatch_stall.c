// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * livepatch_stall - a livepatch for kpatch_stall_target, whose transition stalls while that
 * module's thread is held inside kpatch_stall_wait().
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>

static const char *livepatch_stall_value(void)
{
	return "patched";
}

static void livepatch_stall_wait(void)
{
}

static struct klp_func funcs[] = {
	{ .old_name = "kpatch_stall_value", .new_func = livepatch_stall_value, },
	{ .old_name = "kpatch_stall_wait", .new_func = livepatch_stall_wait, },
	{ }
};

static struct klp_object objs[] = {
	{ .name = "kpatch_stall_target", .funcs = funcs, },
	{ }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

static int livepatch_stall_init(void)
{
	return klp_enable_patch(&patch);
}

static void livepatch_stall_exit(void)
{
}

module_init(livepatch_stall_init);
module_exit(livepatch_stall_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("kpatch.livepatch test fixture: a patch whose transition stalls");
