/* numpy's data memory, born in shared memory, in a pool worker.
 *
 * A pool worker returning a new big array (`a * 2`) used to pay twice: numpy
 * wrote the result into fresh private pages (a page fault and a zeroed page
 * per 4 KiB), then the result was copied into a pooled shared segment for
 * the way back. With this allocator installed (numpy >= 1.22's
 * PyDataMem_SetHandler, in the worker only), a big array is allocated in a
 * warm memfd segment of the worker's own, so the ufunc writes into pages
 * already faulted in, and the result travels by fd with no copy: the parent
 * maps the very same pages.
 *
 *     worker (this file)                          parent (buffers.py)
 *     malloc(n >= THRESHOLD): a free warm
 *       segment (or a new one): LIVE
 *     pack(result): ndalloc_locate() -> fd;
 *       busy word := SENT                  ---->  map, busy word := its pid
 *     free(): the segment is IDLE; reused         its arrays die: busy word := 0
 *       once its busy word is 0 again
 *
 * A segment is [64-byte header: busy word][data]; the busy word follows the
 * protocol of the pooled message segments (0 / SENT / receiver's pid / 0).
 *
 * A sent array the worker still holds (a cache of the user's) must not change
 * under the parent: after the reply, ndalloc_detach_sent() gives every such
 * array private pages (copied into an anonymous mapping, which mremap moves
 * onto the same address), and the segment is left to the receiver. A fork
 * does the same in the child for every live array (the child must not write
 * into the worker's segments), and the child's allocator is off: arrays of
 * processes other than the one that enabled it are plain.
 *
 * numpy's headers are not needed to build: the handler struct is declared
 * here as numpy's ndarraytypes.h defines it (version 1), and SetHandler /
 * GetHandler come from numpy's C-API table (_ARRAY_API, slots 304 and 305).
 *
 * Idle segments stay mapped, so the worker's resident size counts them,
 * though no task holds them: ndalloc_publish() names a word (in the worker's
 * progress segment) where the bytes the idle segments keep resident here are
 * kept up to date at every change, for the pool's memory limits to leave out.
 *
 * The callbacks may run without the GIL: the table is guarded by a mutex,
 * and nothing here calls into Python.
 */
#include "native.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MFD_CLOEXEC
#define MFD_CLOEXEC 0x0001U
#endif

/* As numpy's ndarraytypes.h declares them (handler version 1). */
typedef struct {
    void *ctx;
    void *(*malloc)(void *ctx, size_t size);
    void *(*calloc)(void *ctx, size_t nelem, size_t elsize);
    void *(*realloc)(void *ctx, void *ptr, size_t new_size);
    void (*free)(void *ctx, void *ptr, size_t size);
} DataMemAllocator;

typedef struct {
    char name[127];
    uint8_t version;
    DataMemAllocator allocator;
} DataMemHandler;

#define API_SET_HANDLER 304
#define API_GET_HANDLER 305

#define HEADER 64u                 /* the busy word, then unused (buffers.HEADER) */
#define SENT 0xFFFFFFFFu           /* buffers.SENT */
#define THRESHOLD (1u << 20)       /* smaller arrays stay with numpy's allocator */
#define POOL_SEGMENTS 32           /* segments kept at most (not counting live ones past it) */
#define POOL_BYTES (1ul << 30)     /* and bytes */
#define SLOTS 128                  /* live and pooled allocations tracked at once */

typedef enum {
    SLOT_EMPTY = 0,
    SLOT_IDLE,    /* a pooled segment no array here uses; free once its busy word is 0 */
    SLOT_LIVE,    /* a segment an array here lives in */
    SLOT_PRIVATE, /* a detached array: private anonymous pages, unmapped on free */
} SlotState;

typedef struct {
    SlotState state;
    char *base;     /* the mapping: header, then data */
    size_t size;    /* of the mapping */
    size_t used;    /* LIVE or PRIVATE: the header and the array's bytes */
    size_t touched; /* the most of it ever used here: what this process may have faulted in */
    int fd;         /* the memfd; -1 once private */
    int sent;       /* LIVE: packed into a message since it was handed out */
    int fresh;      /* never handed out: its pages are still zero */
    uint64_t stamp; /* when last used, for eviction */
} Slot;

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static Slot slots[SLOTS];
static uint64_t clock_now = 0;
static pid_t owner = 0;             /* the process it is enabled in; 0: nowhere */
static DataMemAllocator fallback;   /* the handler that was current when enabled */
static PyObject *fallback_capsule = NULL;
static PyObject *our_capsule = NULL;
static int atfork_registered = 0;

static DataMemHandler handler; /* filled in serentak_ndalloc_init */
static _Atomic uint64_t *published = NULL; /* where idle_bytes goes (ndalloc_publish); or NULL */

/* Write the bytes the IDLE segments keep resident here where ndalloc_publish
 * said: their pages this process touched (not a segment's untouched slack,
 * which is in no page table of ours). Locked. */
static void
publish_idle(void)
{
    if (published == NULL) {
        return;
    }
    uint64_t idle = 0;
    for (int i = 0; i < SLOTS; i++) {
        if (slots[i].state == SLOT_IDLE) {
            idle += slots[i].touched;
        }
    }
    atomic_store(published, idle);
}

static _Atomic uint32_t *
busy_word(Slot *slot)
{
    return (_Atomic uint32_t *)slot->base;
}

/* Whether no message of ours is in `slot` (never sent, released, or its holder died). */
static int
slot_free(Slot *slot)
{
    uint32_t holder = atomic_load(busy_word(slot));
    if (holder == 0) {
        return 1;
    }
    if (holder != SENT && serentak_pid_gone((pid_t)holder) == 1) {
        atomic_store(busy_word(slot), 0);
        return 1;
    }
    return 0;
}

static void
slot_close(Slot *slot)
{
    munmap(slot->base, slot->size);
    if (slot->fd >= 0) {
        close(slot->fd);
    }
    memset(slot, 0, sizeof(*slot));
}

/* Give `slot`'s array private pages at the same address: the shared pages stay
 * with whoever else maps them. Returns 0, or -1 (errno set; nothing changed). */
static int
slot_privatize(Slot *slot)
{
    void *copy = mmap(NULL, slot->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (copy == MAP_FAILED) {
        return -1;
    }
    /* Only the bytes in use: the rest of the new pages stay untouched, unallocated. */
    memcpy(copy, slot->base, slot->used);
    if (mremap(copy, slot->size, slot->size, MREMAP_MAYMOVE | MREMAP_FIXED, slot->base) ==
        MAP_FAILED) {
        munmap(copy, slot->size);
        return -1;
    }
    close(slot->fd);
    slot->fd = -1;
    slot->state = SLOT_PRIVATE;
    slot->sent = 0;
    return 0;
}

static int
enabled_here(void)
{
    return owner != 0 && owner == serentak_getpid();
}

/* A segment's size for an array of `size` bytes: the array's size rounded up in
 * steps of an eighth of a power of two (as buffers._capacity), so that arrays of
 * similar sizes share segments, then a page for the header. An array of a power
 * of two wastes nothing: the receiver maps (MAP_POPULATE) the whole segment,
 * and shmem allocates a page for every hole it reads. */
static size_t
capacity(size_t size)
{
    int bits = 0;
    for (size_t n = size; n; n >>= 1) {
        bits++;
    }
    size_t step = (size_t)1 << (bits - 4 > 12 ? bits - 4 : 12);
    return (size + step - 1) / step * step + 4096;
}

/* Make room for a new segment of `size` bytes: close pooled ones, those the
 * receiver still holds first (they are its memory now), then the oldest free
 * ones. Returns 0 if there is room, -1 if live arrays fill the pool. Locked. */
static int
make_room(size_t size)
{
    for (;;) {
        int count = 0;
        size_t bytes = 0;
        Slot *held = NULL, *idle = NULL;
        int empty = 0;
        for (int i = 0; i < SLOTS; i++) {
            Slot *slot = &slots[i];
            if (slot->state == SLOT_EMPTY) {
                empty = 1;
                continue;
            }
            if (slot->state == SLOT_PRIVATE) {
                continue;
            }
            count++;
            bytes += slot->size;
            if (slot->state == SLOT_IDLE) {
                if (!slot_free(slot)) {
                    if (held == NULL || slot->stamp < held->stamp) {
                        held = slot;
                    }
                } else if (idle == NULL || slot->stamp < idle->stamp) {
                    idle = slot;
                }
            }
        }
        if (empty && count < POOL_SEGMENTS && bytes + size <= POOL_BYTES) {
            return 0;
        }
        Slot *victim = held != NULL ? held : idle;
        if (victim == NULL) {
            return -1;
        }
        slot_close(victim);
    }
}

static void *
take(size_t size, int zeroed)
{
    if (size < THRESHOLD || size > SIZE_MAX - HEADER || !enabled_here()) {
        return NULL;
    }
    size_t need = HEADER + size;
    Slot *chosen = NULL;
    pthread_mutex_lock(&table_lock);
    for (int i = 0; i < SLOTS; i++) {
        Slot *slot = &slots[i];
        if (slot->state == SLOT_IDLE && slot->size >= need &&
            (chosen == NULL || slot->size < chosen->size) && slot_free(slot)) {
            chosen = slot;
        }
    }
    if (chosen == NULL && make_room(capacity(size)) == 0) {
        size_t cap = capacity(size);
        int fd = memfd_create("serentak-array", MFD_CLOEXEC);
        if (fd >= 0 && ftruncate(fd, (off_t)cap) == 0) {
            void *base = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            if (base != MAP_FAILED) {
                for (int i = 0; i < SLOTS; i++) {
                    if (slots[i].state == SLOT_EMPTY) {
                        chosen = &slots[i];
                        break;
                    }
                }
                chosen->base = base;
                chosen->size = cap;
                chosen->fd = fd;
                chosen->fresh = 1;
                fd = -1;
            }
        }
        if (fd >= 0) {
            close(fd);
        }
    }
    if (chosen == NULL) {
        publish_idle(); /* make_room may have closed idle segments */
        pthread_mutex_unlock(&table_lock);
        return NULL;
    }
    int fresh = chosen->fresh;
    chosen->state = SLOT_LIVE;
    chosen->used = need;
    if (chosen->touched < need) {
        chosen->touched = need;
    }
    chosen->sent = 0;
    chosen->fresh = 0;
    chosen->stamp = ++clock_now;
    char *data = chosen->base + HEADER;
    publish_idle(); /* an idle segment taken, or idle ones closed to make room */
    pthread_mutex_unlock(&table_lock);
    if (zeroed && !fresh) {
        memset(data, 0, size); /* a reused segment holds an old array's bytes */
    }
    return data;
}

/* The slot whose array starts at `ptr` (LIVE or PRIVATE), or NULL. Locked. */
static Slot *
find(void *ptr)
{
    for (int i = 0; i < SLOTS; i++) {
        Slot *slot = &slots[i];
        if ((slot->state == SLOT_LIVE || slot->state == SLOT_PRIVATE) &&
            slot->base + HEADER == (char *)ptr) {
            return slot;
        }
    }
    return NULL;
}

static void *
nd_malloc(void *ctx, size_t size)
{
    void *data = take(size, 0);
    return data != NULL ? data : fallback.malloc(fallback.ctx, size);
}

static void *
nd_calloc(void *ctx, size_t nelem, size_t elsize)
{
    if (elsize != 0 && nelem <= SIZE_MAX / elsize) {
        void *data = take(nelem * elsize, 1);
        if (data != NULL) {
            return data;
        }
    }
    return fallback.calloc(fallback.ctx, nelem, elsize);
}

/* Returns 1 if `ptr` was ours (and is freed now). */
static int
give_back(void *ptr)
{
    int ours = 0;
    pthread_mutex_lock(&table_lock);
    Slot *slot = find(ptr);
    if (slot != NULL) {
        ours = 1;
        if (slot->state == SLOT_PRIVATE) {
            munmap(slot->base, slot->size);
            memset(slot, 0, sizeof(*slot));
        }
        else {
            /* Reused once its busy word says no receiver holds it. */
            slot->state = SLOT_IDLE;
            slot->sent = 0;
            publish_idle();
        }
    }
    pthread_mutex_unlock(&table_lock);
    return ours;
}

static void
nd_free(void *ctx, void *ptr, size_t size)
{
    if (ptr != NULL && give_back(ptr)) {
        return;
    }
    fallback.free(fallback.ctx, ptr, size);
}

static void *
nd_realloc(void *ctx, void *ptr, size_t new_size)
{
    size_t old_size = 0;
    if (ptr != NULL) {
        pthread_mutex_lock(&table_lock);
        Slot *slot = find(ptr);
        if (slot != NULL) {
            old_size = slot->used - HEADER;
            if (slot->state == SLOT_LIVE && !slot->sent && new_size >= THRESHOLD &&
                new_size <= slot->size - HEADER) {
                /* It fits where it is (a shrink, or growth into the segment's slack). */
                slot->used = HEADER + new_size;
                if (slot->touched < slot->used) {
                    slot->touched = slot->used;
                }
                pthread_mutex_unlock(&table_lock);
                return ptr;
            }
        }
        pthread_mutex_unlock(&table_lock);
    }
    if (old_size == 0) {
        return fallback.realloc(fallback.ctx, ptr, new_size);
    }
    void *moved = nd_malloc(ctx, new_size ? new_size : 1);
    if (moved == NULL) {
        return NULL;
    }
    memcpy(moved, ptr, old_size < new_size ? old_size : new_size);
    give_back(ptr);
    return moved;
}

/* ---- fork ------------------------------------------------------------------ */

static void
before_fork(void)
{
    pthread_mutex_lock(&table_lock);
}

static void
after_fork_parent(void)
{
    pthread_mutex_unlock(&table_lock);
}

/* The child must not write into the worker's segments, nor hand them out:
 * live arrays get private pages, pooled segments are dropped, and the
 * allocator is off in the child (its arrays are plain). */
static void
after_fork_child(void)
{
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    table_lock = fresh;
    owner = 0;
    published = NULL; /* the worker's word: the child has nothing idle to tell there */
    for (int i = 0; i < SLOTS; i++) {
        Slot *slot = &slots[i];
        if (slot->state == SLOT_LIVE) {
            if (slot_privatize(slot) < 0) {
                /* No memory for a private copy: the child shares the pages. */
                close(slot->fd);
                slot->fd = -1;
                slot->state = SLOT_PRIVATE;
            }
        }
        else if (slot->state == SLOT_IDLE) {
            slot_close(slot);
        }
    }
}

/* ---- Python functions ------------------------------------------------------ */

static void **
numpy_api(void)
{
    const char *modules[] = {"numpy._core._multiarray_umath", "numpy.core._multiarray_umath"};
    for (size_t i = 0; i < sizeof(modules) / sizeof(*modules); i++) {
        PyObject *module = PyImport_ImportModule(modules[i]);
        if (module == NULL) {
            PyErr_Clear();
            continue;
        }
        /* The handler API (slots 304 and 305) came with numpy 1.22, as did
         * get_handler_name: an older table is shorter. */
        int recent = PyObject_HasAttrString(module, "get_handler_name");
        PyObject *capsule = recent ? PyObject_GetAttrString(module, "_ARRAY_API") : NULL;
        Py_DECREF(module);
        if (!recent) {
            PyErr_SetString(PyExc_ImportError, "numpy older than 1.22 has no memory handler API");
            return NULL;
        }
        if (capsule == NULL) {
            return NULL;
        }
        void **api = PyCapsule_GetPointer(capsule, NULL);
        Py_DECREF(capsule); /* the table is static in numpy's module, which stays loaded */
        return api;
    }
    PyErr_SetString(PyExc_ImportError, "numpy's C API (_multiarray_umath) could not be found");
    return NULL;
}

static PyObject *
ndalloc_enable(PyObject *self, PyObject *unused)
{
    if (enabled_here()) {
        Py_RETURN_FALSE;
    }
    void **api = numpy_api();
    if (api == NULL) {
        return NULL;
    }
    PyObject *(*set_handler)(PyObject *) = (PyObject * (*)(PyObject *)) api[API_SET_HANDLER];
    PyObject *(*get_handler)(void) = (PyObject * (*)(void)) api[API_GET_HANDLER];
    PyObject *current = get_handler();
    if (current == NULL) {
        return NULL;
    }
    DataMemHandler *previous = PyCapsule_GetPointer(current, "mem_handler");
    if (previous == NULL) {
        Py_DECREF(current);
        return NULL;
    }
    if (previous == &handler) {
        /* Ours already (inherited across a fork, in this context): the
         * fallback is still the one saved then. */
        Py_DECREF(current);
    }
    else {
        Py_XSETREF(fallback_capsule, current);
        fallback = previous->allocator;
    }
    if (!atfork_registered) {
        int error = pthread_atfork(before_fork, after_fork_parent, after_fork_child);
        if (error != 0) {
            errno = error;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        atfork_registered = 1;
    }
    PyObject *old = set_handler(our_capsule);
    if (old == NULL) {
        return NULL;
    }
    PyObject *now = get_handler();
    int taken = now == our_capsule;
    Py_XDECREF(now);
    if (!taken) {
        PyObject *ours = set_handler(old);
        Py_XDECREF(ours);
        Py_DECREF(old);
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ImportError, "numpy did not take the memory handler");
        }
        return NULL;
    }
    Py_DECREF(old);
    pthread_mutex_lock(&table_lock);
    owner = serentak_getpid();
    pthread_mutex_unlock(&table_lock);
    Py_RETURN_TRUE;
}

/* (fd, offset) of the live allocation holding `buffer`, now marked SENT; None
 * if no array of ours holds it. */
static PyObject *
ndalloc_locate(PyObject *self, PyObject *arg)
{
    if (!enabled_here()) {
        Py_RETURN_NONE;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    char *start = view.buf;
    char *end = start + view.len;
    PyBuffer_Release(&view);
    int fd = -1;
    Py_ssize_t offset = 0;
    pthread_mutex_lock(&table_lock);
    for (int i = 0; i < SLOTS; i++) {
        Slot *slot = &slots[i];
        if (slot->state == SLOT_LIVE && slot->base + HEADER <= start &&
            end <= slot->base + slot->size) {
            atomic_store(busy_word(slot), SENT);
            slot->sent = 1;
            fd = slot->fd;
            offset = start - slot->base;
            break;
        }
    }
    pthread_mutex_unlock(&table_lock);
    if (fd < 0) {
        Py_RETURN_NONE;
    }
    return Py_BuildValue("in", fd, offset);
}

/* After a reply went: every array sent and still alive here gets private
 * pages, unless its receiver has released it already. Returns how many. */
static PyObject *
ndalloc_detach_sent(PyObject *self, PyObject *unused)
{
    int detached = 0;
    int failed = 0;
    pthread_mutex_lock(&table_lock);
    for (int i = 0; i < SLOTS; i++) {
        Slot *slot = &slots[i];
        if (slot->state != SLOT_LIVE || !slot->sent) {
            continue;
        }
        if (slot_free(slot)) {
            slot->sent = 0; /* its receiver is done with it: the array may change again */
        }
        else if (slot_privatize(slot) == 0) {
            detached++;
        }
        else {
            failed = errno;
        }
    }
    pthread_mutex_unlock(&table_lock);
    if (failed) {
        errno = failed;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(detached);
}

/* ndalloc_publish(buffer): from now on keep the bytes idle segments hold
 * resident here in buffer's first 8 bytes (a native-endian u64, 8-aligned),
 * written atomically at every change; ndalloc_publish(None) stops it. The
 * caller keeps the buffer's memory mapped until then. */
static PyObject *
ndalloc_publish(PyObject *self, PyObject *arg)
{
    _Atomic uint64_t *word = NULL;
    if (arg != Py_None) {
        Py_buffer view;
        if (PyObject_GetBuffer(arg, &view, PyBUF_WRITABLE) < 0) {
            return NULL;
        }
        int fits = view.len >= 8 && ((uintptr_t)view.buf & 7) == 0;
        word = view.buf;
        PyBuffer_Release(&view);
        if (!fits) {
            PyErr_SetString(PyExc_ValueError, "ndalloc_publish needs 8 writable, 8-aligned bytes");
            return NULL;
        }
    }
    pthread_mutex_lock(&table_lock);
    published = word;
    publish_idle();
    pthread_mutex_unlock(&table_lock);
    Py_RETURN_NONE;
}

/* Close every idle segment (one its receiver still holds stays mapped there).
 * Returns the bytes they kept resident here. */
static PyObject *
ndalloc_trim(PyObject *self, PyObject *unused)
{
    uint64_t freed = 0;
    pthread_mutex_lock(&table_lock);
    for (int i = 0; i < SLOTS; i++) {
        if (slots[i].state == SLOT_IDLE) {
            freed += slots[i].touched;
            slot_close(&slots[i]);
        }
    }
    publish_idle();
    pthread_mutex_unlock(&table_lock);
    return PyLong_FromUnsignedLongLong(freed);
}

/* (live, pooled, private) allocations here, for tests. */
static PyObject *
ndalloc_counts(PyObject *self, PyObject *unused)
{
    int counts[4] = {0, 0, 0, 0};
    pthread_mutex_lock(&table_lock);
    for (int i = 0; i < SLOTS; i++) {
        counts[slots[i].state]++;
    }
    pthread_mutex_unlock(&table_lock);
    return Py_BuildValue("iii", counts[SLOT_LIVE], counts[SLOT_IDLE], counts[SLOT_PRIVATE]);
}

PyMethodDef serentak_ndalloc_methods[] = {
    {"ndalloc_enable", ndalloc_enable, METH_NOARGS,
     "Allocate numpy's big arrays in shared segments from now on, in this process and "
     "context (numpy must be importable). Returns False if it was on already."},
    {"ndalloc_locate", ndalloc_locate, METH_O,
     "(fd, offset) of the array segment holding a buffer, marked sent; or None."},
    {"ndalloc_detach_sent", ndalloc_detach_sent, METH_NOARGS,
     "Give sent arrays still alive here private pages; returns how many."},
    {"ndalloc_counts", ndalloc_counts, METH_NOARGS,
     "(live, pooled, private) array allocations of this process."},
    {"ndalloc_trim", ndalloc_trim, METH_NOARGS,
     "Close every idle array segment; returns the bytes they kept resident here."},
    {"ndalloc_publish", ndalloc_publish, METH_O,
     "Keep the bytes idle array segments hold resident here in a buffer's first 8 bytes "
     "(None: stop)."},
    {NULL, NULL, 0, NULL},
};

int
serentak_ndalloc_init(PyObject *module)
{
    memset(&handler, 0, sizeof(handler));
    strncpy(handler.name, "serentak_shared", sizeof(handler.name) - 1);
    handler.version = 1;
    handler.allocator.ctx = NULL;
    handler.allocator.malloc = nd_malloc;
    handler.allocator.calloc = nd_calloc;
    handler.allocator.realloc = nd_realloc;
    handler.allocator.free = nd_free;
    if (our_capsule == NULL) {
        our_capsule = PyCapsule_New(&handler, "mem_handler", NULL);
        if (our_capsule == NULL) {
            return -1;
        }
    }
    return 0;
}
