/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The fixture module kpatch_cb_target's own tracepoint (#19 item 4): its key (and its static
 * call key) live in that module, so a patch of a function firing it leaves it inert.
 */
#undef TRACE_SYSTEM
#define TRACE_SYSTEM kpatch_cb

#if !defined(_KPATCH_CB_TRACE_H) || defined(TRACE_HEADER_MULTI_READ)
#define _KPATCH_CB_TRACE_H

#include <linux/tracepoint.h>

TRACE_EVENT(kpatch_cb_read,
	TP_PROTO(int pid),
	TP_ARGS(pid),
	TP_STRUCT__entry(__field(int, pid)),
	TP_fast_assign(__entry->pid = pid;),
	TP_printk("pid=%d", __entry->pid)
);

#endif /* _KPATCH_CB_TRACE_H */

#undef TRACE_INCLUDE_PATH
#define TRACE_INCLUDE_PATH .
#undef TRACE_INCLUDE_FILE
#define TRACE_INCLUDE_FILE kpatch_cb_trace
#include <trace/define_trace.h>
