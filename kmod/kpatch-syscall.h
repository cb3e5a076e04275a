/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * kpatch-syscall.h - KPATCH_SYSCALL_DEFINEn: patchable system call definitions
 *
 * Copyright: kpatch.livepatch contributors
 *
 * Why: SYSCALL_DEFINEn puts the body in an `inline` __do_sys<name>(), and the
 * kernel's `inline` implies notrace, so the function carrying the body has no
 * ftrace entry and cannot be live-patched.  Replacing SYSCALL_DEFINEn(name, ...)
 * with KPATCH_SYSCALL_DEFINEn(name, ...) in the patched source renames the
 * body function to __kpatch_do_sys<name>: the engine sees a new function,
 * inlined into the (traceable) __x64_sys<name>/__se_sys<name> wrappers, and
 * patches those.  The syscall metadata and ftrace event records that
 * SYSCALL_DEFINE would emit are replaced by placeholders the engine is told
 * to ignore, since the originals already exist in the running kernel.
 *
 * The wrapper layouts mirror the kernel's own: x86-64 (v5.7+, which includes
 * every kernel this collection builds for) and the generic definition.
 */
#ifndef _KPATCH_SYSCALL_H_
#define _KPATCH_SYSCALL_H_

#include <linux/syscalls.h>

/* __kpatch_section and KPATCH_IGNORE_SECTION: a patch may include this header alone. */
#include "kpatch-macros.h"

#define KPATCH_SYSCALL_METADATA(sname)						\
	static struct syscall_metadata __used					\
		__kpatch_section("__syscalls_metadata")				\
		*__p_syscall_meta_##sname = NULL;				\
	KPATCH_IGNORE_SECTION("__syscalls_metadata");				\
	static struct trace_event_call __used					\
		__kpatch_section("_ftrace_events")				\
		*__event_enter_##sname = NULL;					\
	KPATCH_IGNORE_SECTION("_ftrace_events")

#define KPATCH_SYSCALL_DEFINE1(name, ...) KPATCH_SYSCALL_DEFINEx(1, _##name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE2(name, ...) KPATCH_SYSCALL_DEFINEx(2, _##name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE3(name, ...) KPATCH_SYSCALL_DEFINEx(3, _##name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE4(name, ...) KPATCH_SYSCALL_DEFINEx(4, _##name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE5(name, ...) KPATCH_SYSCALL_DEFINEx(5, _##name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE6(name, ...) KPATCH_SYSCALL_DEFINEx(6, _##name, __VA_ARGS__)

#define KPATCH_SYSCALL_DEFINEx(x, sname, ...)					\
	KPATCH_SYSCALL_METADATA(sname);						\
	__KPATCH_SYSCALL_DEFINEx(x, sname, __VA_ARGS__)

#if defined(CONFIG_X86_64) && defined(CONFIG_ARCH_HAS_SYSCALL_WRAPPER)

/* arch/x86/include/asm/syscall_wrapper.h, body renamed */
#define __KPATCH_SYSCALL_DEFINEx(x, name, ...)					\
	static long __se_sys##name(__MAP(x, __SC_LONG, __VA_ARGS__));		\
	static inline long __kpatch_do_sys##name(__MAP(x, __SC_DECL, __VA_ARGS__)); \
	__X64_SYS_STUBx(x, name, __VA_ARGS__)					\
	__IA32_SYS_STUBx(x, name, __VA_ARGS__)					\
	static long __se_sys##name(__MAP(x, __SC_LONG, __VA_ARGS__))		\
	{									\
		long ret = __kpatch_do_sys##name(__MAP(x, __SC_CAST, __VA_ARGS__)); \
		__MAP(x, __SC_TEST, __VA_ARGS__);				\
		__PROTECT(x, ret, __MAP(x, __SC_ARGS, __VA_ARGS__));		\
		return ret;							\
	}									\
	static inline long __kpatch_do_sys##name(__MAP(x, __SC_DECL, __VA_ARGS__))

#else

/* include/linux/syscalls.h, body renamed */
#define __KPATCH_SYSCALL_DEFINEx(x, name, ...)					\
	__diag_push();								\
	__diag_ignore(GCC, 8, "-Wattribute-alias",				\
		      "Type aliasing is used to sanitize syscall arguments");	\
	asmlinkage long sys##name(__MAP(x, __SC_DECL, __VA_ARGS__))		\
		__attribute__((alias(__stringify(__se_sys##name))));		\
	ALLOW_ERROR_INJECTION(sys##name, ERRNO);				\
	static inline long __kpatch_do_sys##name(__MAP(x, __SC_DECL, __VA_ARGS__)); \
	asmlinkage long __se_sys##name(__MAP(x, __SC_LONG, __VA_ARGS__));	\
	asmlinkage long __se_sys##name(__MAP(x, __SC_LONG, __VA_ARGS__))	\
	{									\
		long ret = __kpatch_do_sys##name(__MAP(x, __SC_CAST, __VA_ARGS__)); \
		__MAP(x, __SC_TEST, __VA_ARGS__);				\
		__PROTECT(x, ret, __MAP(x, __SC_ARGS, __VA_ARGS__));		\
		return ret;							\
	}									\
	__diag_pop();								\
	static inline long __kpatch_do_sys##name(__MAP(x, __SC_DECL, __VA_ARGS__))

#endif

#endif /* _KPATCH_SYSCALL_H_ */
