// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * A hand-made stand-in for the diff engine's output object: one replacement
 * function listed in .kpatch.funcs exactly as the engine lays it out, plus one
 * callback of each kind written with kpatch-macros.h.  Linked with the hook it
 * must replace cmdline_proc_show in the running kernel.
 */
#include <linux/module.h>
#include <linux/seq_file.h>

#include "kpatch-macros.h"

static int livepatch_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", "kpatch-livepatch hook test");
	return 0;
}

static struct kpatch_patch_func handmade_func __used __aligned(8)
	__attribute__((__section__(".kpatch.funcs"))) = {
	.new_addr = (unsigned long)livepatch_cmdline_proc_show,
	.name = "cmdline_proc_show",
	.objname = "vmlinux",
};

static int handmade_pre_patch(patch_object *obj)
{
	pr_info("handmade pre_patch %s\n", obj->name ? obj->name : "vmlinux");
	return 0;
}

static void handmade_post_patch(patch_object *obj)
{
	pr_info("handmade post_patch\n");
}

static void handmade_pre_unpatch(patch_object *obj)
{
	pr_info("handmade pre_unpatch\n");
}

static void handmade_post_unpatch(patch_object *obj)
{
	pr_info("handmade post_unpatch\n");
}

KPATCH_PRE_PATCH_CALLBACK(handmade_pre_patch);
KPATCH_POST_PATCH_CALLBACK(handmade_post_patch);
KPATCH_PRE_UNPATCH_CALLBACK(handmade_pre_unpatch);
KPATCH_POST_UNPATCH_CALLBACK(handmade_post_unpatch);
