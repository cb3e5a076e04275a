// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Every kpatch-macros.h helper used once, the way a kpatch patch uses them;
 * compiled against real kernel headers to prove existing patches build.
 */
#include <linux/module.h>
#include <linux/static_call.h>
#include <linux/syscalls.h>

#include "kpatch-macros.h"

static int macros_helper(int x)
{
	KPATCH_PRINTK("macros_helper %d\n", x);
	KPATCH_PRINTK_DEFERRED("macros_helper deferred %d\n", x);
	return x + 1;
}
KPATCH_IGNORE_FUNCTION(macros_helper);
KPATCH_IGNORE_SECTION(".discard.kpatch_test");
KPATCH_FORCE_UNSAFE(macros_helper);

static int macros_target(int x) { return x * 2; }
DEFINE_STATIC_CALL(macros_call, macros_target);

int macros_use_static_call(int x)
{
	return KPATCH_STATIC_CALL(macros_call)(macros_helper(x));
}

KPATCH_SYSCALL_DEFINE1(kpatch_macros_test, int, value)
{
	return value + 1;
}
