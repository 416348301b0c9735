/* Process-level primitives: fork, parent-death signal, shm names, liveness. */
#include "native.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifdef __linux__
#include <sys/prctl.h>
#endif

/* ---- pid / tid caches --------------------------------------------------
 * Locks record their owner by pid (and tid for RLock) on every acquire, so
 * both are cached. A fork bumps the generation, which invalidates every
 * thread's cached tid and the process-wide pid at once. */

static atomic_uint fork_generation = 1;
static pid_t cached_pid = 0;
static unsigned cached_pid_generation = 0;
/* initial-exec: read at a fixed offset from the thread pointer, where the
 * default model for a shared object calls __tls_get_addr through the PLT on
 * every lock acquire. These 8 bytes fit the static TLS reserve the loader
 * keeps for modules opened later, as Python extensions are. */
#if defined(__GNUC__) || defined(__clang__)
#define SERENTAK_FAST_TLS __thread __attribute__((tls_model("initial-exec")))
#else
#define SERENTAK_FAST_TLS __thread
#endif
static SERENTAK_FAST_TLS pid_t cached_tid = 0;
static SERENTAK_FAST_TLS unsigned cached_tid_generation = 0;

static void
after_fork_in_child(void)
{
    atomic_fetch_add(&fork_generation, 1);
}

pid_t
serentak_getpid(void)
{
    unsigned generation = atomic_load_explicit(&fork_generation, memory_order_relaxed);
    if (cached_pid_generation != generation) {
        cached_pid = getpid();
        cached_pid_generation = generation;
    }
    return cached_pid;
}

pid_t
serentak_gettid(void)
{
    unsigned generation = atomic_load_explicit(&fork_generation, memory_order_relaxed);
    if (cached_tid_generation != generation) {
#ifdef SYS_gettid
        cached_tid = (pid_t)syscall(SYS_gettid);
#else
        cached_tid = (pid_t)(uintptr_t)pthread_self();
#endif
        cached_tid_generation = generation;
    }
    return cached_tid;
}

/* ---- owner stamps (see native.h) ----------------------------------------
 * The start time is field 22 of /proc/PID/stat, counted after the command
 * name, which ends at the last ')' (a name may hold spaces and parentheses). */

static uint32_t
start_stamp_of(pid_t pid)
{
#ifdef __linux__
    char path[64];
    char text[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return 0;
    }
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0) {
        return 0;
    }
    text[n] = '\0';
    char *p = strrchr(text, ')');
    if (p == NULL) {
        return 0;
    }
    /* After ") ": state is field 3, starttime field 22: skip 19 fields. */
    p += 2;
    for (int field = 3; field < 22 && *p; field++) {
        while (*p && *p != ' ') {
            p++;
        }
        while (*p == ' ') {
            p++;
        }
    }
    unsigned long long ticks = strtoull(p, NULL, 10);
    uint32_t stamp = (uint32_t)ticks;
    return stamp ? stamp : 1;
#else
    (void)pid;
    return 0;
#endif
}

static uint32_t cached_stamp = 0;
static unsigned cached_stamp_generation = 0;

uint32_t
serentak_start_stamp(void)
{
    unsigned generation = atomic_load_explicit(&fork_generation, memory_order_relaxed);
    if (cached_stamp_generation != generation) {
        cached_stamp = start_stamp_of(serentak_getpid());
        cached_stamp_generation = generation;
    }
    return cached_stamp;
}

int
serentak_owner_gone(pid_t pid, uint32_t stamp)
{
    int gone = serentak_pid_gone(pid);
    if (gone != 0 || stamp == 0) {
        return gone;
    }
    uint32_t now = start_stamp_of(pid);
    /* 0: it could not be read (it may have just exited): the pid decides. */
    return now != 0 && now != stamp;
}

int
serentak_take_over(_Atomic uint32_t *word, _Atomic uint32_t *stamp, uint32_t seen,
                   uint32_t pid_mask, uint32_t desired)
{
    uint32_t owner = seen & pid_mask;
    if (owner == 0 || owner == (desired & pid_mask)) {
        return 0;
    }
    uint32_t owner_stamp = atomic_load(stamp);
    if (serentak_owner_gone((pid_t)owner, owner_stamp) != 1) {
        return 0;
    }
    /* Clear the dead owner's stamp first (only if it is still there), so that
     * nobody ever sees our pid beside it. */
    if (owner_stamp != 0 && !atomic_compare_exchange_strong(stamp, &owner_stamp, 0)) {
        return 0;
    }
    if (!atomic_compare_exchange_strong(word, &seen, desired)) {
        return 0;
    }
    atomic_store(stamp, serentak_start_stamp());
    return 1;
}

static PyObject *
native_owner_gone(PyObject *self, PyObject *args)
{
    int pid;
    unsigned int stamp;
    if (!PyArg_ParseTuple(args, "iI", &pid, &stamp)) {
        return NULL;
    }
    int gone = serentak_owner_gone((pid_t)pid, (uint32_t)stamp);
    if (gone < 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyBool_FromLong(gone);
}

static PyObject *
native_start_stamp(PyObject *self, PyObject *unused)
{
    return PyLong_FromUnsignedLong(serentak_start_stamp());
}

/* ---- liveness ----------------------------------------------------------
 * kill(pid, 0) succeeds on a zombie, and a lock holder SIGKILLed by its
 * parent stays a zombie until that same parent reaps it, which it may be
 * blocked from doing because it waits for the lock. A pidfd polls readable
 * as soon as the process has exited, zombie or not. */

int
serentak_pid_gone(pid_t pid)
{
    if (pid <= 0) {
        return 1;
    }
#if defined(__linux__) && defined(SYS_pidfd_open)
    int fd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (fd >= 0) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int ready = poll(&pfd, 1, 0);
        close(fd);
        if (ready < 0) {
            return -1;
        }
        return ready > 0 ? 1 : 0;
    }
    if (errno == ESRCH || errno == EINVAL) {
        /* EINVAL: the pid now names a thread that is not a process leader,
         * so the process that had it is certainly gone. */
        return 1;
    }
    if (errno != ENOSYS && errno != EPERM) {
        return -1;
    }
#endif
    if (kill(pid, 0) == 0 || errno == EPERM) {
        return 0;
    }
    return errno == ESRCH ? 1 : -1;
}

static PyObject *
native_pid_gone(PyObject *self, PyObject *arg)
{
    long pid = PyLong_AsLong(arg);
    if (pid == -1 && PyErr_Occurred()) {
        return NULL;
    }
    int gone = serentak_pid_gone((pid_t)pid);
    if (gone < 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyBool_FromLong(gone);
}

/* ---- fork --------------------------------------------------------------
 * os.fork() warns (DeprecationWarning, 3.12+) when the process has threads.
 * The 'fork' start method is the user's explicit choice and the pool forks
 * from its manager thread by design, so the launcher forks through here: the
 * same interpreter hooks as os.fork() (at-fork callbacks, lock re-init), no
 * warning. */

static PyObject *
native_fork(PyObject *self, PyObject *unused)
{
    PyOS_BeforeFork();
    pid_t pid = fork();
    int saved_errno = errno;
    if (pid == 0) {
        PyOS_AfterFork_Child();
        return PyLong_FromLong(0);
    }
    PyOS_AfterFork_Parent();
    if (pid < 0) {
        errno = saved_errno;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong((long)pid);
}

/* ---- parent-death signal ------------------------------------------------ */

static PyObject *
native_set_pdeathsig(PyObject *self, PyObject *arg)
{
    long sig = PyLong_AsLong(arg);
    if (sig == -1 && PyErr_Occurred()) {
        return NULL;
    }
#ifdef PR_SET_PDEATHSIG
    if (prctl(PR_SET_PDEATHSIG, (unsigned long)sig, 0, 0, 0) != 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_TRUE;
#else
    (void)sig;
    Py_RETURN_FALSE; /* no such facility: the caller falls back to watching the parent */
#endif
}

/* ---- POSIX shared-memory names ------------------------------------------ */

static PyObject *
native_shm_open(PyObject *self, PyObject *args)
{
    const char *name;
    int flags;
    int mode = 0600;
    if (!PyArg_ParseTuple(args, "si|i:shm_open", &name, &flags, &mode)) {
        return NULL;
    }
    int fd;
    Py_BEGIN_ALLOW_THREADS
    fd = shm_open(name, flags | O_CLOEXEC, (mode_t)mode);
    Py_END_ALLOW_THREADS
    if (fd < 0) {
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, name);
    }
    return PyLong_FromLong(fd);
}

static PyObject *
native_shm_unlink(PyObject *self, PyObject *arg)
{
    const char *name = PyUnicode_AsUTF8(arg);
    if (name == NULL) {
        return NULL;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = shm_unlink(name);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, name);
    }
    Py_RETURN_NONE;
}

static PyObject *
native_gettid(PyObject *self, PyObject *unused)
{
    return PyLong_FromLong((long)serentak_gettid());
}

/* ---- buffers ------------------------------------------------------------ */

static PyObject *
native_buffer_address(PyObject *self, PyObject *arg)
{
    /* Where a buffer's bytes are in memory, read-only buffers included
     * (ctypes can only tell for writable ones): used to recognise data that
     * already lives in a shared segment, which then travels without a copy. */
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    PyObject *address = PyLong_FromVoidPtr(view.buf);
    PyBuffer_Release(&view);
    return address;
}

/* Copy a big contiguous buffer into another without holding the GIL: a sender
 * copying arrays into shared memory (milliseconds per 64 MiB) would otherwise
 * keep its process's other threads (the pool's engine sending the previous
 * task, a reader) waiting for the whole copy plus a switch interval. */
static PyObject *
native_copy_into(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "copy_into(target, source) takes 2 arguments, got %zd",
                     nargs);
        return NULL;
    }
    Py_buffer target, source;
    if (PyObject_GetBuffer(args[0], &target, PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &source, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&target);
        return NULL;
    }
    if (target.len != source.len) {
        PyErr_Format(PyExc_ValueError,
                     "copy_into: the target holds %zd bytes and the source %zd: they must match",
                     target.len, source.len);
    }
    else if (source.len >= (1 << 16)) {
        Py_BEGIN_ALLOW_THREADS
        memmove(target.buf, source.buf, (size_t)source.len);
        Py_END_ALLOW_THREADS
    }
    else {
        memmove(target.buf, source.buf, (size_t)source.len);
    }
    PyBuffer_Release(&source);
    PyBuffer_Release(&target);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ---- plain data ------------------------------------------------------------ */

/* Is `obj` made only of exact str, bytes, int, float, complex, bool and None,
 * in exact tuples, lists, dicts, sets and frozensets, with at most *budget
 * objects in all (a KiB of str or bytes counting as an object)? Such data pickles the same with the plain C pickler as with
 * serentak's (whose reducer_override pickle never calls for these types), and
 * carries no function to ship by value and no handle with an fd; a check here
 * costs far less than setting up the full pickler for a small message.
 * Iterating exact builtin containers runs no Python code. */
static int
plain_walk(PyObject *obj, Py_ssize_t *budget, int depth)
{
    if (--*budget < 0 || depth > 16) {
        return 0;
    }
    PyTypeObject *type = Py_TYPE(obj);
    if (type == &PyBytes_Type || type == &PyUnicode_Type) {
        /* Each KiB counts as one more object: pickle.dumps grows its output
         * buffer as it goes, which for a MiB costs many times what a reused
         * pickler's stream does. */
        Py_ssize_t size = type == &PyBytes_Type ? PyBytes_GET_SIZE(obj) : PyUnicode_GET_LENGTH(obj);
        *budget -= size >> 10;
        return *budget >= 0;
    }
    if (type == &PyLong_Type || type == &PyFloat_Type || obj == Py_None ||
        type == &PyBool_Type || type == &PyComplex_Type) {
        return 1;
    }
    if (type == &PyTuple_Type || type == &PyList_Type) {
        /* A list may not change size meanwhile: nothing here releases the GIL. */
        Py_ssize_t size = PySequence_Fast_GET_SIZE(obj);
        PyObject **items = PySequence_Fast_ITEMS(obj);
        if (size > *budget) {
            return 0;
        }
        for (Py_ssize_t i = 0; i < size; i++) {
            if (!plain_walk(items[i], budget, depth + 1)) {
                return 0;
            }
        }
        return 1;
    }
    if (type == &PyDict_Type) {
        Py_ssize_t position = 0;
        PyObject *key, *value;
        if (PyDict_GET_SIZE(obj) * 2 > *budget) {
            return 0;
        }
        while (PyDict_Next(obj, &position, &key, &value)) {
            if (!plain_walk(key, budget, depth + 1) || !plain_walk(value, budget, depth + 1)) {
                return 0;
            }
        }
        return 1;
    }
    if (type == &PySet_Type || type == &PyFrozenSet_Type) {
        if (PySet_GET_SIZE(obj) > *budget) {
            return 0;
        }
        /* The iterator of an exact set runs no Python code either. */
        PyObject *iterator = PyObject_GetIter(obj);
        if (iterator == NULL) {
            PyErr_Clear();
            return 0;
        }
        int plain = 1;
        PyObject *key;
        while (plain && (key = PyIter_Next(iterator)) != NULL) {
            plain = plain_walk(key, budget, depth + 1);
            Py_DECREF(key);
        }
        Py_DECREF(iterator);
        if (PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
        return plain;
    }
    return 0;
}

static PyObject *
native_plain_data(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "plain_data(obj, budget) takes 2 arguments");
        return NULL;
    }
    Py_ssize_t budget = PyLong_AsSsize_t(args[1]);
    if (budget == -1 && PyErr_Occurred()) {
        return NULL;
    }
    return PyBool_FromLong(plain_walk(args[0], &budget, 0));
}

/* ---- polling without sleeping --------------------------------------------- */

/* spin_readable(fd, seconds) -> bool: poll(2) `fd` with a zero timeout, again
 * and again, until it is readable (or at EOF, or in error) or `seconds` have
 * passed; the GIL is released meanwhile. For a reply due within microseconds:
 * on a virtual machine, waking a sleeping thread costs tens of them, and a
 * loop in Python would hold the GIL and react a loop's length late. Between
 * polls the CPU is offered to any other task waiting for it (sched_yield
 * returns at once when none is): when the CPUs are oversubscribed, the poller
 * must not keep the process it waits for from running. */
static PyObject *
native_spin_readable(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "spin_readable(fd, seconds) takes 2 arguments");
        return NULL;
    }
    int fd = PyLong_AsLong(args[0]);
    if (fd == -1 && PyErr_Occurred()) {
        return NULL;
    }
    double seconds = PyFloat_AsDouble(args[1]);
    if (seconds == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    if (fd < 0) {
        PyErr_Format(PyExc_ValueError, "spin_readable: bad file descriptor %d", fd);
        return NULL;
    }
    struct pollfd entry = {.fd = fd, .events = POLLIN};
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    int64_t deadline = (int64_t)now.tv_sec * 1000000000 + now.tv_nsec +
                       (int64_t)(seconds > 0 ? seconds * 1e9 : 0);
    int ready;
    int error = 0;
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        ready = poll(&entry, 1, 0);
        if (ready != 0) {
            if (ready < 0 && errno == EINTR) {
                continue;
            }
            error = errno;
            break;
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((int64_t)now.tv_sec * 1000000000 + now.tv_nsec >= deadline) {
            break;
        }
        sched_yield();
    }
    Py_END_ALLOW_THREADS
    if (ready < 0) {
        errno = error;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyBool_FromLong(ready > 0);
}

/* ---- waking a thread ------------------------------------------------------ */

static PyObject *
native_poke(PyObject *self, PyObject *arg)
{
    /* Write one byte to a non-blocking fd *holding the GIL*: the thread woken
     * by it (a pool's manager) does not snatch the GIL from the caller in the
     * middle of the call, it gets it when the caller next waits. A full pipe
     * is fine (the reader has wake-ups pending); any other error is raised. */
    int fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (write(fd, "!", 1) < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

/* recv_into(fd, buffer, span=None) -> nbytes, or (nbytes, [fds]) when descriptors
 * came with the bytes. One recvmsg(2) into a writable buffer, the GIL released
 * while it waits: what socket.recvmsg_into does, without its argument parsing,
 * result tuple and control-buffer allocation on every call. Received fds are
 * close-on-exec.
 *
 * With a `span` (seconds; the main thread passes one), the wait for bytes
 * lasts at most that long at a time, and the signal handlers run between
 * spans: a signal another thread took does not end a blocking recvmsg, yet
 * the main thread must act on it. Bytes already there cost the one recvmsg,
 * with MSG_DONTWAIT. Only if none are is SO_RCVTIMEO set to the span, and
 * cleared after (a Connection's reads block): the recvmsg then still sleeps
 * in the socket and is woken directly by the writer, where a poll(2) and
 * another recvmsg add a third to a ping-pong's round trip.
 *
 * The option belongs to the socket, not to this descriptor: a reader of the
 * same socket elsewhere (one reader at a time is the rule, but a process
 * killed in the middle of a wait leaves the option set) sees its blocking
 * recvmsg time out. Without a span, such a timeout on a blocking descriptor is
 * taken for what it is and the read goes on. */
#define RECV_MAX_FDS 253

static PyObject *
native_recv_into(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 && nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "recv_into(fd, buffer, span=None) takes 2 or 3 arguments");
        return NULL;
    }
    int fd = PyLong_AsLong(args[0]);
    if (fd == -1 && PyErr_Occurred()) {
        return NULL;
    }
    int spanned = nargs == 3 && args[2] != Py_None;
    struct timeval span = {0, 0};
    if (spanned) {
        double seconds = PyFloat_AsDouble(args[2]);
        if (seconds == -1.0 && PyErr_Occurred()) {
            return NULL;
        }
        if (!(seconds > 0.0 && seconds < 3600.0)) {
            PyErr_SetString(PyExc_ValueError, "span must be between 0 and 3600 seconds");
            return NULL;
        }
        long micros = (long)(seconds * 1e6);
        span.tv_sec = micros / 1000000;
        span.tv_usec = micros % 1000000 + (micros == 0); /* a zero timeval would never time out */
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        return NULL;
    }
    union {
        struct cmsghdr align;
        char space[CMSG_SPACE(RECV_MAX_FDS * sizeof(int))];
    } control;
    struct iovec iov = {view.buf, (size_t)view.len};
    struct msghdr msg;
    ssize_t got;
    int flags = spanned ? MSG_DONTWAIT : 0;
    int failed = 0, raised = 0, timed = 0;
    for (;;) {
        memset(&msg, 0, sizeof(msg));
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.space;
        msg.msg_controllen = sizeof(control.space);
        Py_BEGIN_ALLOW_THREADS
        got = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | flags);
        Py_END_ALLOW_THREADS
        if (got >= 0) {
            break;
        }
        failed = errno;
        if (failed == EAGAIN && spanned && !timed) {
            /* Nothing there: sleep in recvmsg, a span at a time. */
            if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &span, sizeof span) < 0) {
                failed = errno;
                break;
            }
            timed = 1;
            flags = 0;
            continue;
        }
        if (failed == EAGAIN && !spanned && !(fcntl(fd, F_GETFL) & O_NONBLOCK)) {
            continue; /* a timeout someone else set on the socket (see above) */
        }
        if (failed != EINTR && !(failed == EAGAIN && timed)) {
            break;
        }
        if (PyErr_CheckSignals() < 0) { /* a handler raised (Ctrl-C): nothing was read */
            raised = 1;
            break;
        }
    }
    if (timed) {
        static const struct timeval none = {0, 0};
        (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof none);
    }
    PyBuffer_Release(&view);
    if (raised) {
        return NULL;
    }
    if (got < 0) {
        errno = failed;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *fds = NULL;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
            continue;
        }
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *received = (int *)CMSG_DATA(c);
        if (fds == NULL && (fds = PyList_New(0)) == NULL) {
            for (size_t i = 0; i < count; i++) {
                close(received[i]);
            }
            return NULL;
        }
        for (size_t i = 0; i < count; i++) {
            PyObject *number = PyLong_FromLong(received[i]);
            if (number == NULL || PyList_Append(fds, number) < 0) {
                Py_XDECREF(number);
                for (size_t j = i; j < count; j++) {
                    close(received[j]);
                }
                Py_DECREF(fds);
                return NULL;
            }
            Py_DECREF(number);
        }
    }
    if (fds == NULL) {
        return PyLong_FromSsize_t(got);
    }
    return Py_BuildValue("(nN)", got, fds);
}

/* ---- sending one frame ----------------------------------------------------
 *
 * A frame is the connection's (see serentak/_ipc/connection.py): a u32
 * little-endian length, or 0x7FFFFFFF and a u64 length for 2 GiB and more,
 * then the payload. write_frame writes one in a single system call: a small
 * one copied with its header into a stack buffer for one send(2) (cheaper in
 * the kernel than a two-iovec sendmsg), a bigger one as two iovecs (no copy
 * of the payload).
 *
 * Over a socket the call never waits (MSG_DONTWAIT): what did not fit is left
 * to the caller, who knows whether it may block in this thread or must wait
 * in spans so that the main thread sees a Ctrl-C. Such a send keeps the GIL
 * up to FRAME_KEEP_GIL bytes: it cannot sleep, and giving the GIL up and
 * taking it back would cost more than the copy. A pipe end cannot be told not
 * to wait: write blocks, without the GIL, as os.write does.
 *
 * Returns the bytes of the frame not written (0: all went), or -1 with an
 * exception set. */
#define FRAME_LONG_FOLLOWS 0x7FFFFFFFu
#define FRAME_KEEP_GIL (64 * 1024)
#define FRAME_COPY 2048

static Py_ssize_t
write_frame(int fd, const char *payload, Py_ssize_t length, int is_socket)
{
    char small[12 + FRAME_COPY];
    unsigned char *header = (unsigned char *)small;
    size_t header_size = 4;
    uint32_t word = (uint64_t)length < FRAME_LONG_FOLLOWS ? (uint32_t)length : FRAME_LONG_FOLLOWS;
    for (int i = 0; i < 4; i++) {
        header[i] = (unsigned char)(word >> (8 * i));
    }
    if (word == FRAME_LONG_FOLLOWS) {
        for (int i = 0; i < 8; i++) {
            header[4 + i] = (unsigned char)((uint64_t)length >> (8 * i));
        }
        header_size = 12;
    }
    size_t total = header_size + (size_t)length;
    int copied = length <= FRAME_COPY;
    if (copied) {
        memcpy(small + header_size, payload, (size_t)length);
    }
    struct iovec iov[2] = {{small, header_size}, {(void *)payload, (size_t)length}};
    ssize_t sent;
    int failed = 0;
    for (;;) {
        if (is_socket && copied) {
            sent = send(fd, small, total, MSG_DONTWAIT);
        } else if (is_socket) {
            struct msghdr msg;
            memset(&msg, 0, sizeof(msg));
            msg.msg_iov = iov;
            msg.msg_iovlen = 2;
            if (length <= FRAME_KEEP_GIL) {
                sent = sendmsg(fd, &msg, MSG_DONTWAIT);
            } else {
                Py_BEGIN_ALLOW_THREADS
                sent = sendmsg(fd, &msg, MSG_DONTWAIT);
                Py_END_ALLOW_THREADS
            }
        } else {
            Py_BEGIN_ALLOW_THREADS
            sent = copied ? write(fd, small, total) : writev(fd, iov, 2);
            Py_END_ALLOW_THREADS
        }
        if (sent >= 0) {
            break;
        }
        failed = errno;
        if (is_socket && (failed == EAGAIN || failed == EWOULDBLOCK)) {
            sent = 0; /* full: the caller waits for room */
            break;
        }
        if (failed != EINTR) {
            errno = failed;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        if (PyErr_CheckSignals() < 0) { /* a handler raised (Ctrl-C): nothing was written */
            return -1;
        }
    }
    return (Py_ssize_t)(total - (size_t)sent);
}

static int
frame_fd(PyObject *number, PyObject *socket_flag, int *is_socket)
{
    int fd = PyLong_AsLong(number);
    if (fd == -1 && PyErr_Occurred()) {
        return -1;
    }
    if ((*is_socket = PyObject_IsTrue(socket_flag)) < 0) {
        return -1;
    }
    return fd;
}

/* send_frame(fd, payload, socket) -> bytes of the frame not written (0: all went). */
static PyObject *
native_send_frame(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "send_frame(fd, payload, socket) takes 3 arguments");
        return NULL;
    }
    int is_socket;
    int fd = frame_fd(args[0], args[2], &is_socket);
    if (fd == -1) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_C_CONTIGUOUS) < 0) {
        return NULL;
    }
    Py_ssize_t unsent = write_frame(fd, view.buf, view.len, is_socket);
    PyBuffer_Release(&view);
    return unsent < 0 ? NULL : PyLong_FromSsize_t(unsent);
}

/* send_plain(fd, obj, socket, budget, protocol) -> None when `obj` went whole;
 * False when it is not plain data (see plain_data: the caller pickles it its
 * own way, nothing was written); (payload, unsent) when the socket had no room
 * for all of its frame, whose last `unsent` bytes the caller must write.
 *
 * The common send of a small message in one call: the plain-data check,
 * pickle.dumps(obj, protocol) and the frame's write. */
static PyObject *pickle_dumps = NULL;

static PyObject *
native_send_plain(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError,
                        "send_plain(fd, obj, socket, budget, protocol) takes 5 arguments");
        return NULL;
    }
    int is_socket;
    int fd = frame_fd(args[0], args[2], &is_socket);
    if (fd == -1) {
        return NULL;
    }
    Py_ssize_t budget = PyLong_AsSsize_t(args[3]);
    if (budget == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (!plain_walk(args[1], &budget, 0)) {
        Py_RETURN_FALSE;
    }
    if (pickle_dumps == NULL) {
        PyObject *pickle = PyImport_ImportModule("pickle");
        if (pickle == NULL) {
            return NULL;
        }
        pickle_dumps = PyObject_GetAttrString(pickle, "dumps");
        Py_DECREF(pickle);
        if (pickle_dumps == NULL) {
            return NULL;
        }
    }
    PyObject *call[2] = {args[1], args[4]};
    PyObject *payload = PyObject_Vectorcall(pickle_dumps, call, 2, NULL);
    if (payload == NULL) {
        return NULL;
    }
    if (!PyBytes_Check(payload)) {
        Py_DECREF(payload);
        PyErr_SetString(PyExc_TypeError, "pickle.dumps returned no bytes");
        return NULL;
    }
    Py_ssize_t unsent =
        write_frame(fd, PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload), is_socket);
    if (unsent <= 0) {
        Py_DECREF(payload);
        if (unsent < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(Nn)", payload, unsent);
}

/* load_frame(buffer, start, end) -> (obj, next_start), or None.
 *
 * The common receive: a whole frame without fds and of a u32 length lies in
 * buffer[start:end] (a connection's read buffer); its payload is unpickled in
 * place, through a memoryview on the buffer's bytes, and the position after it
 * returned. None when no such frame is there: the caller takes its slow path.
 * If unpickling raises, the frame is not consumed here: the caller skips it. */
static PyObject *pickle_loads = NULL;

static PyObject *
native_load_frame(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "load_frame(buffer, start, end) takes 3 arguments");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t end = PyLong_AsSsize_t(args[2]);
    if (end == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (end - start < 4) {
        Py_RETURN_NONE;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (start < 0 || end > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "load_frame: start and end outside the buffer");
        return NULL;
    }
    const unsigned char *bytes = (const unsigned char *)view.buf + start;
    uint32_t word = (uint32_t)bytes[0] | (uint32_t)bytes[1] << 8 | (uint32_t)bytes[2] << 16 |
                    (uint32_t)bytes[3] << 24;
    /* Bit 31 (fds) and the long-length word are both at least FRAME_LONG_FOLLOWS. */
    if (word >= FRAME_LONG_FOLLOWS || (Py_ssize_t)word > end - start - 4) {
        PyBuffer_Release(&view);
        Py_RETURN_NONE;
    }
    if (pickle_loads == NULL) {
        PyObject *pickle = PyImport_ImportModule("pickle");
        if (pickle != NULL) {
            pickle_loads = PyObject_GetAttrString(pickle, "loads");
            Py_DECREF(pickle);
        }
        if (pickle_loads == NULL) {
            PyBuffer_Release(&view);
            return NULL;
        }
    }
    PyObject *payload = PyMemoryView_FromMemory((char *)bytes + 4, word, PyBUF_READ);
    PyObject *obj = NULL;
    if (payload != NULL) {
        obj = PyObject_CallOneArg(pickle_loads, payload);
        if (Py_REFCNT(payload) > 1) {
            /* Someone kept the view: it must not read the buffer once it is reused. */
            PyObject *released = PyObject_CallMethod(payload, "release", NULL);
            Py_XDECREF(released);
            if (released == NULL) {
                PyErr_Clear();
            }
        }
        Py_DECREF(payload);
    }
    PyBuffer_Release(&view);
    if (obj == NULL) {
        return NULL;
    }
    return Py_BuildValue("(Nn)", obj, start + 4 + (Py_ssize_t)word);
}

PyMethodDef serentak_proc_methods[] = {
    {"recv_into", (PyCFunction)(void (*)(void))native_recv_into, METH_FASTCALL,
     "recv_into(fd, buffer, span=None) -> nbytes, or (nbytes, [fds]) if descriptors came\n"
     "(close-on-exec). With a span, waits at most that many seconds at a time and\n"
     "runs the signal handlers in between."},
    {"poke", native_poke, METH_O,
     "Write a byte to a non-blocking fd without releasing the GIL (EAGAIN ignored)."},
    {"fork", native_fork, METH_NOARGS, "fork() with the interpreter's hooks and no thread warning."},
    {"set_pdeathsig", native_set_pdeathsig, METH_O,
     "Signal to receive when the parent thread dies; False where the OS has no such facility."},
    {"pid_gone", native_pid_gone, METH_O, "True if the process has exited (zombies count as gone)."},
    {"owner_gone", native_owner_gone, METH_VARARGS,
     "owner_gone(pid, stamp): True if the lock owner so named has exited or its pid was reused."},
    {"start_stamp", native_start_stamp, METH_NOARGS,
     "This process's start stamp (see owner_gone); 0 where the OS does not tell."},
    {"shm_open", native_shm_open, METH_VARARGS, "shm_open(name, flags, mode=0o600) -> fd."},
    {"shm_unlink", native_shm_unlink, METH_O, "shm_unlink(name)."},
    {"gettid", native_gettid, METH_NOARGS, "The calling thread's kernel thread id."},
    {"buffer_address", native_buffer_address, METH_O, "The address of a contiguous buffer's bytes."},
    {"plain_data", (PyCFunction)(void (*)(void))native_plain_data, METH_FASTCALL,
     "plain_data(obj, budget) -> True if obj is at most `budget` objects (or KiB of str and\n"
     "bytes) of exact str, bytes, int, float, complex, bool, None, in exact tuples, lists,\n"
     "dicts, sets, frozensets."},
    {"copy_into", (PyCFunction)(void (*)(void))native_copy_into, METH_FASTCALL,
     "copy_into(target, source): copy a contiguous buffer into a writable one of the same\n"
     "length, without the GIL when it is big."},
    {"spin_readable", (PyCFunction)(void (*)(void))native_spin_readable, METH_FASTCALL,
     "spin_readable(fd, seconds) -> True once fd polls readable (or at EOF), False if\n"
     "`seconds` pass first; polls without sleeping, the GIL released."},
    {"send_frame", (PyCFunction)(void (*)(void))native_send_frame, METH_FASTCALL,
     "send_frame(fd, payload, socket) -> bytes of the frame not written: header and payload\n"
     "in one call; over a socket it never waits (what did not fit is left to the caller)."},
    {"send_plain", (PyCFunction)(void (*)(void))native_send_plain, METH_FASTCALL,
     "send_plain(fd, obj, socket, budget, protocol) -> None when sent whole, False when obj\n"
     "is not plain data (nothing sent), (payload, unsent) when the socket was full."},
    {"load_frame", (PyCFunction)(void (*)(void))native_load_frame, METH_FASTCALL,
     "load_frame(buffer, start, end) -> (obj, next_start) for a whole plain frame (no fds)\n"
     "at buffer[start:end], unpickled in place; None when there is none."},
    {NULL, NULL, 0, NULL},
};

int
serentak_proc_init(PyObject *module)
{
    static int registered = 0;
    if (!registered) {
        if (pthread_atfork(NULL, NULL, after_fork_in_child) != 0) {
            PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
            return -1;
        }
        registered = 1;
    }
    return 0;
}
