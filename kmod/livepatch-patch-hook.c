// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * livepatch-patch-hook.c - turn the engine's tables into a klp_patch at load
 *
 * Copyright: kpatch.livepatch contributors
 *
 * Linked into every patch module next to the diff engine's output object.
 * At init it reads
 *   - .kpatch.funcs                 one struct kpatch_patch_func per function
 *   - .kpatch.callbacks.<kind>      the author's KPATCH_*_CALLBACK records
 *   - .kpatch.force                 KPATCH_FORCE_UNSAFE records (see below)
 * groups functions and callbacks by object name ("vmlinux" or a module),
 * builds the NULL-terminated klp_object / klp_func arrays the livepatch core
 * wants, and calls klp_enable_patch().  The arrays live until module exit:
 * the livepatch core keeps pointers into them for the life of the patch.
 *
 * Atomic replace: on by default like kpatch; build with -DKLP_REPLACE=0 or
 * load with replace=0 to stack this patch on top of the ones already loaded.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/version.h>

#include "kpatch-patch.h"

/*
 * Livepatch must apply the module's vmlinux relocations before its .altinstructions and
 * __jump_table are processed: v5.8, RHEL 8.4 (4.18.0-284).  Older kernels run jump labels
 * with a zero key and alternatives unrelocated.  (The build refuses them earlier, in
 * _kbuild/distro.py; this is the backstop for trees it did not plan.)
 */
#if defined(RHEL_RELEASE_CODE)
# if RHEL_RELEASE_CODE < RHEL_RELEASE_VERSION(8, 4)
#  error "kpatch.livepatch needs RHEL 8.4 (4.18.0-284) or later: older livepatch relocates after jump labels"
# endif
#elif LINUX_VERSION_CODE < KERNEL_VERSION(5, 8, 0)
# error "kpatch.livepatch needs Linux 5.8 or later: older livepatch relocates after jump labels and alternatives"
#endif

#ifndef KLP_REPLACE
#define KLP_REPLACE 1
#endif

static bool replace = KLP_REPLACE;
module_param(replace, bool, 0444);
MODULE_PARM_DESC(replace, "replace all earlier live patches atomically (default from KLP_REPLACE)");

extern struct kpatch_patch_func __kpatch_funcs[], __kpatch_funcs_end[];
extern struct kpatch_pre_patch_callback __kpatch_callbacks_pre_patch[], __kpatch_callbacks_pre_patch_end[];
extern struct kpatch_post_patch_callback __kpatch_callbacks_post_patch[], __kpatch_callbacks_post_patch_end[];
extern struct kpatch_pre_unpatch_callback __kpatch_callbacks_pre_unpatch[], __kpatch_callbacks_pre_unpatch_end[];
extern struct kpatch_post_unpatch_callback __kpatch_callbacks_post_unpatch[], __kpatch_callbacks_post_unpatch_end[];
extern void *__kpatch_force_funcs[], *__kpatch_force_funcs_end[];

#define TABLE_LEN(start, end) ((size_t)((end) - (start)))

static struct klp_patch *lpatch;
static size_t lpatch_slots;

/* The object a NULL callback objname stands for: the patch's only object, else vmlinux. */
static const char *default_objname(void)
{
	const char *first = NULL;
	struct kpatch_patch_func *kfunc;

	for (kfunc = __kpatch_funcs; kfunc < __kpatch_funcs_end; kfunc++) {
		if (!first)
			first = kfunc->objname;
		else if (strcmp(first, kfunc->objname))
			return "vmlinux";
	}
	return first ? first : "vmlinux";
}

static const char *klp_name_of(const char *objname)
{
	/* livepatch spells vmlinux as a NULL object name */
	return strcmp(objname, "vmlinux") ? objname : NULL;
}

static bool same_object(const struct klp_object *lobj, const char *objname)
{
	const char *name = klp_name_of(objname);

	if (!lobj->name || !name)
		return lobj->name == name;
	return !strcmp(lobj->name, name);
}

/* Index of objname in objs[0..*nr), appending it when new. */
static size_t object_index(struct klp_object *objs, size_t *nr, const char *objname)
{
	size_t i;

	for (i = 0; i < *nr; i++)
		if (same_object(&objs[i], objname))
			return i;
	objs[*nr].name = klp_name_of(objname);
	return (*nr)++;
}

static int check_funcs(void)
{
	struct kpatch_patch_func *kfunc;

	for (kfunc = __kpatch_funcs; kfunc < __kpatch_funcs_end; kfunc++) {
		if (!kfunc->name || !kfunc->objname || !kfunc->new_addr) {
			pr_err("malformed .kpatch.funcs entry %zu (name %s, object %s)\n",
			       TABLE_LEN(__kpatch_funcs, kfunc),
			       kfunc->name ? kfunc->name : "(null)",
			       kfunc->objname ? kfunc->objname : "(null)");
			return -EINVAL;
		}
	}
	return 0;
}

/*
 * Set one callback slot of the object named by objname; a second callback of
 * the same kind for the same object is an authoring error (livepatch has one
 * slot per kind and object).
 */
#define ADD_CALLBACKS(kind, start, end)						\
	do {									\
		typeof(&start[0]) cb;						\
		for (cb = start; cb < end; cb++) {				\
			const char *on = cb->objname ? cb->objname : defname;	\
			size_t i = object_index(objs, &nr, on);			\
			if (objs[i].callbacks.kind) {				\
				pr_err("more than one " #kind " callback for %s\n", on); \
				return -EINVAL;					\
			}							\
			objs[i].callbacks.kind = cb->fn;			\
		}								\
	} while (0)

static int add_callbacks(struct klp_object *objs, size_t *nr_out)
{
	const char *defname = default_objname();
	size_t nr = *nr_out;

	ADD_CALLBACKS(pre_patch, __kpatch_callbacks_pre_patch, __kpatch_callbacks_pre_patch_end);
	ADD_CALLBACKS(post_patch, __kpatch_callbacks_post_patch, __kpatch_callbacks_post_patch_end);
	ADD_CALLBACKS(pre_unpatch, __kpatch_callbacks_pre_unpatch, __kpatch_callbacks_pre_unpatch_end);
	ADD_CALLBACKS(post_unpatch, __kpatch_callbacks_post_unpatch, __kpatch_callbacks_post_unpatch_end);
	*nr_out = nr;
	return 0;
}

/* objs was allocated with one slot per possible object, so free by the allocated count. */
static void free_patch(struct klp_patch *patch, size_t slots)
{
	size_t i;

	if (!patch)
		return;
	for (i = 0; patch->objs && i < slots; i++)
		kfree(patch->objs[i].funcs);
	kfree(patch->objs);
	kfree(patch);
}

/* Fill objs[i].funcs for every object with the functions that name it. */
static int add_funcs(struct klp_object *objs, size_t nr)
{
	struct kpatch_patch_func *kfunc;
	size_t i, n;

	for (i = 0; i < nr; i++) {
		n = 0;
		for (kfunc = __kpatch_funcs; kfunc < __kpatch_funcs_end; kfunc++)
			if (same_object(&objs[i], kfunc->objname))
				n++;
		/* livepatch requires a (possibly empty) NULL-terminated array */
		objs[i].funcs = kcalloc(n + 1, sizeof(struct klp_func), GFP_KERNEL);
		if (!objs[i].funcs)
			return -ENOMEM;
		n = 0;
		for (kfunc = __kpatch_funcs; kfunc < __kpatch_funcs_end; kfunc++) {
			if (!same_object(&objs[i], kfunc->objname))
				continue;
			objs[i].funcs[n].old_name = kfunc->name;
			objs[i].funcs[n].new_func = (void *)kfunc->new_addr;
			objs[i].funcs[n].old_sympos = kfunc->sympos;
			n++;
		}
	}
	return 0;
}

static struct klp_patch *build_patch(void)
{
	size_t nfuncs = TABLE_LEN(__kpatch_funcs, __kpatch_funcs_end);
	size_t ncallbacks = TABLE_LEN(__kpatch_callbacks_pre_patch, __kpatch_callbacks_pre_patch_end) +
		TABLE_LEN(__kpatch_callbacks_post_patch, __kpatch_callbacks_post_patch_end) +
		TABLE_LEN(__kpatch_callbacks_pre_unpatch, __kpatch_callbacks_pre_unpatch_end) +
		TABLE_LEN(__kpatch_callbacks_post_unpatch, __kpatch_callbacks_post_unpatch_end);
	struct kpatch_patch_func *kfunc;
	struct klp_patch *patch;
	size_t nr = 0;
	int ret;

	ret = check_funcs();
	if (ret)
		return ERR_PTR(ret);
	patch = kzalloc(sizeof(*patch), GFP_KERNEL);
	if (!patch)
		return ERR_PTR(-ENOMEM);
	/* at most one object per function and callback, plus the terminator */
	lpatch_slots = nfuncs + ncallbacks + 1;
	patch->objs = kcalloc(lpatch_slots, sizeof(struct klp_object), GFP_KERNEL);
	if (!patch->objs) {
		kfree(patch);
		return ERR_PTR(-ENOMEM);
	}
	patch->mod = THIS_MODULE;
	patch->replace = replace;

	for (kfunc = __kpatch_funcs; kfunc < __kpatch_funcs_end; kfunc++)
		object_index(patch->objs, &nr, kfunc->objname);
	ret = add_callbacks(patch->objs, &nr);
	if (!ret)
		ret = add_funcs(patch->objs, nr);
	if (ret) {
		free_patch(patch, lpatch_slots);
		return ERR_PTR(ret);
	}
	pr_info("%zu functions in %zu objects, %zu callbacks, replace=%d\n",
		nfuncs, nr, ncallbacks, replace);
	return patch;
}

static int __init patch_init(void)
{
	int ret;

	if (!TABLE_LEN(__kpatch_funcs, __kpatch_funcs_end) &&
	    !TABLE_LEN(__kpatch_callbacks_pre_patch, __kpatch_callbacks_pre_patch_end) &&
	    !TABLE_LEN(__kpatch_callbacks_post_patch, __kpatch_callbacks_post_patch_end)) {
		pr_err("no functions to patch and no patch callbacks: nothing to do\n");
		return -EINVAL;
	}
	if (TABLE_LEN(__kpatch_force_funcs, __kpatch_force_funcs_end))
		/* livepatch has no per-function force; the transition can be forced via sysfs */
		pr_warn("KPATCH_FORCE_UNSAFE ignored for %zu functions: use /sys/kernel/livepatch/%s/force\n",
			TABLE_LEN(__kpatch_force_funcs, __kpatch_force_funcs_end), THIS_MODULE->name);

	lpatch = build_patch();
	if (IS_ERR(lpatch)) {
		ret = PTR_ERR(lpatch);
		lpatch = NULL;
		return ret;
	}
	ret = klp_enable_patch(lpatch);
	if (ret) {
		free_patch(lpatch, lpatch_slots);
		lpatch = NULL;
	}
	return ret;
}

static void __exit patch_exit(void)
{
	/* the livepatch core has released the patch before the module can go */
	free_patch(lpatch, lpatch_slots);
}

module_init(patch_init);
module_exit(patch_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("kpatch.livepatch live patch");
