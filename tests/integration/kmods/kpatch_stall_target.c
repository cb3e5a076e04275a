// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * kpatch_stall_target - a module whose kernel thread sleeps inside a function on purpose.
 *
 * Test fixture for kpatch.livepatch: while the "hold" parameter is 1, the thread "kpatch_stall"
 * never leaves kpatch_stall_wait(), so a livepatch that replaces that function cannot finish its
 * transition (the thread is woken by the kernel's periodic nudges and goes straight back to
 * sleep in the same frame).  Writing 0 to /sys/module/kpatch_stall_target/parameters/hold lets
 * it out.  /proc/kpatch_stall_target prints kpatch_stall_value(), which the patch also replaces,
 * so the patch's effect is visible.
 */
#include <linux/module.h>
#include <linux/kthread.h>
#include <linux/proc_fs.h>
#include <linux/seq_file.h>
#include <linux/sched.h>
#include <linux/delay.h>

static bool hold = true;
module_param(hold, bool, 0644);
MODULE_PARM_DESC(hold, "keep the thread inside kpatch_stall_wait()");

static struct task_struct *stall_thread;
static struct proc_dir_entry *proc_entry;

noinline const char *kpatch_stall_value(void)
{
	return "original";
}

/* The function a livepatch replaces: the thread stays in this frame while hold is set. */
noinline void kpatch_stall_wait(void)
{
	while (READ_ONCE(hold) && !kthread_should_stop())
		schedule_timeout_interruptible(HZ / 5);
}

static int stall_fn(void *unused)
{
	while (!kthread_should_stop()) {
		kpatch_stall_wait();
		schedule_timeout_interruptible(HZ / 5);
	}
	return 0;
}

static int stall_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", kpatch_stall_value());
	return 0;
}

static int __init stall_init(void)
{
	proc_entry = proc_create_single("kpatch_stall_target", 0444, NULL, stall_proc_show);
	if (!proc_entry)
		return -ENOMEM;
	stall_thread = kthread_run(stall_fn, NULL, "kpatch_stall");
	if (IS_ERR(stall_thread)) {
		proc_remove(proc_entry);
		return PTR_ERR(stall_thread);
	}
	return 0;
}

static void __exit stall_exit(void)
{
	kthread_stop(stall_thread);
	proc_remove(proc_entry);
}

module_init(stall_init);
module_exit(stall_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kpatch.livepatch test fixture: a thread sleeping in a patchable function");
