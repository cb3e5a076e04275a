/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * kpatch-patch.h - records the diff engine leaves in a patch module
 *
 * Copyright: kpatch.livepatch contributors
 *
 * The engine (plugins/module_utils/_engine/intermediate.py) writes one
 * struct kpatch_patch_func per replaced function into the ".kpatch.funcs"
 * section; kpatch-macros.h puts the callback records into
 * ".kpatch.callbacks.<kind>".  kpatch.lds brackets those sections with
 * start/end symbols so livepatch-patch-hook.c can walk them at module init.
 * The layouts below must stay byte-identical to the engine's (56 bytes per
 * function record, 16 per callback record, x86-64).
 */
#ifndef _KPATCH_PATCH_H_
#define _KPATCH_PATCH_H_

struct kpatch_patch_func {
	unsigned long new_addr;	/* the replacement function */
	unsigned long new_size;
	unsigned long old_addr;	/* informational: livepatch looks up by name */
	unsigned long old_size;
	unsigned long sympos;	/* kallsyms position among same-named symbols, 0 = unique */
	const char *name;	/* function to replace */
	const char *objname;	/* "vmlinux" or the module that defines it */
};

struct klp_object;

typedef int (*kpatch_pre_patch_call_t)(struct klp_object *obj);
typedef void (*kpatch_post_patch_call_t)(struct klp_object *obj);
typedef void (*kpatch_pre_unpatch_call_t)(struct klp_object *obj);
typedef void (*kpatch_post_unpatch_call_t)(struct klp_object *obj);

/*
 * objname is NULL as the patch author writes it; the engine fills it with the
 * object the callback's source file belongs to ("vmlinux" or the module), so
 * a module's callback runs when that module is patched, i.e. once it is
 * loaded.  The hook treats a NULL left over (a record the engine did not see)
 * as "the object this patch changes" (the only one, else vmlinux).
 */
struct kpatch_pre_patch_callback {
	kpatch_pre_patch_call_t fn;
	const char *objname;
};

struct kpatch_post_patch_callback {
	kpatch_post_patch_call_t fn;
	const char *objname;
};

struct kpatch_pre_unpatch_callback {
	kpatch_pre_unpatch_call_t fn;
	const char *objname;
};

struct kpatch_post_unpatch_callback {
	kpatch_post_unpatch_call_t fn;
	const char *objname;
};

#endif /* _KPATCH_PATCH_H_ */
