/* Process-shared, crash-consistent Lock / RLock / Semaphore on futexes.
 *
 * A SemLock is a view on two cache lines of shared memory (in an arena block
 * every process using the lock has mapped). All the lock's state lives there;
 * the Python object only holds the mapping open:
 *
 *     process A                 shared block                 process B
 *     SemLock --Py_buffer-->  +-------------------+  <--Py_buffer-- SemLock
 *                             | word   (futex)    |  line 0: read by waiters
 *                             | sleepers          |
 *                             | magic kind maxval |
 *                             +-------------------+
 *                             | owner_tid, depth  |  line 1: the owner's
 *                             | owner_stamp       |
 *                             | spare: 48 bytes   |  the guarded data (a Value)
 *                             +-------------------+
 *
 * Lock and RLock
 *     word = 0 when free, else the owner's pid | SERENTAK_WAITERS. Acquire is one CAS
 *     from 0; a contended acquirer spins briefly, then sets SERENTAK_WAITERS and sleeps
 *     on the word (a shared futex: no FUTEX_PRIVATE_FLAG). Release exchanges
 *     the word to 0 and makes the wake system call only if SERENTAK_WAITERS was set.
 *     owner_tid and depth are written by the owner only (RLock recursion, and
 *     _is_mine for both kinds).
 *
 * Semaphore
 *     word = the count; sleepers counts the processes asleep on it, so a
 *     release makes the wake system call only when somebody sleeps.
 *
 * Crash consistency
 *     Because the word names the owner's pid, a waiter can tell that the owner
 *     died: every SERENTAK_WAIT_SLICE_NS its sleep ends, and if the owner has exited (a
 *     zombie counts), or its pid now names another process (owner_stamp,
 *     see native.h), it takes the lock over with a CAS. acquire() then
 *     succeeds but warns (LockOwnerDiedWarning, registered from Python),
 *     because the dead owner left whatever the lock guards half-updated. The
 *     slices also let a sleeper notice Ctrl-C delivered to another thread.
 *
 * Futex
 *     A bare 32-bit futex word for the Python-level Condition and Event:
 *     load, compare-exchange, add, wait, wake.
 */
#include "native.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

enum { KIND_LOCK = 0, KIND_RLOCK = 1, KIND_SEMAPHORE = 2 };

#define SERENTAK_SEM_VALUE_MAX 0x7fffffffu
/* Linux pids stay below 2**22 (PID_MAX_LIMIT); other POSIX systems lower still. */
#define STATE_MAGIC 0x53724c6bu
/* Pause instructions (about 25 ns each here, so ~5 us) a lock waiter spins
 * before sleeping. Two processes doing `with lock: counter.value += 1` on two
 * CPUs: 1.9 M increments/s without spinning (every hand-over is a futex sleep
 * and wake), 3.7 M/s with 200 spins; 1000 and more gain nothing within the
 * noise.
 *
 * The waiter polls the word first after SPIN_FIRST_GAP pauses, then at gaps
 * doubling up to SPIN_MAX_GAP (~0.8 us). Polling at every pause, the waiter
 * caught nearly every short gap between the holder's release and its next
 * acquire: the lock changed process every 2-5 increments, each time moving
 * the lock's two cache lines across CPUs, and each poll also took the word's
 * line from the holder, which then paid a miss to write it again. Polling at
 * growing gaps, it changed process 2.5-10 times less often (3,300-8,600 vs
 * 21,000-40,000 hand-overs in 2 x 100,000 increments pinned to two CPUs),
 * and a process taking the lock once while another loops on it still waited
 * a median of 3-12 us, as before (the tail, a few ms, is the scheduler's on
 * a loaded machine, the same for both policies). */
#define SPIN_LIMIT 200
#define SPIN_FIRST_GAP 8
#define SPIN_MAX_GAP 32
/* Timeouts beyond this (about 3 years) are treated as "forever". */
#define TIMEOUT_FOREVER_ABOVE 1e8

/* Waiters poll `word` while the owner works; the owner writes owner_tid and
 * depth on every RLock re-entry (a Synchronized value's accessors re-entered
 * twice per `with v.get_lock(): v.value += 1`). With all of it on one cache
 * line, every such write stole the line back from the polling waiter, and
 * the protected data, allocated next to the lock, did the same: two
 * processes incrementing a Value under its RLock ran at 0.6x the stdlib.
 * So the state spans two cache lines, the word's read by everyone and the
 * owner's written only by the owner, and the block is placed on a line
 * boundary inside a buffer one line longer than the state (the offset is
 * the same in every process, since segments are mapped page-aligned).
 *
 * The owner's line keeps its last SPARE_SIZE bytes for the data the lock
 * guards (a Value's bytes, a small Array's; see SemLock._spare): a process
 * taking the lock over from another needs the owner's line anyway, and then
 * gets the data with it, so a hand-over between processes on two CPUs moves
 * two cache lines rather than three. The owner's start stamp is on that line
 * too: it is written at every acquire and release, by the owner only, and
 * read by the others only when they look for a dead owner. */
#define CACHE_LINE 64
#define OWNER_FIELDS 16 /* owner_tid, depth, owner_stamp, and padding to 16 */
#define SPARE_SIZE (CACHE_LINE - OWNER_FIELDS)

typedef struct {
    /* line 0: read by waiters */
    _Atomic uint32_t word;
    _Atomic uint32_t sleepers;
    _Atomic uint32_t magic; /* written last by the creator */
    uint32_t kind;
    uint32_t maxvalue;
    char pad0[CACHE_LINE - 5 * sizeof(uint32_t)];
    /* line 1: written by the owner only, then the spare bytes */
    _Atomic int32_t owner_tid;
    _Atomic uint32_t depth;
    /* the owner's start stamp (see native.h), 0: unknown; written with the word, once
     * per acquisition, and read by waiters looking for a dead owner */
    _Atomic uint32_t owner_stamp;
    uint32_t pad1;
    char spare[SPARE_SIZE];
} shared_state;

_Static_assert(sizeof(shared_state) == 2 * CACHE_LINE, "two cache lines");
_Static_assert(offsetof(shared_state, spare) == CACHE_LINE + OWNER_FIELDS, "spare at the end");
/* The bytes a SemLock needs in its buffer: the state plus room to align it. */
#define SEMLOCK_SIZE (sizeof(shared_state) + CACHE_LINE)

static PyObject *owner_died_category = NULL; /* strong reference */

/* ---- futex and clock ---------------------------------------------------- */

static inline void
cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static void
monotonic_now(struct timespec *ts)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
}

static int
ts_before(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

static void
ts_add_ns(struct timespec *ts, long long ns)
{
    ts->tv_sec += (time_t)(ns / 1000000000LL);
    ts->tv_nsec += (long)(ns % 1000000000LL);
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec += 1;
        ts->tv_nsec -= 1000000000L;
    }
}

/* The end of the next sleep: SERENTAK_WAIT_SLICE_NS from now, or the deadline if sooner. */
static void
slice_end(const struct timespec *deadline, struct timespec *end)
{
    monotonic_now(end);
    ts_add_ns(end, SERENTAK_WAIT_SLICE_NS);
    if (deadline != NULL && ts_before(deadline, end)) {
        *end = *deadline;
    }
}

/* Sleep while *addr == expected, until woken or the absolute CLOCK_MONOTONIC
 * time `until` (NULL: no limit). Returns 0 (woken, or the value differed),
 * ETIMEDOUT or EINTR. Spurious returns of 0 are possible; callers re-check. */
static int
futex_wait_until(_Atomic uint32_t *addr, uint32_t expected, const struct timespec *until)
{
#ifdef __linux__
    /* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline, so a
     * wait resumed after a spurious wake does not stretch the timeout. */
    long rc = syscall(SYS_futex, addr, FUTEX_WAIT_BITSET, expected, until, NULL,
                      FUTEX_BITSET_MATCH_ANY);
    if (rc == 0 || errno == EAGAIN) {
        return 0;
    }
    return errno == EINTR ? EINTR : ETIMEDOUT;
#else
    /* No futex: poll with a backoff capped at 1 ms. Correct, not fast. */
    long backoff = 1000;
    for (;;) {
        if (atomic_load(addr) != expected) {
            return 0;
        }
        struct timespec now, nap = {0, backoff};
        monotonic_now(&now);
        if (until != NULL && !ts_before(&now, until)) {
            return ETIMEDOUT;
        }
        if (nanosleep(&nap, NULL) != 0 && errno == EINTR) {
            return EINTR;
        }
        if (backoff < 1000000) {
            backoff *= 2;
        }
    }
#endif
}

static int
futex_wake(_Atomic uint32_t *addr, int count)
{
#ifdef __linux__
    long rc = syscall(SYS_futex, addr, FUTEX_WAKE, count, NULL, NULL, 0);
    return rc < 0 ? 0 : (int)rc;
#else
    (void)addr;
    (void)count;
    return 0;
#endif
}

#define FOREVER (-1.0)

/* Parse a stdlib-style timeout: None is FOREVER, a negative number is 0. */
static int
parse_timeout(PyObject *timeout, double *seconds)
{
    *seconds = FOREVER;
    if (timeout == NULL || timeout == Py_None) {
        return 0;
    }
    double value = PyFloat_AsDouble(timeout);
    if (value == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (isnan(value)) {
        PyErr_SetString(PyExc_ValueError, "timeout must not be NaN");
        return -1;
    }
    if (value <= TIMEOUT_FOREVER_ABOVE) {
        *seconds = value < 0 ? 0 : value;
    }
    return 0;
}

/* The absolute deadline `seconds` from now; NULL for FOREVER. */
static const struct timespec *
deadline_after(double seconds, struct timespec *deadline)
{
    if (seconds == FOREVER) {
        return NULL;
    }
    monotonic_now(deadline);
    ts_add_ns(deadline, (long long)(seconds * 1e9));
    return deadline;
}

/* ---- the SemLock type --------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    shared_state *st; /* NULL until __init__ succeeds */
    Py_buffer view;   /* keeps the mapping alive as long as this object */
    int kind;
} SemLockObject;

static const char *const kind_names[] = {"Lock", "RLock", "Semaphore"};

static PyTypeObject SemLockType;

static int
check_ready(SemLockObject *self)
{
    if (self->st == NULL) {
        PyErr_SetString(PyExc_ValueError, "SemLock used before __init__");
        return -1;
    }
    return 0;
}

static inline int
lock_try(shared_state *st, uint32_t me)
{
    uint32_t expected = 0;
    return atomic_compare_exchange_strong_explicit(&st->word, &expected, me, memory_order_acquire,
                                                   memory_order_relaxed);
}

/* owner_tid first: it is on the owner's line, which the caller has in its
 * cache whenever the answer may be yes (it wrote it when it acquired), while
 * the word's line is polled by waiters. A thread re-acquiring the lock it just
 * released thus goes straight to its CAS, without first pulling the word's
 * line back from a spinning waiter for a read and then again for the write. */
static inline int
lock_is_mine(shared_state *st, uint32_t me, pid_t tid)
{
    return atomic_load_explicit(&st->owner_tid, memory_order_relaxed) == tid &&
           (atomic_load_explicit(&st->word, memory_order_relaxed) & SERENTAK_PID_MASK) == me;
}

static inline int
sem_try(shared_state *st)
{
    uint32_t count = atomic_load_explicit(&st->word, memory_order_relaxed);
    while (count > 0) {
        if (atomic_compare_exchange_weak(&st->word, &count, count - 1)) {
            return 1;
        }
    }
    return 0;
}

/* Take a lock that is free, or whose owner has exited. `flags` is SERENTAK_WAITERS
 * when other processes may be asleep on the word. Returns 1 if acquired,
 * with *dead set to the dead owner's pid (0 if the lock was simply free). */
static int
lock_take(shared_state *st, uint32_t me, uint32_t flags, pid_t *dead)
{
    *dead = 0;
    uint32_t word = atomic_load(&st->word);
    for (;;) {
        if (word == 0) {
            if (atomic_compare_exchange_strong(&st->word, &word, me | flags)) {
                return 1;
            }
            continue;
        }
        /* "Cannot tell" counts as alive: a lock must never have two owners. */
        if (serentak_take_over(&st->word, &st->owner_stamp, word, SERENTAK_PID_MASK,
                               me | (word & SERENTAK_WAITERS))) {
            *dead = (pid_t)(word & SERENTAK_PID_MASK);
            return 1;
        }
        uint32_t now = atomic_load(&st->word);
        if (now == word) {
            return 0;
        }
        word = now;
    }
}

typedef enum { WAIT_ACQUIRED, WAIT_SLICE_OVER, WAIT_INTERRUPTED } wait_status;

/* Poll the word at growing gaps (see SPIN_FIRST_GAP), SPIN_LIMIT pauses in
 * all, and take the lock (as me | flags) if it is seen free. 1 if taken. */
static int
lock_spin(shared_state *st, uint32_t me, uint32_t flags)
{
    for (int spun = 0, gap = SPIN_FIRST_GAP; spun < SPIN_LIMIT; spun += gap) {
        for (int i = 0; i < gap; i++) {
            cpu_relax();
        }
        uint32_t expected = 0;
        if (atomic_load_explicit(&st->word, memory_order_relaxed) == 0 &&
            atomic_compare_exchange_strong_explicit(&st->word, &expected, me | flags,
                                                    memory_order_acquire, memory_order_relaxed)) {
            return 1;
        }
        if (gap < SPIN_MAX_GAP) {
            gap *= 2;
        }
    }
    return 0;
}

/* Called without the GIL: sleep on a held lock until it is ours or `until`. */
static wait_status
lock_sleep(shared_state *st, uint32_t me, const struct timespec *until)
{
    for (;;) {
        uint32_t word = atomic_load(&st->word);
        if (word == 0) {
            /* We cannot know whether others still sleep, so keep SERENTAK_WAITERS:
             * at worst one needless wake at release. */
            if (atomic_compare_exchange_strong(&st->word, &word, me | SERENTAK_WAITERS)) {
                return WAIT_ACQUIRED;
            }
            continue;
        }
        if (!(word & SERENTAK_WAITERS)) {
            if (!atomic_compare_exchange_strong(&st->word, &word, word | SERENTAK_WAITERS)) {
                continue;
            }
            word |= SERENTAK_WAITERS;
        }
        int err = futex_wait_until(&st->word, word, until);
        if (err == ETIMEDOUT) {
            return WAIT_SLICE_OVER;
        }
        if (err == EINTR) {
            return WAIT_INTERRUPTED;
        }
        /* Woken by a release, we are on a CPU now: a holder that took the lock
         * back meanwhile holds it a short while, so spin for it before sleeping
         * again. Going straight back to sleep, a waiter on a lock its holder
         * re-takes at once won only if its one look fell in the holder's gap,
         * and each of its rounds cost the holder a wake system call. Keep
         * SERENTAK_WAITERS: others may sleep. */
        if (lock_spin(st, me, SERENTAK_WAITERS)) {
            return WAIT_ACQUIRED;
        }
    }
}

/* Called without the GIL: sleep on a zero semaphore until we took a unit. */
static wait_status
sem_sleep(shared_state *st, const struct timespec *until)
{
    for (;;) {
        if (sem_try(st)) {
            return WAIT_ACQUIRED;
        }
        int err = futex_wait_until(&st->word, 0, until);
        if (err == ETIMEDOUT) {
            return sem_try(st) ? WAIT_ACQUIRED : WAIT_SLICE_OVER;
        }
        if (err == EINTR) {
            return WAIT_INTERRUPTED;
        }
    }
}

/* The owner's own writes of its stamp need no fence of their own: the store
 * that clears it is ordered before the word's release by that seq_cst
 * exchange, and the store that sets it after the word's acquiring CAS, whose
 * release sequence carries the previous owner's clearing store to any waiter
 * that reads the new word. A seq_cst store here is a locked instruction (an
 * xchg on x86) on every acquire and every release: it made an uncontended
 * acquire() + release() pair cost half again as much as a semaphore's. */
#define STAMP_ORDER memory_order_relaxed

static void
lock_release_word(shared_state *st)
{
    atomic_store_explicit(&st->owner_stamp, 0, STAMP_ORDER); /* before the word: see native.h */
    uint32_t old = atomic_exchange(&st->word, 0);
    if (old & SERENTAK_WAITERS) {
        futex_wake(&st->word, 1);
    }
}

/* The lock is ours, taken from `dead`: tell the caller. If the warning is
 * turned into an exception, release first so the lock stays usable. */
static int
warn_owner_died(SemLockObject *self, pid_t dead)
{
    PyObject *category = owner_died_category ? owner_died_category : PyExc_RuntimeWarning;
    if (PyErr_WarnFormat(category, 1,
                         "%s taken over from process %d, which died holding it; "
                         "the data it guards may be inconsistent",
                         kind_names[self->kind], (int)dead) < 0) {
        atomic_store(&self->st->depth, 0);
        atomic_store(&self->st->owner_tid, 0);
        lock_release_word(self->st);
        return -1;
    }
    return 0;
}

static int
lock_acquire(SemLockObject *self, int blocking, double timeout)
{
    shared_state *st = self->st;
    uint32_t me = (uint32_t)serentak_getpid();
    pid_t tid = serentak_gettid();
    pid_t dead = 0;

    if (self->kind == KIND_RLOCK && lock_is_mine(st, me, tid)) {
        /* Only the owning thread writes depth: no locked instruction needed. */
        atomic_store_explicit(&st->depth, atomic_load_explicit(&st->depth, memory_order_relaxed) + 1,
                              memory_order_relaxed);
        return 1;
    }
    if (lock_try(st, me)) {
        goto acquired;
    }
    if (!blocking) {
        if (lock_take(st, me, 0, &dead)) {
            goto acquired;
        }
        return 0;
    }
    struct timespec deadline_storage;
    const struct timespec *deadline = deadline_after(timeout, &deadline_storage);
    if (lock_spin(st, me, 0)) {
        goto acquired;
    }
    for (;;) {
        struct timespec until;
        wait_status status;
        slice_end(deadline, &until);
        Py_BEGIN_ALLOW_THREADS
        status = lock_sleep(st, me, &until);
        Py_END_ALLOW_THREADS
        if (status == WAIT_ACQUIRED) {
            goto acquired;
        }
        if (PyErr_CheckSignals() < 0) {
            return -1;
        }
        if (status == WAIT_SLICE_OVER) {
            if (lock_take(st, me, SERENTAK_WAITERS, &dead)) {
                goto acquired;
            }
            struct timespec now;
            monotonic_now(&now);
            if (deadline != NULL && !ts_before(&now, deadline)) {
                return 0;
            }
        }
    }
acquired:
    atomic_store_explicit(&st->owner_stamp, serentak_start_stamp(), STAMP_ORDER);
    atomic_store_explicit(&st->owner_tid, tid, memory_order_relaxed);
    atomic_store_explicit(&st->depth, 1, memory_order_relaxed);
    if (dead != 0 && warn_owner_died(self, dead) < 0) {
        return -1;
    }
    return 1;
}

static int
sem_acquire(SemLockObject *self, int blocking, double timeout)
{
    shared_state *st = self->st;
    if (sem_try(st)) {
        return 1;
    }
    if (!blocking) {
        return 0;
    }
    struct timespec deadline_storage;
    const struct timespec *deadline = deadline_after(timeout, &deadline_storage);
    for (int spin = 0; spin < SPIN_LIMIT; spin++) {
        cpu_relax();
        if (sem_try(st)) {
            return 1;
        }
    }
    /* Registered before the count is checked again; release() increments
     * the count before it reads sleepers (both sequentially consistent), so
     * either it sees us or we see its unit. */
    atomic_fetch_add(&st->sleepers, 1);
    int result;
    for (;;) {
        struct timespec until;
        wait_status status;
        slice_end(deadline, &until);
        Py_BEGIN_ALLOW_THREADS
        status = sem_sleep(st, &until);
        Py_END_ALLOW_THREADS
        if (status == WAIT_ACQUIRED) {
            result = 1;
            break;
        }
        if (PyErr_CheckSignals() < 0) {
            result = -1;
            break;
        }
        struct timespec now;
        monotonic_now(&now);
        if (status == WAIT_SLICE_OVER && deadline != NULL && !ts_before(&now, deadline)) {
            result = 0;
            break;
        }
    }
    atomic_fetch_sub(&st->sleepers, 1);
    /* Leaving without a unit: a release may have woken us rather than
     * another sleeper, so hand that wake on. */
    if (result != 1 && atomic_load(&st->word) > 0 && atomic_load(&st->sleepers) > 0) {
        futex_wake(&st->word, 1);
    }
    return result;
}

/* Returns 1 acquired, 0 not (timeout or non-blocking), -1 error. `timeout`
 * is in seconds, FOREVER for none. */
static inline int
semlock_acquire_impl(SemLockObject *self, int blocking, double timeout)
{
    if (self->kind == KIND_SEMAPHORE) {
        return sem_acquire(self, blocking, timeout);
    }
    return lock_acquire(self, blocking, timeout);
}

static int
semlock_release_impl(SemLockObject *self)
{
    shared_state *st = self->st;
    switch (self->kind) {
    case KIND_LOCK: {
        /* As the stdlib's (a semaphore), any thread of any process may
         * release a Lock. */
        atomic_store_explicit(&st->owner_tid, 0, memory_order_relaxed);
        atomic_store_explicit(&st->owner_stamp, 0, STAMP_ORDER); /* before the word: see native.h */
        uint32_t old = atomic_exchange(&st->word, 0);
        if (old == 0) {
            goto too_many;
        }
        if (old & SERENTAK_WAITERS) {
            futex_wake(&st->word, 1);
        }
        return 0;
    }
    case KIND_RLOCK: {
        if (!lock_is_mine(st, (uint32_t)serentak_getpid(), serentak_gettid())) {
            PyErr_SetString(PyExc_AssertionError,
                            "attempt to release recursive lock not owned by thread");
            return -1;
        }
        uint32_t depth = atomic_load_explicit(&st->depth, memory_order_relaxed);
        if (depth > 1) {
            atomic_store_explicit(&st->depth, depth - 1, memory_order_relaxed);
            return 0;
        }
        atomic_store_explicit(&st->depth, 0, memory_order_relaxed);
        atomic_store_explicit(&st->owner_tid, 0, memory_order_relaxed);
        lock_release_word(st);
        return 0;
    }
    default: {
        uint32_t count = atomic_load(&st->word);
        do {
            if (count >= st->maxvalue) {
                if (st->maxvalue == SERENTAK_SEM_VALUE_MAX) {
                    PyErr_SetString(PyExc_OverflowError, "semaphore value would exceed SEM_VALUE_MAX");
                    return -1;
                }
                goto too_many;
            }
        } while (!atomic_compare_exchange_weak(&st->word, &count, count + 1));
        if (atomic_load(&st->sleepers) > 0) {
            futex_wake(&st->word, 1);
        }
        return 0;
    }
    }
too_many:
    PyErr_SetString(PyExc_ValueError, "semaphore or lock released too many times");
    return -1;
}

/* ---- for guarded.c: a SemLock driven from C ------------------------------ */

int
serentak_is_semlock(PyObject *obj)
{
    return PyObject_TypeCheck(obj, &SemLockType) && ((SemLockObject *)obj)->st != NULL;
}

/* A blocking acquire() of a SemLock (serentak_is_semlock): 0 when held, -1 with an
 * exception (Ctrl-C while waiting, an owner-died warning made an error). */
int
serentak_semlock_acquire(PyObject *lock)
{
    return semlock_acquire_impl((SemLockObject *)lock, 1, FOREVER) < 0 ? -1 : 0;
}

/* 1 if `lock` (serentak_is_semlock) is an RLock the calling thread holds: a
 * guarded access inside `with v.get_lock():` then needs no re-entry. */
int
serentak_semlock_held_rlock(PyObject *lock)
{
    SemLockObject *self = (SemLockObject *)lock;
    return self->kind == KIND_RLOCK &&
           lock_is_mine(self->st, (uint32_t)serentak_getpid(), serentak_gettid());
}

/* release() of a SemLock (serentak_is_semlock): 0, or -1 with an exception. */
int
serentak_semlock_release(PyObject *lock)
{
    return semlock_release_impl((SemLockObject *)lock);
}

static int
semlock_init(SemLockObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffer", "kind", "value", "maxvalue", "init", NULL};
    Py_buffer view;
    int kind, value, maxvalue, init;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "w*iiip:SemLock", kwlist, &view, &kind, &value,
                                     &maxvalue, &init)) {
        return -1;
    }
    const char *error = NULL;
    if (self->st != NULL) {
        error = "SemLock is already initialised";
    } else if (kind < KIND_LOCK || kind > KIND_SEMAPHORE) {
        error = "unrecognized kind";
    } else if (view.len < (Py_ssize_t)SEMLOCK_SIZE) {
        error = "buffer is smaller than SEMLOCK_SIZE";
    } else if ((uintptr_t)view.buf % _Alignof(uint64_t) != 0) {
        error = "buffer is not aligned for a SemLock";
    } else if (init && kind == KIND_SEMAPHORE && (value < 0 || value > maxvalue)) {
        error = value < 0 ? "semaphore initial value must be >= 0" : "invalid maxvalue";
    } else if (init && kind != KIND_SEMAPHORE && (value != 1 || maxvalue != 1)) {
        error = "a lock starts free: value and maxvalue must be 1";
    }
    uintptr_t start = ((uintptr_t)view.buf + CACHE_LINE - 1) & ~(uintptr_t)(CACHE_LINE - 1);
    shared_state *st = (shared_state *)start;
    if (error == NULL && !init &&
        (atomic_load(&st->magic) != STATE_MAGIC || st->kind != (uint32_t)kind)) {
        error = "buffer does not hold a SemLock of this kind";
    }
    if (error != NULL) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, error);
        return -1;
    }
    if (init) {
        atomic_store(&st->word, kind == KIND_SEMAPHORE ? (uint32_t)value : 0);
        atomic_store(&st->sleepers, 0);
        atomic_store(&st->owner_tid, 0);
        atomic_store(&st->depth, 0);
        st->kind = (uint32_t)kind;
        st->maxvalue = (uint32_t)maxvalue;
        atomic_store(&st->owner_stamp, 0);
        atomic_store(&st->magic, STATE_MAGIC);
    }
    self->view = view;
    self->kind = kind;
    self->st = st;
    return 0;
}

static void
semlock_dealloc(SemLockObject *self)
{
    if (self->st != NULL) {
        self->st = NULL;
        PyBuffer_Release(&self->view);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
semlock_acquire(SemLockObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    /* Hand-parsed: acquire() is on the hot path and the argument clinic is
     * private API. Signature: acquire(block=True, timeout=None). */
    PyObject *block = NULL, *timeout = NULL;
    if (nargs > 2) {
        PyErr_Format(PyExc_TypeError, "acquire() takes at most 2 arguments (%zd given)", nargs);
        return NULL;
    }
    if (nargs >= 1) {
        block = args[0];
    }
    if (nargs == 2) {
        timeout = args[1];
    }
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        PyObject **slot = NULL;
        if (PyUnicode_CompareWithASCIIString(name, "block") == 0) {
            slot = &block;
        } else if (PyUnicode_CompareWithASCIIString(name, "timeout") == 0) {
            slot = &timeout;
        } else {
            PyErr_Format(PyExc_TypeError, "acquire() got an unexpected keyword argument '%U'", name);
            return NULL;
        }
        if (*slot != NULL) {
            PyErr_Format(PyExc_TypeError, "acquire() got multiple values for argument '%U'", name);
            return NULL;
        }
        *slot = args[nargs + i];
    }
    if (check_ready(self) < 0) {
        return NULL;
    }
    int blocking = 1;
    if (block != NULL && (blocking = PyObject_IsTrue(block)) < 0) {
        return NULL;
    }
    /* As the stdlib's, a non-blocking acquire ignores its timeout entirely. */
    double seconds = FOREVER;
    if (blocking && parse_timeout(timeout, &seconds) < 0) {
        return NULL;
    }
    int result = semlock_acquire_impl(self, blocking, seconds);
    if (result < 0) {
        return NULL;
    }
    return PyBool_FromLong(result);
}

static PyObject *
semlock_release(SemLockObject *self, PyObject *unused)
{
    if (check_ready(self) < 0 || semlock_release_impl(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
semlock_enter(SemLockObject *self, PyObject *unused)
{
    if (check_ready(self) < 0 || semlock_acquire_impl(self, 1, FOREVER) < 0) {
        return NULL;
    }
    Py_RETURN_TRUE;
}

static PyObject *
semlock_exit(SemLockObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return semlock_release(self, NULL);
}

/* Depth of this process's hold: RLock recursion depth, 1 for a Lock, 0 if
 * another process (or nobody) holds it. The stdlib's _count() is likewise
 * per process, not per thread. */
static PyObject *
semlock_count(SemLockObject *self, PyObject *unused)
{
    if (check_ready(self) < 0) {
        return NULL;
    }
    if (self->kind == KIND_SEMAPHORE) {
        return PyLong_FromLong(0);
    }
    uint32_t word = atomic_load(&self->st->word);
    if ((word & SERENTAK_PID_MASK) != (uint32_t)serentak_getpid()) {
        return PyLong_FromLong(0);
    }
    return PyLong_FromUnsignedLong(self->kind == KIND_RLOCK ? atomic_load(&self->st->depth) : 1);
}

static PyObject *
semlock_is_mine(SemLockObject *self, PyObject *unused)
{
    if (check_ready(self) < 0) {
        return NULL;
    }
    if (self->kind == KIND_SEMAPHORE) {
        Py_RETURN_FALSE;
    }
    return PyBool_FromLong(lock_is_mine(self->st, (uint32_t)serentak_getpid(), serentak_gettid()));
}

static long
semlock_value(SemLockObject *self)
{
    uint32_t word = atomic_load(&self->st->word);
    if (self->kind == KIND_SEMAPHORE) {
        return (long)word;
    }
    return word == 0 ? 1 : 0;
}

static PyObject *
semlock_get_value(SemLockObject *self, PyObject *unused)
{
    if (check_ready(self) < 0) {
        return NULL;
    }
    return PyLong_FromLong(semlock_value(self));
}

static PyObject *
semlock_is_zero(SemLockObject *self, PyObject *unused)
{
    if (check_ready(self) < 0) {
        return NULL;
    }
    return PyBool_FromLong(semlock_value(self) == 0);
}

static PyObject *
semlock_owner_pid(SemLockObject *self, PyObject *unused)
{
    if (check_ready(self) < 0) {
        return NULL;
    }
    if (self->kind == KIND_SEMAPHORE) {
        return PyLong_FromLong(0);
    }
    return PyLong_FromUnsignedLong(atomic_load(&self->st->word) & SERENTAK_PID_MASK);
}

/* For Condition.wait: release a lock held by this thread however deep, and
 * return the depth to give back to _acquire_restore(). */
static PyObject *
semlock_release_save(SemLockObject *self, PyObject *unused)
{
    if (check_ready(self) < 0) {
        return NULL;
    }
    if (self->kind == KIND_SEMAPHORE ||
        !lock_is_mine(self->st, (uint32_t)serentak_getpid(), serentak_gettid())) {
        PyErr_SetString(PyExc_AssertionError, "lock is not owned by this thread");
        return NULL;
    }
    uint32_t depth = atomic_load_explicit(&self->st->depth, memory_order_relaxed);
    atomic_store_explicit(&self->st->depth, 0, memory_order_relaxed);
    atomic_store_explicit(&self->st->owner_tid, 0, memory_order_relaxed);
    lock_release_word(self->st);
    return PyLong_FromUnsignedLong(depth);
}

static PyObject *
semlock_acquire_restore(SemLockObject *self, PyObject *arg)
{
    if (check_ready(self) < 0) {
        return NULL;
    }
    unsigned long depth = PyLong_AsUnsignedLong(arg);
    if (depth == (unsigned long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    if (self->kind == KIND_SEMAPHORE || depth < 1 || depth > UINT32_MAX ||
        (self->kind == KIND_LOCK && depth != 1)) {
        PyErr_SetString(PyExc_ValueError, "invalid depth for this lock");
        return NULL;
    }
    if (lock_acquire(self, 1, FOREVER) < 0) {
        return NULL;
    }
    atomic_store_explicit(&self->st->depth, (uint32_t)depth, memory_order_relaxed);
    Py_RETURN_NONE;
}

/* The raw types would pickle as empty shells; serentak's classes pickle the
 * shared block instead. */
static PyObject *
refuse_pickle(PyObject *self, PyObject *unused)
{
    PyErr_Format(PyExc_TypeError, "cannot pickle '%s' object", Py_TYPE(self)->tp_name);
    return NULL;
}

/* (offset, size) of the spare bytes on the owner's line, from the start of
 * the buffer given to __init__: the same in every process (see CACHE_LINE). */
static PyObject *
semlock_spare(SemLockObject *self, PyObject *unused)
{
    if (check_ready(self) < 0) {
        return NULL;
    }
    Py_ssize_t offset = (Py_ssize_t)(self->st->spare - (char *)self->view.buf);
    return Py_BuildValue("nn", offset, (Py_ssize_t)SPARE_SIZE);
}

static PyObject *
semlock_get_kind(SemLockObject *self, void *closure)
{
    if (check_ready(self) < 0) {
        return NULL;
    }
    return PyLong_FromLong(self->kind);
}

static PyObject *
semlock_get_maxvalue(SemLockObject *self, void *closure)
{
    if (check_ready(self) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLong(self->st->maxvalue);
}

static PyMethodDef semlock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))semlock_acquire, METH_FASTCALL | METH_KEYWORDS,
     "acquire(block=True, timeout=None) -> bool\n\nWarns if taken over from a dead owner."},
    {"release", (PyCFunction)semlock_release, METH_NOARGS, "release() -> None"},
    {"__enter__", (PyCFunction)semlock_enter, METH_NOARGS, "acquire(); return True"},
    {"__exit__", (PyCFunction)(void (*)(void))semlock_exit, METH_FASTCALL, "release()"},
    {"_count", (PyCFunction)semlock_count, METH_NOARGS,
     "Depth of this process's hold (RLock recursion; 1 for a held Lock), else 0."},
    {"_is_mine", (PyCFunction)semlock_is_mine, METH_NOARGS,
     "True if the calling thread holds the lock."},
    {"_get_value", (PyCFunction)semlock_get_value, METH_NOARGS,
     "Semaphore count; for locks 1 if free, 0 if held."},
    {"_is_zero", (PyCFunction)semlock_is_zero, METH_NOARGS, "_get_value() == 0"},
    {"_owner_pid", (PyCFunction)semlock_owner_pid, METH_NOARGS,
     "pid of the process holding the lock, 0 if free (always 0 for semaphores)."},
    {"_release_save", (PyCFunction)semlock_release_save, METH_NOARGS,
     "Release a lock the calling thread holds, however deep; return the depth."},
    {"_acquire_restore", (PyCFunction)semlock_acquire_restore, METH_O,
     "Acquire, blocking, and set the depth _release_save() returned."},
    {"_spare", (PyCFunction)semlock_spare, METH_NOARGS,
     "(offset, size): bytes of the buffer, on the owner's cache line, that the lock\n"
     "never touches, for the data it guards."},
    {"__reduce__", (PyCFunction)refuse_pickle, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef semlock_getset[] = {
    {"kind", (getter)semlock_get_kind, NULL, "0 Lock, 1 RLock, 2 Semaphore", NULL},
    {"maxvalue", (getter)semlock_get_maxvalue, NULL, "Largest count a release may reach", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject SemLockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "serentak._os._native.SemLock",
    .tp_doc = "SemLock(buffer, kind, value, maxvalue, init)\n\n"
              "A process-shared Lock (kind 0), RLock (1) or Semaphore (2) whose state\n"
              "is in the first SEMLOCK_SIZE bytes of `buffer`. init=True writes the\n"
              "initial state; init=False attaches to state another process wrote.",
    .tp_basicsize = sizeof(SemLockObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)semlock_init,
    .tp_dealloc = (destructor)semlock_dealloc,
    .tp_methods = semlock_methods,
    .tp_getset = semlock_getset,
};

/* ---- the Futex type ----------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    _Atomic uint32_t *word;
    Py_buffer view;
} FutexObject;

static int
futex_init(FutexObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffer", NULL};
    Py_buffer view;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "w*:Futex", kwlist, &view)) {
        return -1;
    }
    const char *error = NULL;
    if (self->word != NULL) {
        error = "Futex is already initialised";
    } else if (view.len < 4) {
        error = "a futex needs 4 bytes";
    } else if ((uintptr_t)view.buf % 4 != 0) {
        error = "a futex must be 4-byte aligned";
    }
    if (error != NULL) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, error);
        return -1;
    }
    self->view = view;
    self->word = (_Atomic uint32_t *)view.buf;
    return 0;
}

static void
futex_dealloc(FutexObject *self)
{
    if (self->word != NULL) {
        self->word = NULL;
        PyBuffer_Release(&self->view);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
futex_ready(FutexObject *self)
{
    if (self->word == NULL) {
        PyErr_SetString(PyExc_ValueError, "Futex used before __init__");
        return -1;
    }
    return 0;
}

static int
parse_u32(PyObject *obj, uint32_t *out)
{
    unsigned long value = PyLong_AsUnsignedLongMask(obj);
    if (value == (unsigned long)-1 && PyErr_Occurred()) {
        return -1;
    }
    *out = (uint32_t)value;
    return 0;
}

static PyObject *
futex_load(FutexObject *self, PyObject *unused)
{
    if (futex_ready(self) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLong(atomic_load(self->word));
}

static PyObject *
futex_compare_exchange(FutexObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t expected, desired;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "compare_exchange() takes exactly 2 arguments");
        return NULL;
    }
    if (futex_ready(self) < 0 ||
        parse_u32(args[0], &expected) < 0 || parse_u32(args[1], &desired) < 0) {
        return NULL;
    }
    return PyBool_FromLong(atomic_compare_exchange_strong(self->word, &expected, desired));
}

static PyObject *
futex_add(FutexObject *self, PyObject *arg)
{
    uint32_t delta;
    if (futex_ready(self) < 0 || parse_u32(arg, &delta) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLong(atomic_fetch_add(self->word, delta) + delta);
}

static PyObject *
futex_wait(FutexObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t expected;
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "wait() takes 1 or 2 arguments");
        return NULL;
    }
    if (futex_ready(self) < 0 ||
        parse_u32(args[0], &expected) < 0) {
        return NULL;
    }
    double seconds;
    if (parse_timeout(nargs == 2 ? args[1] : NULL, &seconds) < 0) {
        return NULL;
    }
    struct timespec deadline_storage;
    const struct timespec *deadline = deadline_after(seconds, &deadline_storage);
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = futex_wait_until(self->word, expected, deadline);
    Py_END_ALLOW_THREADS
    if (err == EINTR && PyErr_CheckSignals() < 0) {
        return NULL;
    }
    /* EINTR without an exception reads as a spurious wake: callers re-check. */
    return PyBool_FromLong(err != ETIMEDOUT);
}

static PyObject *
futex_wake_method(FutexObject *self, PyObject *arg)
{
    long count = PyLong_AsLong(arg);
    if ((count == -1 && PyErr_Occurred()) || futex_ready(self) < 0) {
        return NULL;
    }
    if (count <= 0) {
        return PyLong_FromLong(0);
    }
    return PyLong_FromLong(futex_wake(self->word, count > INT_MAX ? INT_MAX : (int)count));
}

/* The lock-word protocol of native.h, for lock words driven from Python. */
static PyObject *
futex_take_over(FutexObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t seen, pid_mask, desired;
    if (nargs != 4 || !PyObject_TypeCheck(args[0], Py_TYPE(self))) {
        PyErr_SetString(PyExc_TypeError, "take_over(stamp: Futex, seen, pid_mask, desired)");
        return NULL;
    }
    FutexObject *stamp = (FutexObject *)args[0];
    if (futex_ready(self) < 0 || futex_ready(stamp) < 0 || parse_u32(args[1], &seen) < 0 ||
        parse_u32(args[2], &pid_mask) < 0 || parse_u32(args[3], &desired) < 0) {
        return NULL;
    }
    int taken;
    Py_BEGIN_ALLOW_THREADS
    taken = serentak_take_over(self->word, stamp->word, seen, pid_mask, desired);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(taken);
}

static PyMethodDef futex_methods[] = {
    {"take_over", (PyCFunction)(void (*)(void))futex_take_over, METH_FASTCALL,
     "take_over(stamp, seen, pid_mask, desired) -> bool\n\n"
     "This lock word, seen holding `seen`: if its owner (named with the start\n"
     "stamp in the `stamp` word) is gone, make it `desired`, with our stamp."},
    {"load", (PyCFunction)futex_load, METH_NOARGS, "load() -> int"},
    {"compare_exchange", (PyCFunction)(void (*)(void))futex_compare_exchange, METH_FASTCALL,
     "compare_exchange(expected, desired) -> bool"},
    {"add", (PyCFunction)futex_add, METH_O, "add(delta) -> the new value (modulo 2**32)"},
    {"wait", (PyCFunction)(void (*)(void))futex_wait, METH_FASTCALL,
     "wait(expected, timeout=None) -> bool\n\n"
     "Sleep while the word equals `expected`. False if the timeout expired;\n"
     "True if woken or the word differed (wakes may be spurious)."},
    {"wake", (PyCFunction)futex_wake_method, METH_O, "wake(count) -> number of sleepers woken"},
    {"__reduce__", (PyCFunction)refuse_pickle, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FutexType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "serentak._os._native.Futex",
    .tp_doc = "Futex(buffer)\n\nA process-shared 32-bit futex word: the first 4 bytes of `buffer`.",
    .tp_basicsize = sizeof(FutexObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)futex_init,
    .tp_dealloc = (destructor)futex_dealloc,
    .tp_methods = futex_methods,
};

/* ---- module functions --------------------------------------------------- */

static PyObject *
set_owner_died_category(PyObject *module, PyObject *category)
{
    if (!PyType_Check(category) || !PyType_IsSubtype((PyTypeObject *)category,
                                                     (PyTypeObject *)PyExc_Warning)) {
        PyErr_SetString(PyExc_TypeError, "the owner-died category must be a Warning subclass");
        return NULL;
    }
    Py_INCREF(category);
    Py_XSETREF(owner_died_category, category);
    Py_RETURN_NONE;
}

PyMethodDef serentak_sync_methods[] = {
    {"set_owner_died_category", set_owner_died_category, METH_O,
     "Warning class issued when a lock is taken over from a dead owner (default RuntimeWarning)."},
    {NULL, NULL, 0, NULL},
};

int
serentak_sync_init(PyObject *module)
{
    if (PyType_Ready(&SemLockType) < 0 || PyType_Ready(&FutexType) < 0) {
        return -1;
    }
    Py_INCREF(&SemLockType);
    if (PyModule_AddObject(module, "SemLock", (PyObject *)&SemLockType) < 0) {
        Py_DECREF(&SemLockType);
        return -1;
    }
    Py_INCREF(&FutexType);
    if (PyModule_AddObject(module, "Futex", (PyObject *)&FutexType) < 0) {
        Py_DECREF(&FutexType);
        return -1;
    }
    if (PyModule_AddIntConstant(module, "SEMLOCK_SIZE", (long)SEMLOCK_SIZE) < 0 ||
        PyModule_AddIntConstant(module, "SEM_VALUE_MAX", (long)SERENTAK_SEM_VALUE_MAX) < 0 ||
        PyModule_AddIntConstant(module, "LOCK", KIND_LOCK) < 0 ||
        PyModule_AddIntConstant(module, "RLOCK", KIND_RLOCK) < 0 ||
        PyModule_AddIntConstant(module, "SEMAPHORE", KIND_SEMAPHORE) < 0) {
        return -1;
    }
    return 0;
}
