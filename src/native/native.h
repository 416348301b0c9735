/* serentak._os._native: what Python cannot do by itself.
 *
 * module.c  module definition; collects the functions and types below
 * proc.c    fork without the interpreter's thread warning, parent-death signal,
 *           POSIX shm names, process liveness by pid
 * sync.c    process-shared, crash-consistent Lock / RLock / Semaphore on futexes
 * ring.c    crash-consistent ring of records in shared memory (the Queue's fast path)
 */
#ifndef SERENTAK_NATIVE_H
#define SERENTAK_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* proc.c */
extern PyMethodDef serentak_proc_methods[];
int serentak_proc_init(PyObject *module);

/* sync.c */
extern PyMethodDef serentak_sync_methods[];
int serentak_sync_init(PyObject *module);

/* ring.c */
int serentak_ring_init(PyObject *module);

/* Shared by both: is the process `pid` gone (exited, zombie included)?
 * Returns 1 if gone, 0 if alive, -1 if it cannot tell (errno set). */
int serentak_pid_gone(pid_t pid);

/* This process's pid and calling thread's tid, cached and refreshed after fork. */
pid_t serentak_getpid(void);
pid_t serentak_gettid(void);

#endif
