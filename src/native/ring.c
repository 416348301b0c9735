/* A crash-consistent ring of variable-size records in shared memory: the
 * fast path of serentak's Queue (the protocol around it is in _queues.py).
 *
 *     writers (any process)          shared mapping                  readers (any process)
 *     ---------------------          --------------                  ---------------------
 *     put: take wlock          +----------------------------+        get: take rlock
 *       check room (head)      | wlock  space_waiters       |          tail == head: empty
 *       copy record at tail    | tail = seq << 32 | pos     |          copy record at head
 *       tail = new (one store) | side_tag                   |          head = new (one store)
 *       release, wake readers  | rlock  data_waiters        |          release, wake writers
 *                              | head = seq << 32 | pos     |
 *                              | (bytes for _queues.py)     |
 *                              | data[capacity]  records:   |
 *                              |   u32 length, u32 kind,    |
 *                              |   payload, padded to 8     |
 *                              +----------------------------+
 *
 * Each side's position is one 64-bit word, a message count and a byte
 * position together, written with one atomic store only after the bytes it
 * covers are complete. So a writer killed in the middle of a copy leaves a
 * half-written record past `tail` that nobody can see, and the next writer
 * overwrites it; a reader killed in the middle of a copy leaves `head` where
 * it was, and the next reader takes the same record again. Neither needs a
 * repair: the only shared state a crash can leave behind is a lock word naming
 * a dead pid, which the next taker notices (its sleep is cut in slices) and
 * takes over, exactly as the SemLock of sync.c does.
 *
 * The count halves of tail and head double as the futex words that readers
 * waiting for data and writers waiting for room sleep on; the *_waiters
 * counters let the other side skip the wake system call when nobody sleeps.
 *
 * A record whose kind has RING_HOLD set is returned by get() with the reader
 * lock still held and head not yet moved: the caller receives what travels
 * beside the record (file descriptors) under the same lock, then calls
 * finish_hold().
 */
#include "native.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#define RING_HOLD 0x100u
/* Copies above this release the GIL (other threads of the process go on). */
#define RING_BIG_COPY (64 * 1024)
/* How long a reader polls tail before sleeping on it: a sleep and a wake cost
 * two system calls and a scheduler round trip, many times one message. But a
 * spin that does not end in data burns a CPU some other process could have
 * used: with more runnable processes than CPUs (a third, CPU-bound process
 * beside a producer and a consumer on two CPUs) the spinning reader starved
 * the producer it waited for. So the spin adapts, per Ring object: it doubles
 * (up to RING_SPIN_MAX) after a spin that saw data, halves after one that
 * did not (to nothing below RING_SPIN_MIN; then one wait in RING_SPIN_PROBE
 * tries a short spin again), and is skipped while the reader's thread has
 * been preempted since its last wait (getrusage's involuntary context
 * switches: the CPUs are oversubscribed). */
#define RING_SPIN_MAX 20e-6
#define RING_SPIN_MIN 1e-6
#define RING_SPIN_PROBE 64
#define RING_HEADER 4096

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define COUNT_HALF 0
#else
#define COUNT_HALF 1
#endif

typedef struct {
    _Atomic uint32_t wlock;         /* 0 */
    _Atomic uint32_t space_waiters; /* 4 */
    _Atomic uint64_t tail;          /* 8 */
    _Atomic uint32_t side_tag;      /* 16: used by _queues.py */
    _Atomic uint32_t wlock_stamp;   /* 20: wlock's owner stamp (see native.h) */
    char pad1[64 - 24];
    _Atomic uint32_t rlock;        /* 64 */
    _Atomic uint32_t data_waiters; /* 68 */
    _Atomic uint64_t head;         /* 72 */
    _Atomic uint32_t rlock_stamp;  /* 80: rlock's owner stamp */
    char pad2[64 - 20];
    /* 128 .. RING_HEADER: _queues.py's own words */
} ring_header;

_Static_assert(sizeof(ring_header) == 128, "ring header layout");

typedef struct {
    PyObject_HEAD
    ring_header *h; /* NULL until __init__ succeeds */
    unsigned char *data;
    uint32_t mask;
    uint64_t pending; /* head after the held record (RING_HOLD) */
    unsigned long holder; /* the thread get() returned the held record to; 0: none */
    void *base;       /* our own mapping of the memfd: no fd kept (unlike mmap.mmap) */
    size_t size;
    /* The reader's adaptive spin (see RING_SPIN_MAX); racy updates from
     * several threads only make the estimate rougher. */
    double spin;          /* seconds, 0 for none */
    unsigned spin_skips;  /* waits without a spin since the last probe */
    long preemptions;     /* involuntary context switches at the last wait */
} RingObject;

#include <sys/resource.h>

/* Has this thread been preempted since the last call (for this ring)? */
static int
preempted_since_last(RingObject *self)
{
#ifdef RUSAGE_THREAD
    struct rusage usage;
    if (getrusage(RUSAGE_THREAD, &usage) != 0) {
        return 0;
    }
    long seen = self->preemptions;
    self->preemptions = usage.ru_nivcsw;
    return usage.ru_nivcsw != seen;
#else
    (void)self;
    return 0;
#endif
}

/* The seconds to spin before this wait (0: sleep at once). */
static double
spin_budget(RingObject *self)
{
    double budget = self->spin;
    if (budget == 0) {
        if (++self->spin_skips < RING_SPIN_PROBE) {
            return 0;
        }
        self->spin_skips = 0;
        budget = RING_SPIN_MIN;
    }
    if (preempted_since_last(self)) {
        self->spin = budget / 2 < RING_SPIN_MIN ? 0 : budget / 2;
        return 0;
    }
    return budget;
}

static void
spin_learn(RingObject *self, double budget, int saw_data)
{
    if (budget == 0) {
        return;
    }
    if (saw_data) {
        self->spin = budget * 2 > RING_SPIN_MAX ? RING_SPIN_MAX : budget * 2;
    } else {
        self->spin = budget / 2 < RING_SPIN_MIN ? 0 : budget / 2;
    }
}

static inline void
cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline _Atomic uint32_t *
count_word(_Atomic uint64_t *position)
{
    return (_Atomic uint32_t *)position + COUNT_HALF;
}

static double
now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Sleep while *word == expected, at most `seconds`. Returns 0 when woken (or
 * the value differed), ETIMEDOUT or EINTR. */
static int
sleep_on(_Atomic uint32_t *word, uint32_t expected, double seconds)
{
#ifdef __linux__
    struct timespec rel;
    rel.tv_sec = (time_t)seconds;
    rel.tv_nsec = (long)((seconds - (double)rel.tv_sec) * 1e9);
    long rc = syscall(SYS_futex, word, FUTEX_WAIT, expected, &rel, NULL, 0);
    if (rc == 0 || errno == EAGAIN) {
        return 0;
    }
    return errno == EINTR ? EINTR : ETIMEDOUT;
#else
    (void)word;
    (void)expected;
    struct timespec nap = {0, 1000000};
    nanosleep(&nap, NULL);
    return 0;
#endif
}

static void
wake_all(_Atomic uint32_t *word)
{
#ifdef __linux__
    syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
#else
    (void)word;
#endif
}

/* The most seconds to sleep before checking again, or a negative number if
 * `deadline` (monotonic seconds; a NaN for none) has passed. */
static double
next_sleep(double deadline)
{
    if (isnan(deadline)) {
        return SERENTAK_WAIT_SLICE;
    }
    double left = deadline - now();
    if (left <= 0) {
        return -1.0;
    }
    return left < SERENTAK_WAIT_SLICE ? left : SERENTAK_WAIT_SLICE;
}

/* Take a lock word (0 free, else owner pid | WAITERS; the protocol of
 * _queues._WriterLock), taking it over from a dead owner. The GIL is released
 * while sleeping. Returns 0, or -1 with an exception set (a signal handler
 * raised). */
static int
lock_word(_Atomic uint32_t *word, _Atomic uint32_t *stamp)
{
    uint32_t me = (uint32_t)serentak_getpid();
    uint32_t current = 0;
    if (atomic_compare_exchange_strong(word, &current, me)) {
        atomic_store(stamp, serentak_start_stamp());
        return 0;
    }
    for (int spin = 0; spin < 200; spin++) {
        cpu_relax();
        current = 0;
        if (atomic_load_explicit(word, memory_order_relaxed) == 0 &&
            atomic_compare_exchange_strong(word, &current, me)) {
            atomic_store(stamp, serentak_start_stamp());
            return 0;
        }
    }
    for (;;) {
        current = atomic_load(word);
        if (current == 0) {
            /* Others may be asleep: keep WAITERS so that our release wakes one. */
            if (atomic_compare_exchange_strong(word, &current, me | SERENTAK_WAITERS)) {
                atomic_store(stamp, serentak_start_stamp());
                return 0;
            }
            continue;
        }
        if (!(current & SERENTAK_WAITERS)) {
            uint32_t expected = current;
            if (!atomic_compare_exchange_strong(word, &expected, current | SERENTAK_WAITERS)) {
                continue;
            }
            current |= SERENTAK_WAITERS;
        }
        int err;
        Py_BEGIN_ALLOW_THREADS
        err = sleep_on(word, current, SERENTAK_WAIT_SLICE);
        Py_END_ALLOW_THREADS
        if (PyErr_CheckSignals() < 0) {
            return -1;
        }
        if (err != ETIMEDOUT) {
            continue;
        }
        int taken;
        Py_BEGIN_ALLOW_THREADS
        taken = serentak_take_over(word, stamp, current, SERENTAK_PID_MASK, me | SERENTAK_WAITERS);
        Py_END_ALLOW_THREADS
        if (taken) {
            return 0; /* taken over: nothing to repair (see the top of this file) */
        }
    }
}

static void
unlock_word(_Atomic uint32_t *word, _Atomic uint32_t *stamp)
{
    atomic_store(stamp, 0); /* before the word: see native.h */
    uint32_t previous = atomic_exchange(word, 0);
    if (previous & SERENTAK_WAITERS) {
#ifdef __linux__
        syscall(SYS_futex, word, FUTEX_WAKE, 1, NULL, NULL, 0);
#endif
    }
}

static inline uint32_t
record_size(Py_ssize_t length)
{
    return 8u + (((uint32_t)length + 7u) & ~7u);
}

/* Copy `n` bytes in or out of the ring at position `pos`, wrapping around. */
static void
copy_in(RingObject *self, uint32_t pos, const void *src, size_t n)
{
    uint32_t offset = pos & self->mask;
    size_t first = (size_t)self->mask + 1 - offset;
    if (n <= first) {
        memcpy(self->data + offset, src, n);
    } else {
        memcpy(self->data + offset, src, first);
        memcpy(self->data, (const char *)src + first, n - first);
    }
}

static void
copy_out(RingObject *self, uint32_t pos, void *dst, size_t n)
{
    uint32_t offset = pos & self->mask;
    size_t first = (size_t)self->mask + 1 - offset;
    if (n <= first) {
        memcpy(dst, self->data + offset, n);
    } else {
        memcpy(dst, self->data + offset, first);
        memcpy((char *)dst + first, self->data, n - first);
    }
}

static int
ring_ready(RingObject *self)
{
    if (self->h == NULL) {
        PyErr_SetString(PyExc_ValueError, "Ring used before __init__");
        return -1;
    }
    return 0;
}

static int
ring_init(RingObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd", "size", NULL};
    int fd;
    Py_ssize_t size;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "in:Ring", kwlist, &fd, &size)) {
        return -1;
    }
    Py_ssize_t capacity = size - RING_HEADER;
    if (self->h != NULL) {
        PyErr_SetString(PyExc_ValueError, "Ring is already initialised");
        return -1;
    }
    if (capacity < 4096 || capacity > (1L << 30) || (capacity & (capacity - 1)) != 0) {
        PyErr_SetString(PyExc_ValueError,
                        "a ring's capacity (size - RING_HEADER) must be a power of two, "
                        "4 KiB to 1 GiB");
        return -1;
    }
    void *base = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    self->base = base;
    self->size = (size_t)size;
    self->h = (ring_header *)base;
    self->data = (unsigned char *)base + RING_HEADER;
    self->mask = (uint32_t)capacity - 1;
    self->spin = RING_SPIN_MAX;
    return 0;
}

static void
ring_dealloc(RingObject *self)
{
    if (self->h != NULL) {
        self->h = NULL;
        munmap(self->base, self->size);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The whole mapping, header included, for the words _queues.py keeps there. */
static int
ring_getbuffer(RingObject *self, Py_buffer *view, int flags)
{
    if (ring_ready(self) < 0) {
        view->obj = NULL;
        return -1;
    }
    return PyBuffer_FillInfo(view, (PyObject *)self, self->base, (Py_ssize_t)self->size, 0,
                             flags);
}

static PyBufferProcs ring_as_buffer = {
    .bf_getbuffer = (getbufferproc)ring_getbuffer,
};

/* deadline: None for none, else a time.monotonic() value. NaN stands for none. */
static int
parse_deadline(PyObject *obj, double *deadline)
{
    if (obj == Py_None) {
        *deadline = NAN;
        return 0;
    }
    *deadline = PyFloat_AsDouble(obj);
    if (*deadline == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (isnan(*deadline)) {
        PyErr_SetString(PyExc_ValueError, "deadline must not be NaN");
        return -1;
    }
    return 0;
}

/* Write one record if it fits (writer lock held). Returns 1 if written, 0 if
 * no room; *seen is the head count looked at. */
static int
try_write(RingObject *self, uint32_t kind, const Py_buffer *payload, uint32_t maxsize,
          uint32_t *seen)
{
    ring_header *h = self->h;
    uint64_t tail = atomic_load_explicit(&h->tail, memory_order_relaxed);
    uint64_t head = atomic_load_explicit(&h->head, memory_order_acquire);
    uint32_t tail_count = (uint32_t)(tail >> 32), tail_pos = (uint32_t)tail;
    uint32_t head_count = (uint32_t)(head >> 32), head_pos = (uint32_t)head;
    *seen = head_count;
    uint32_t need = record_size(payload->len);
    if (maxsize && tail_count - head_count >= maxsize) {
        return 0;
    }
    if (need > self->mask + 1 - (tail_pos - head_pos)) {
        return 0;
    }
    uint32_t header[2] = {(uint32_t)payload->len, kind};
    copy_in(self, tail_pos, header, sizeof header);
    if (payload->len >= RING_BIG_COPY) {
        Py_BEGIN_ALLOW_THREADS
        copy_in(self, tail_pos + 8, payload->buf, (size_t)payload->len);
        Py_END_ALLOW_THREADS
    } else {
        copy_in(self, tail_pos + 8, payload->buf, (size_t)payload->len);
    }
    uint64_t next = ((uint64_t)(tail_count + 1) << 32) | (uint32_t)(tail_pos + need);
    /* seq_cst: ordered before the load of data_waiters below (readers do the
     * opposite: count themselves, then look at tail). */
    atomic_store(&h->tail, next);
    return 1;
}

static PyObject *
ring_put(RingObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError,
                        "put(kind, payload, maxsize, deadline, locked) takes 5 arguments");
        return NULL;
    }
    if (ring_ready(self) < 0) {
        return NULL;
    }
    unsigned long kind = PyLong_AsUnsignedLong(args[0]);
    if (kind == (unsigned long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    unsigned long maxsize = PyLong_AsUnsignedLong(args[2]);
    if (maxsize == (unsigned long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    double deadline;
    if (parse_deadline(args[3], &deadline) < 0) {
        return NULL;
    }
    int locked = PyObject_IsTrue(args[4]);
    if (locked < 0) {
        return NULL;
    }
    Py_buffer payload;
    if (PyObject_GetBuffer(args[1], &payload, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    PyObject *result = NULL;
    ring_header *h = self->h;
    if ((size_t)payload.len > (size_t)(self->mask + 1) / 2) {
        PyErr_SetString(PyExc_ValueError, "record bigger than half the ring");
        goto done;
    }
    for (;;) {
        if (!locked && lock_word(&h->wlock, &h->wlock_stamp) < 0) {
            goto done;
        }
        uint32_t seen;
        int written = try_write(self, (uint32_t)kind, &payload, (uint32_t)maxsize, &seen);
        if (!locked) {
            unlock_word(&h->wlock, &h->wlock_stamp);
        }
        if (written) {
            if (atomic_load(&h->data_waiters)) {
                wake_all(count_word(&h->tail));
            }
            result = Py_True;
            break;
        }
        double wait = locked ? -1.0 : next_sleep(deadline);
        if (wait < 0) {
            result = Py_False;
            break;
        }
        /* Sleep until a reader moves head past what try_write saw. */
        atomic_fetch_add(&h->space_waiters, 1);
        Py_BEGIN_ALLOW_THREADS
        if (atomic_load(count_word(&h->head)) == seen) {
            sleep_on(count_word(&h->head), seen, wait);
        }
        Py_END_ALLOW_THREADS
        atomic_fetch_sub(&h->space_waiters, 1);
        if (PyErr_CheckSignals() < 0) {
            goto done;
        }
    }
    Py_INCREF(result);
done:
    PyBuffer_Release(&payload);
    return result;
}

/* Whether a payload of `length` bytes fits now (the caller holds the writer lock). */
static PyObject *
ring_fits(RingObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "fits(length, maxsize) takes 2 arguments");
        return NULL;
    }
    if (ring_ready(self) < 0) {
        return NULL;
    }
    Py_ssize_t length = PyLong_AsSsize_t(args[0]);
    unsigned long maxsize = PyLong_AsUnsignedLong(args[1]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    uint64_t tail = atomic_load(&self->h->tail), head = atomic_load(&self->h->head);
    uint32_t count = (uint32_t)(tail >> 32) - (uint32_t)(head >> 32);
    uint32_t used = (uint32_t)tail - (uint32_t)head;
    int fits = (!maxsize || count < (uint32_t)maxsize) && length >= 0 &&
               length <= (Py_ssize_t)(self->mask + 1) / 2 &&
               record_size(length) <= self->mask + 1 - used;
    return PyBool_FromLong(fits);
}

static PyObject *
ring_get(RingObject *self, PyObject *deadline_obj)
{
    if (ring_ready(self) < 0) {
        return NULL;
    }
    double deadline;
    if (parse_deadline(deadline_obj, &deadline) < 0) {
        return NULL;
    }
    ring_header *h = self->h;
    for (;;) {
        if (lock_word(&h->rlock, &h->rlock_stamp) < 0) {
            return NULL;
        }
        uint64_t head = atomic_load_explicit(&h->head, memory_order_relaxed);
        uint64_t tail = atomic_load_explicit(&h->tail, memory_order_acquire);
        uint32_t head_count = (uint32_t)(head >> 32), head_pos = (uint32_t)head;
        uint32_t tail_count = (uint32_t)(tail >> 32);
        if (head_count != tail_count) {
            uint32_t header[2];
            copy_out(self, head_pos, header, sizeof header);
            uint32_t length = header[0], kind = header[1];
            uint32_t need = record_size(length);
            if (length > (self->mask + 1) / 2 || need > (uint32_t)tail - head_pos) {
                /* Cannot happen while every writer keeps the protocol. */
                atomic_store(&h->head, tail);
                unlock_word(&h->rlock, &h->rlock_stamp);
                PyErr_Format(PyExc_RuntimeError,
                             "queue ring damaged (record of %u bytes): its contents were dropped",
                             length);
                return NULL;
            }
            PyObject *bytes = PyBytes_FromStringAndSize(NULL, length);
            if (bytes == NULL) {
                unlock_word(&h->rlock, &h->rlock_stamp);
                return NULL;
            }
            if (length >= RING_BIG_COPY) {
                Py_BEGIN_ALLOW_THREADS
                copy_out(self, head_pos + 8, PyBytes_AS_STRING(bytes), length);
                Py_END_ALLOW_THREADS
            } else {
                copy_out(self, head_pos + 8, PyBytes_AS_STRING(bytes), length);
            }
            uint64_t next = ((uint64_t)(head_count + 1) << 32) | (uint32_t)(head_pos + need);
            if (kind & RING_HOLD) {
                self->pending = next;
                self->holder = PyThread_get_thread_ident();
            } else {
                atomic_store(&h->head, next);
                unlock_word(&h->rlock, &h->rlock_stamp);
                if (atomic_load(&h->space_waiters)) {
                    wake_all(count_word(&h->head));
                }
            }
            PyObject *result = Py_BuildValue("(kN)", (unsigned long)kind, bytes);
            if (result == NULL && (kind & RING_HOLD)) {
                self->holder = 0;
                atomic_store(&h->head, next);
                unlock_word(&h->rlock, &h->rlock_stamp);
            }
            return result;
        }
        unlock_word(&h->rlock, &h->rlock_stamp);
        double wait = next_sleep(deadline);
        if (wait < 0) {
            Py_RETURN_NONE;
        }
        /* Spin a little, then sleep until a writer moves tail. */
        _Atomic uint32_t *word = count_word(&h->tail);
        int changed = 0;
        Py_BEGIN_ALLOW_THREADS
        double budget = spin_budget(self);
        if (budget > 0) {
            double spin_until = now() + budget;
            for (int spin = 1;; spin++) {
                if (atomic_load_explicit(word, memory_order_relaxed) != tail_count) {
                    changed = 1;
                    break;
                }
                cpu_relax();
                if (spin % 32 == 0 && now() > spin_until) {
                    break;
                }
            }
            spin_learn(self, budget, changed);
        }
        if (!changed) {
            atomic_fetch_add(&h->data_waiters, 1);
            if (atomic_load(word) == tail_count) {
                sleep_on(word, tail_count, wait);
            }
            atomic_fetch_sub(&h->data_waiters, 1);
        }
        Py_END_ALLOW_THREADS
        if (PyErr_CheckSignals() < 0) {
            return NULL;
        }
    }
}

/* After get() returned a RING_HOLD record: move head past it and release the reader lock. */
static PyObject *
ring_finish_hold(RingObject *self, PyObject *unused)
{
    if (ring_ready(self) < 0) {
        return NULL;
    }
    ring_header *h = self->h;
    if ((atomic_load(&h->rlock) & SERENTAK_PID_MASK) != (uint32_t)serentak_getpid()) {
        PyErr_SetString(PyExc_RuntimeError, "finish_hold() without a held record");
        return NULL;
    }
    self->holder = 0;
    atomic_store(&h->head, self->pending);
    unlock_word(&h->rlock, &h->rlock_stamp);
    if (atomic_load(&h->space_waiters)) {
        wake_all(count_word(&h->head));
    }
    Py_RETURN_NONE;
}

/* After get() returned a RING_HOLD record to this thread and the caller could not take what
 * travels beside it (Ctrl-C, an error): release the reader lock leaving head in place, so
 * that the next reader takes the record again, as after a reader killed there. Returns
 * whether this thread held such a record. */
static PyObject *
ring_drop_hold(RingObject *self, PyObject *unused)
{
    if (ring_ready(self) < 0) {
        return NULL;
    }
    ring_header *h = self->h;
    if (self->holder == 0 || self->holder != PyThread_get_thread_ident() ||
        (atomic_load(&h->rlock) & SERENTAK_PID_MASK) != (uint32_t)serentak_getpid()) {
        Py_RETURN_FALSE;
    }
    self->holder = 0;
    unlock_word(&h->rlock, &h->rlock_stamp);
    Py_RETURN_TRUE;
}

/* (messages ever put, messages ever taken), each modulo 2**32. */
static PyObject *
ring_counts(RingObject *self, PyObject *unused)
{
    if (ring_ready(self) < 0) {
        return NULL;
    }
    uint64_t head = atomic_load(&self->h->head);
    uint64_t tail = atomic_load(&self->h->tail);
    return Py_BuildValue("(kk)", (unsigned long)(tail >> 32), (unsigned long)(head >> 32));
}

static PyObject *
ring_capacity(RingObject *self, void *closure)
{
    if (ring_ready(self) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLong((unsigned long)self->mask + 1);
}

static PyMethodDef ring_methods[] = {
    {"put", (PyCFunction)(void (*)(void))ring_put, METH_FASTCALL,
     "put(kind, payload, maxsize, deadline, locked) -> bool\n\n"
     "Append a record; False if it did not fit (count >= maxsize, or too few bytes\n"
     "free) by `deadline`. `locked`: the caller holds the writer lock (no waiting)."},
    {"fits", (PyCFunction)(void (*)(void))ring_fits, METH_FASTCALL,
     "fits(length, maxsize) -> bool: would a payload of `length` bytes fit now."},
    {"get", (PyCFunction)ring_get, METH_O,
     "get(deadline) -> (kind, bytes) or None if nothing came by `deadline`."},
    {"finish_hold", (PyCFunction)ring_finish_hold, METH_NOARGS,
     "Move past the RING_HOLD record get() returned and release the reader lock."},
    {"drop_hold", (PyCFunction)ring_drop_hold, METH_NOARGS,
     "drop_hold() -> bool: leave the RING_HOLD record get() returned to this thread for\n"
     "the next reader (head not moved) and release the reader lock; False if none."},
    {"counts", (PyCFunction)ring_counts, METH_NOARGS,
     "(messages put, messages taken), each modulo 2**32."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef ring_getset[] = {
    {"capacity", (getter)ring_capacity, NULL, "bytes of record space", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "serentak._os._native.Ring",
    .tp_doc = "Ring(fd, size)\n\nA crash-consistent ring of records in a mapping of memfd `fd`.",
    .tp_as_buffer = &ring_as_buffer,
    .tp_basicsize = sizeof(RingObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)ring_init,
    .tp_dealloc = (destructor)ring_dealloc,
    .tp_methods = ring_methods,
    .tp_getset = ring_getset,
};

int
serentak_ring_init(PyObject *module)
{
    if (PyType_Ready(&RingType) < 0) {
        return -1;
    }
    Py_INCREF(&RingType);
    if (PyModule_AddObject(module, "Ring", (PyObject *)&RingType) < 0) {
        Py_DECREF(&RingType);
        return -1;
    }
    if (PyModule_AddIntConstant(module, "RING_HEADER", RING_HEADER) < 0 ||
        PyModule_AddIntConstant(module, "RING_HOLD", RING_HOLD) < 0 ||
        PyModule_AddIntConstant(module, "RING_WRITER_LOCK", offsetof(ring_header, wlock)) < 0 ||
        PyModule_AddIntConstant(module, "RING_WRITER_STAMP", offsetof(ring_header, wlock_stamp)) < 0 ||
        PyModule_AddIntConstant(module, "RING_SPACE_WAITERS",
                                offsetof(ring_header, space_waiters)) < 0 ||
        PyModule_AddIntConstant(module, "RING_SIDE_TAG", offsetof(ring_header, side_tag)) < 0 ||
        PyModule_AddIntConstant(module, "RING_READER_LOCK", offsetof(ring_header, rlock)) < 0 ||
        PyModule_AddIntConstant(module, "RING_HEAD_COUNT",
                                offsetof(ring_header, head) + 4 * COUNT_HALF) < 0 ||
        PyModule_AddIntConstant(module, "RING_USER", sizeof(ring_header)) < 0) {
        return -1;
    }
    return 0;
}
