/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * kpatch-macros.h - helpers for live patch authors
 *
 * Copyright: kpatch.livepatch contributors
 *
 * Source compatible with kpatch's header of the same name: a patch written for
 * kpatch-build that does `#include "kpatch-macros.h"` builds unchanged.  Every
 * macro only emits data into a ".kpatch.*" section; the diff engine and the
 * module hook (livepatch-patch-hook.c) give that data its meaning.
 *
 * Shadow variables (adding a field to an existing struct):
 *   livepatch cannot change the layout of live data, so attach the new field
 *   to the object with the kernel's shadow API (<linux/livepatch.h>):
 *     klp_shadow_get_or_alloc(obj, ID, size, GFP_ATOMIC, ctor, ctor_data)
 *         where the patched code first needs the field;
 *     klp_shadow_get(obj, ID) to read it;
 *     klp_shadow_free(obj, ID, dtor) where the object is freed.
 *   Patch modules are built for atomic replace: a patch retired by its
 *   replacement is never unpatched, so its post-unpatch callback does NOT run
 *   then (only when the patch is disabled by hand).  Freeing shadows there
 *   alone leaks them, or frees them under a replacement that still uses them.
 *   The replace-safe way: a replacement that keeps the field reuses the ID and
 *   the layout (the shadows carry over); one that drops it frees them in its
 *   own KPATCH_PRE_PATCH_CALLBACK / KPATCH_POST_PATCH_CALLBACK with
 *   klp_shadow_free_all(ID, dtor) (the kernel's klp_state API, 5.7+, lets a
 *   patch declare which shadow IDs it takes over).  Keep
 *   klp_shadow_free_all(ID, dtor) in a KPATCH_POST_UNPATCH_CALLBACK as well,
 *   for the disable-by-hand path.
 *   Pick IDs unique across all patches (e.g. a constant derived from the CVE
 *   number), keep the shadow's struct layout identical in later cumulative
 *   patches that reuse an ID, and remember that objects allocated before the
 *   patch was loaded have no shadow until one is attached.
 */
#ifndef _KPATCH_MACROS_H_
#define _KPATCH_MACROS_H_

#include <linux/compiler.h>
#include <linux/jiffies.h>
#include <linux/livepatch.h>
#include <linux/printk.h>
#include <linux/version.h>

#include "kpatch-patch.h"

/* kpatch's name for the object a callback receives */
typedef struct klp_object patch_object;

/* Our own spelling: works whether __section() takes a string (>= 5.10) or a bare name. */
#define __kpatch_section(name) __attribute__((__section__(name)))

/*
 * KPATCH_IGNORE_SECTION(".sec") - tell the engine not to treat changes in a
 * section as part of the patch (sections that change as a side effect of
 * another change, or that cannot be split per function).
 */
#define KPATCH_IGNORE_SECTION(_sec) \
	static char *__UNIQUE_ID(kpatch_ignore_section_) __used \
	__kpatch_section(".kpatch.ignore.sections") = _sec;

/*
 * KPATCH_IGNORE_FUNCTION(fn) - a function that changed only as a side effect
 * (e.g. a WARN's embedded line number moved) and must not be replaced.
 */
#define KPATCH_IGNORE_FUNCTION(_fn) \
	static void *__kpatch_ignore_func_##_fn __used \
	__kpatch_section(".kpatch.ignore.functions") = _fn;

/*
 * Patch callbacks, run by the livepatch core for the object the patch changes
 * (vmlinux or the module), each at most once per object:
 *   pre_patch     before the new code goes live; a non-zero return aborts the load
 *   post_patch    after the transition to the new code completed
 *   pre_unpatch   before the transition back starts
 *   post_unpatch  after the old code is live again
 * For a module the callbacks also run when that module is loaded/unloaded later.
 */
#define KPATCH_PRE_PATCH_CALLBACK(_fn) \
	static inline kpatch_pre_patch_call_t __pre_patchtest(void) { return _fn; } \
	static struct kpatch_pre_patch_callback kpatch_pre_patch_data __used \
	__kpatch_section(".kpatch.callbacks.pre_patch") = { .fn = _fn, .objname = NULL };

#define KPATCH_POST_PATCH_CALLBACK(_fn) \
	static inline kpatch_post_patch_call_t __post_patchtest(void) { return _fn; } \
	static struct kpatch_post_patch_callback kpatch_post_patch_data __used \
	__kpatch_section(".kpatch.callbacks.post_patch") = { .fn = _fn, .objname = NULL };

#define KPATCH_PRE_UNPATCH_CALLBACK(_fn) \
	static inline kpatch_pre_unpatch_call_t __pre_unpatchtest(void) { return _fn; } \
	static struct kpatch_pre_unpatch_callback kpatch_pre_unpatch_data __used \
	__kpatch_section(".kpatch.callbacks.pre_unpatch") = { .fn = _fn, .objname = NULL };

#define KPATCH_POST_UNPATCH_CALLBACK(_fn) \
	static inline kpatch_post_unpatch_call_t __post_unpatchtest(void) { return _fn; } \
	static struct kpatch_post_unpatch_callback kpatch_post_unpatch_data __used \
	__kpatch_section(".kpatch.callbacks.post_unpatch") = { .fn = _fn, .objname = NULL };

/*
 * KPATCH_FORCE_UNSAFE(fn) - kpatch's per-function override of the stack
 * safety check.  Accepted for source compatibility; livepatch has no
 * per-function equivalent, so the hook logs that it is ignored.  A stuck
 * transition is forced (at the operator's risk) with
 * echo 1 > /sys/kernel/livepatch/<patch>/force.
 */
#define KPATCH_FORCE_UNSAFE(_fn) \
	static void *__kpatch_force_func_##_fn __used \
	__kpatch_section(".kpatch.force") = _fn;

/*
 * KPATCH_PRINTK - printk without making the surrounding path cold.  printk is
 * __cold, and gcc would move code paths calling it to .text.unlikely or stop
 * inlining their callees, changing functions the patch never meant to touch.
 * The always-true jiffies test gives the call its own branch.
 */
#define KPATCH_PRINTK(_fmt, ...) \
({ \
	if (jiffies) \
		printk(_fmt, ## __VA_ARGS__); \
})

/* Same for printk_deferred (safe where printk could deadlock, e.g. under rq lock). */
#define KPATCH_PRINTK_DEFERRED(_fmt, ...) \
({ \
	if (jiffies) \
		printk_deferred(_fmt, ## __VA_ARGS__); \
})

/*
 * KPATCH_STATIC_CALL(name) - call through a static call's current target
 * instead of its trampoline.  Needed when the static call key lives in a
 * module: a patch module cannot have its static call sites updated by that
 * module, so use KPATCH_STATIC_CALL(name)(args) where the engine asks for it.
 */
#define KPATCH_STATIC_CALL(name) \
	((typeof(STATIC_CALL_TRAMP(name)) *)(STATIC_CALL_KEY(name).func))

#include "kpatch-syscall.h"

#endif /* _KPATCH_MACROS_H_ */
