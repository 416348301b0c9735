/* serentak._os._native: what Python cannot do by itself.
 *
 * module.c  module definition; collects the functions and types below
 * proc.c    fork without the interpreter's thread warning, parent-death signal,
 *           POSIX shm names, process liveness by pid
 * sync.c    process-shared, crash-consistent Lock / RLock / Semaphore on futexes
 * ring.c    crash-consistent ring of records in shared memory (the Queue's fast path)
 * guarded.c the synchronized wrappers' base: a ctypes object read and written
 *           under its lock in one call
 * ndalloc.c numpy's big arrays allocated in shared segments, in a pool worker
 */
#ifndef SERENTAK_NATIVE_H
#define SERENTAK_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdatomic.h>
#include <stdint.h>

/* proc.c */
extern PyMethodDef serentak_proc_methods[];
int serentak_proc_init(PyObject *module);

/* sync.c */
extern PyMethodDef serentak_sync_methods[];
int serentak_sync_init(PyObject *module);
int serentak_is_semlock(PyObject *obj);
int serentak_semlock_acquire(PyObject *lock);
int serentak_semlock_release(PyObject *lock);
int serentak_semlock_held_rlock(PyObject *lock);

/* guarded.c */
int serentak_guarded_init(PyObject *module);

/* ndalloc.c */
extern PyMethodDef serentak_ndalloc_methods[];
int serentak_ndalloc_init(PyObject *module);

/* ints.c */
extern PyMethodDef serentak_ints_methods[];

/* ring.c */
int serentak_ring_init(PyObject *module);

/* Shared by both: is the process `pid` gone (exited, zombie included)?
 * Returns 1 if gone, 0 if alive, -1 if it cannot tell (errno set). */
int serentak_pid_gone(pid_t pid);

/* This process's pid and calling thread's tid, cached and refreshed after fork. */
pid_t serentak_getpid(void);
pid_t serentak_gettid(void);

/* The layout of a lock word, the same for the Locks (sync.c), the ring's
 * reader and writer locks (ring.c) and the Queue's writer lock (through the
 * module constants PID_MASK and WAITERS): 0 when free, else the owner's pid,
 * with WAITERS set once someone sleeps on it. */
#define SERENTAK_PID_MASK 0x3fffffffu
#define SERENTAK_WAITERS 0x80000000u

/* How long a waiter on a shared word sleeps at once before it looks for a
 * dead owner (and lets the main thread see a signal another thread took).
 * Python reads it as WAIT_SLICE_NS (serentak._os.waiting.SIGNAL_SPAN). */
#define SERENTAK_WAIT_SLICE_NS 50000000L
#define SERENTAK_WAIT_SLICE (SERENTAK_WAIT_SLICE_NS / 1e9)

/* Lock words name their owner by pid; beside each word, a stamp word holds
 * the owner's start time (clock ticks since boot, low 32 bits, never 0), so
 * that a pid reused after the owner died is not taken for the owner. The
 * owner writes its stamp right after taking the word and clears it right
 * before releasing it: a stamp of 0 means "not written", and is trusted as
 * alive (the pid alone then decides).
 *
 * serentak_start_stamp: this process's stamp (cached, refreshed after fork).
 * serentak_owner_gone: 1 if `pid` has exited or is now another process than
 *     the one `stamp` names, 0 if alive, -1 if it cannot tell.
 * serentak_take_over: `word` was seen holding `seen` (owner pid | flags):
 *     if that owner is gone, replace it by `desired` (our pid | flags) and put
 *     our stamp in `stamp`; returns 1 if taken. One CAS decides, so two
 *     waiters noticing the same death cannot both take over. */
uint32_t serentak_start_stamp(void);
int serentak_owner_gone(pid_t pid, uint32_t stamp);
int serentak_take_over(_Atomic uint32_t *word, _Atomic uint32_t *stamp, uint32_t seen,
                       uint32_t pid_mask, uint32_t desired);

#endif
