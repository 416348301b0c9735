/* The synchronized wrappers' base: a ctypes object and the lock that guards it.
 *
 * `with v.get_lock(): v.value += 1` takes the lock three times: once in the
 * `with`, and again (re-entering the RLock) in the read and in the write of
 * `value`. Written in Python, each access was a property frame with a
 * try/finally around two more calls, about 75 ns, and it ran inside the
 * critical section, where two processes incrementing one Value serialise:
 *
 *     Python property (was)                GuardedField (here), one C call
 *     self.acquire()  -> C, re-entry       acquire: SemLock fast path in C
 *     try: self._obj.value                 getattr(obj, name)
 *     finally: self.release() -> C         release: SemLock fast path in C
 *
 * So a wrapper's fields are GuardedField descriptors, and its item access,
 * get_lock(), get_obj(), __enter__ and __exit__ are C methods of Guarded.
 * A serentak Lock/RLock/Semaphore is driven directly (sync.c: the same
 * acquire as lock.acquire(), with its spinning, futex sleeps, dead-owner
 * takeover and Ctrl-C checks); any other lock object (the stdlib's, a
 * user's) through its own acquire() and release() methods, as the stdlib's
 * wrapper does.
 */
#include "native.h"

#include <structmember.h>

typedef struct {
    PyObject_HEAD
    PyObject *obj;  /* the ctypes object; NULL until set */
    PyObject *lock; /* what guards it; NULL until set */
    /* The bytes of a simple value bound by _bind_raw(), and its array-module
     * typecode ('i', 'd', ...); NULL and 0 otherwise, and again whenever _obj
     * is rebound. */
    char *raw;
    char raw_code;
} GuardedObject;

static PyTypeObject GuardedType;

static PyObject *str_acquire = NULL; /* interned method names */
static PyObject *str_release = NULL;
static PyObject *str_enter = NULL;
static PyObject *str_exit = NULL;
static PyObject *str_value = NULL;

/* ---- taking and giving back the lock ------------------------------------ */

/* `semlock`: serentak_is_semlock(lock), looked up once per guarded access. */
static int
guard_take(PyObject *lock, int semlock)
{
    if (semlock) {
        return serentak_semlock_acquire(lock);
    }
    PyObject *result = PyObject_CallMethodNoArgs(lock, str_acquire);
    if (result == NULL) {
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

static int
guard_give(PyObject *lock, int semlock)
{
    if (semlock) {
        return serentak_semlock_release(lock);
    }
    PyObject *result = PyObject_CallMethodNoArgs(lock, str_release);
    if (result == NULL) {
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

/* Release `lock` after the guarded operation that produced `result` (NULL if
 * it raised), as a `finally:` would: the release happens either way, and an
 * error from the release replaces the operation's, which becomes its context. */
static PyObject *
guard_give_after(PyObject *lock, int semlock, PyObject *result)
{
    if (result != NULL) {
        if (guard_give(lock, semlock) < 0) {
            Py_DECREF(result);
            return NULL;
        }
        return result;
    }
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    if (guard_give(lock, semlock) == 0) {
        PyErr_Restore(type, value, traceback);
        return NULL;
    }
    PyObject *type2, *value2, *traceback2;
    PyErr_Fetch(&type2, &value2, &traceback2);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (traceback != NULL && value != NULL) {
        PyException_SetTraceback(value, traceback);
    }
    PyErr_NormalizeException(&type2, &value2, &traceback2);
    if (value2 != NULL && value != NULL) {
        PyException_SetContext(value2, value); /* steals value */
        value = NULL;
    }
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
    PyErr_Restore(type2, value2, traceback2);
    return NULL;
}

/* The wrapper's object and lock, new references, and whether the lock is a
 * serentak SemLock; -1 if `self` is not a Guarded whose fields are set. */
static int
guard_parts(PyObject *self, PyObject **obj, PyObject **lock, int *semlock)
{
    if (!PyObject_TypeCheck(self, &GuardedType)) {
        PyErr_Format(PyExc_TypeError, "expected a synchronized wrapper, not %.100s",
                     Py_TYPE(self)->tp_name);
        return -1;
    }
    GuardedObject *guarded = (GuardedObject *)self;
    if (guarded->obj == NULL || guarded->lock == NULL) {
        PyErr_SetString(PyExc_AttributeError,
                        "synchronized wrapper used before its object and lock were set");
        return -1;
    }
    /* Held across the operation: a thread may rebind the fields meanwhile. */
    *obj = Py_NewRef(guarded->obj);
    *lock = Py_NewRef(guarded->lock);
    *semlock = serentak_is_semlock(guarded->lock);
    return 0;
}

/* ---- a simple value read and written in place ----------------------------- *
 *
 * `v.value` through ctypes is a generic attribute lookup on the ctypes
 * object, its getset, and a conversion keyed by the type's code; about 45 ns
 * of the ~170 ns an uncontended `with v.get_lock(): v.value += 1` took, all
 * of it inside the critical section. A Value's ctypes object is a view on
 * shared memory that cannot be resized (ctypes refuses for memory it does
 * not own), so its address is fixed: _bind_raw() records it, and `value` is
 * then converted here, as ctypes converts it (cfield.c: integers are
 * truncated to the type's width, as its setters do; floats cast), for the
 * exact int and float values it meets; any other value goes through ctypes
 * itself, so its errors and conversions stay ctypes' own. */

static Py_ssize_t
raw_size(char code)
{
    switch (code) {
    case 'b': case 'B': return 1;
    case 'h': case 'H': return (Py_ssize_t)sizeof(short);
    case 'i': case 'I': return (Py_ssize_t)sizeof(int);
    case 'l': case 'L': return (Py_ssize_t)sizeof(long);
    case 'q': case 'Q': return (Py_ssize_t)sizeof(long long);
    case 'f': return (Py_ssize_t)sizeof(float);
    case 'd': return (Py_ssize_t)sizeof(double);
    default: return 0;
    }
}

static PyObject *
raw_load(char code, const char *p)
{
    switch (code) {
    case 'b': return PyLong_FromLong(*(const signed char *)p);
    case 'B': return PyLong_FromLong(*(const unsigned char *)p);
    case 'h': return PyLong_FromLong(*(const short *)p);
    case 'H': return PyLong_FromLong(*(const unsigned short *)p);
    case 'i': return PyLong_FromLong(*(const int *)p);
    case 'I': return PyLong_FromUnsignedLong(*(const unsigned int *)p);
    case 'l': return PyLong_FromLong(*(const long *)p);
    case 'L': return PyLong_FromUnsignedLong(*(const unsigned long *)p);
    case 'q': return PyLong_FromLongLong(*(const long long *)p);
    case 'Q': return PyLong_FromUnsignedLongLong(*(const unsigned long long *)p);
    case 'f': return PyFloat_FromDouble(*(const float *)p);
    default: return PyFloat_FromDouble(*(const double *)p);
    }
}

/* 1 stored, 0 not a value stored here (let ctypes do it), -1 error. */
static int
raw_store(char code, char *p, PyObject *value)
{
    if (code == 'f' || code == 'd') {
        if (!PyFloat_CheckExact(value)) {
            return 0;
        }
        double x = PyFloat_AS_DOUBLE(value);
        if (code == 'f') {
            *(float *)p = (float)x;
        } else {
            *(double *)p = x;
        }
        return 1;
    }
    if (!PyLong_CheckExact(value)) {
        return 0; /* bool, an __index__ object, a float: ctypes' rules */
    }
    unsigned long long bits = PyLong_AsUnsignedLongLongMask(value);
    if (bits == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    switch (code) {
    case 'b': *(signed char *)p = (signed char)bits; break;
    case 'B': *(unsigned char *)p = (unsigned char)bits; break;
    case 'h': *(short *)p = (short)bits; break;
    case 'H': *(unsigned short *)p = (unsigned short)bits; break;
    case 'i': *(int *)p = (int)bits; break;
    case 'I': *(unsigned int *)p = (unsigned int)bits; break;
    case 'l': *(long *)p = (long)bits; break;
    case 'L': *(unsigned long *)p = (unsigned long)bits; break;
    case 'q': *(long long *)p = (long long)bits; break;
    default: *(unsigned long long *)p = bits; break;
    }
    return 1;
}

/* ---- the Guarded type ------------------------------------------------------- */

static int
guarded_traverse(GuardedObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->obj);
    Py_VISIT(self->lock);
    return 0;
}

static int
guarded_clear(GuardedObject *self)
{
    Py_CLEAR(self->obj);
    Py_CLEAR(self->lock);
    return 0;
}

static void
guarded_dealloc(GuardedObject *self)
{
    PyObject_GC_UnTrack(self);
    guarded_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
guarded_get_obj(GuardedObject *self, PyObject *unused)
{
    if (self->obj == NULL) {
        PyErr_SetString(PyExc_AttributeError, "_obj");
        return NULL;
    }
    return Py_NewRef(self->obj);
}

static PyObject *
guarded_obj_get(GuardedObject *self, void *closure)
{
    return guarded_get_obj(self, NULL);
}

static int
guarded_obj_set(GuardedObject *self, PyObject *value, void *closure)
{
    if (value == NULL && self->obj == NULL) {
        PyErr_SetString(PyExc_AttributeError, "_obj");
        return -1;
    }
    self->raw = NULL;
    self->raw_code = 0;
    Py_XSETREF(self->obj, Py_XNewRef(value));
    return 0;
}

/* _bind_raw(code): `value` reads and writes _obj's bytes in place from now on.
 * For a simple ctypes value whose memory it does not own (a view made with
 * from_buffer), of the type the array-module `code` names. */
static PyObject *
guarded_bind_raw(GuardedObject *self, PyObject *arg)
{
    const char *code = PyUnicode_Check(arg) ? PyUnicode_AsUTF8(arg) : NULL;
    if (code == NULL || code[0] == 0 || code[1] != 0 || raw_size(code[0]) == 0) {
        if (!PyErr_Occurred()) {
            PyErr_Format(PyExc_ValueError, "_bind_raw takes one of 'bBhHiIlLqQfd', not %R", arg);
        }
        return NULL;
    }
    if (self->obj == NULL) {
        PyErr_SetString(PyExc_AttributeError, "_bind_raw before _obj was set");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(self->obj, &view, PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    char *raw = view.buf;
    Py_ssize_t len = view.len;
    PyBuffer_Release(&view);
    if (len != raw_size(code[0])) {
        PyErr_Format(PyExc_ValueError, "_bind_raw(%R): the object has %zd bytes, not %zd", arg,
                     len, raw_size(code[0]));
        return NULL;
    }
    self->raw = raw;
    self->raw_code = code[0];
    Py_RETURN_NONE;
}

static PyObject *
guarded_get_lock(GuardedObject *self, PyObject *unused)
{
    if (self->lock == NULL) {
        PyErr_SetString(PyExc_AttributeError, "_lock");
        return NULL;
    }
    return Py_NewRef(self->lock);
}

static PyObject *
guarded_enter(GuardedObject *self, PyObject *unused)
{
    PyObject *lock = guarded_get_lock(self, NULL);
    if (lock == NULL) {
        return NULL;
    }
    PyObject *result;
    if (serentak_is_semlock(lock)) {
        result = serentak_semlock_acquire(lock) < 0 ? NULL : Py_NewRef(Py_True);
    } else {
        result = PyObject_CallMethodNoArgs(lock, str_enter);
    }
    Py_DECREF(lock);
    return result;
}

static PyObject *
guarded_exit(GuardedObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *lock = guarded_get_lock(self, NULL);
    if (lock == NULL) {
        return NULL;
    }
    PyObject *result;
    if (serentak_is_semlock(lock)) {
        result = serentak_semlock_release(lock) < 0 ? NULL : Py_NewRef(Py_None);
    } else {
        PyObject *method = PyObject_GetAttr(lock, str_exit);
        result = method == NULL ? NULL : PyObject_Vectorcall(method, args, (size_t)nargs, NULL);
        Py_XDECREF(method);
    }
    Py_DECREF(lock);
    return result;
}

static PyObject *
guarded_getitem(PyObject *self, PyObject *index)
{
    PyObject *obj, *lock;
    int semlock;
    if (guard_parts(self, &obj, &lock, &semlock) < 0) {
        return NULL;
    }
    PyObject *result = NULL;
    if (guard_take(lock, semlock) == 0) {
        result = guard_give_after(lock, semlock, PyObject_GetItem(obj, index));
    }
    Py_DECREF(obj);
    Py_DECREF(lock);
    return result;
}

static PyObject *
guarded_setitem(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "__setitem__ takes exactly 2 arguments");
        return NULL;
    }
    PyObject *obj, *lock;
    int semlock;
    if (guard_parts(self, &obj, &lock, &semlock) < 0) {
        return NULL;
    }
    PyObject *result = NULL;
    if (guard_take(lock, semlock) == 0) {
        int rc = PyObject_SetItem(obj, args[0], args[1]);
        result = guard_give_after(lock, semlock, rc < 0 ? NULL : Py_NewRef(Py_None));
    }
    Py_DECREF(obj);
    Py_DECREF(lock);
    return result;
}

static PyMethodDef guarded_methods[] = {
    {"get_obj", (PyCFunction)guarded_get_obj, METH_NOARGS,
     "The wrapped ctypes object (access it under the lock)."},
    {"get_lock", (PyCFunction)guarded_get_lock, METH_NOARGS, "The lock that guards the object."},
    {"__enter__", (PyCFunction)guarded_enter, METH_NOARGS, "Acquire the lock."},
    {"__exit__", (PyCFunction)(void (*)(void))guarded_exit, METH_FASTCALL, "Release the lock."},
    {"locked_getitem", (PyCFunction)guarded_getitem, METH_O, "obj[index], under the lock."},
    {"_bind_raw", (PyCFunction)guarded_bind_raw, METH_O,
     "_bind_raw(code): `value` reads and writes the bytes of _obj, a simple ctypes view\n"
     "on memory it does not own, in place (code: its array-module typecode)."},
    {"locked_setitem", (PyCFunction)(void (*)(void))guarded_setitem, METH_FASTCALL,
     "obj[index] = value, under the lock."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef guarded_members[] = {
    {"_lock", T_OBJECT_EX, offsetof(GuardedObject, lock), 0, "The lock that guards it."},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef guarded_getset[] = {
    {"_obj", (getter)guarded_obj_get, (setter)guarded_obj_set, "The ctypes object.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject GuardedType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "serentak._os._native.Guarded",
    .tp_doc = "Guarded()\n\nA ctypes object (_obj) and the lock (_lock) that guards it: the\n"
              "base of the synchronized wrappers. Set both before use.",
    .tp_basicsize = sizeof(GuardedObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_traverse = (traverseproc)guarded_traverse,
    .tp_clear = (inquiry)guarded_clear,
    .tp_dealloc = (destructor)guarded_dealloc,
    .tp_methods = guarded_methods,
    .tp_members = guarded_members,
    .tp_getset = guarded_getset,
};

/* ---- the GuardedField descriptor ------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *name; /* the ctypes object's attribute, e.g. 'value' */
    PyObject *doc;
} FieldObject;

static int
field_init(FieldObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"name", "doc", NULL};
    PyObject *name, *doc = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "U|O:GuardedField", kwlist, &name, &doc)) {
        return -1;
    }
    Py_INCREF(name);
    PyUnicode_InternInPlace(&name);
    Py_XSETREF(self->name, name);
    Py_XSETREF(self->doc, Py_NewRef(doc));
    return 0;
}

static void
field_dealloc(FieldObject *self)
{
    Py_CLEAR(self->name);
    Py_CLEAR(self->doc);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
field_get(FieldObject *self, PyObject *instance, PyObject *owner)
{
    if (instance == NULL) {
        return Py_NewRef((PyObject *)self);
    }
    if (self->name == NULL) {
        PyErr_SetString(PyExc_ValueError, "GuardedField used before __init__");
        return NULL;
    }
    PyObject *obj, *lock;
    int semlock;
    if (guard_parts(instance, &obj, &lock, &semlock) < 0) {
        return NULL;
    }
    PyObject *result = NULL;
    /* Taken with obj (no thread can run in between): valid while we hold obj,
     * even if another thread rebinds _obj while we wait for the lock. */
    char *raw = ((GuardedObject *)instance)->raw;
    char code = ((GuardedObject *)instance)->raw_code;
    if (raw != NULL && self->name == str_value) {
        /* No Python code runs here, so inside `with v.get_lock():` the
         * RLock needs no re-entry: nothing could release it meanwhile. */
        if (semlock && serentak_semlock_held_rlock(lock)) {
            result = raw_load(code, raw);
        } else if (guard_take(lock, semlock) == 0) {
            result = guard_give_after(lock, semlock, raw_load(code, raw));
        }
    } else if (guard_take(lock, semlock) == 0) {
        result = guard_give_after(lock, semlock, PyObject_GetAttr(obj, self->name));
    }
    Py_DECREF(obj);
    Py_DECREF(lock);
    return result;
}

static int
field_set(FieldObject *self, PyObject *instance, PyObject *value)
{
    if (self->name == NULL) {
        PyErr_SetString(PyExc_ValueError, "GuardedField used before __init__");
        return -1;
    }
    if (value == NULL) {
        PyErr_Format(PyExc_AttributeError, "cannot delete the synchronized field '%U'", self->name);
        return -1;
    }
    PyObject *obj, *lock;
    int semlock;
    if (guard_parts(instance, &obj, &lock, &semlock) < 0) {
        return -1;
    }
    int rc = -1;
    char *raw = ((GuardedObject *)instance)->raw; /* see field_get */
    char code = ((GuardedObject *)instance)->raw_code;
    int in_place = raw != NULL && self->name == str_value &&
                   (PyLong_CheckExact(value) || PyFloat_CheckExact(value));
    if (in_place && semlock && serentak_semlock_held_rlock(lock)) {
        rc = raw_store(code, raw, value);
        if (rc == 0) {
            rc = PyObject_SetAttr(obj, self->name, value);
        }
        rc = rc < 0 ? -1 : 0;
    } else if (guard_take(lock, semlock) == 0) {
        int set = in_place ? raw_store(code, raw, value) : 0;
        if (set == 0) {
            set = PyObject_SetAttr(obj, self->name, value);
        }
        PyObject *done = guard_give_after(lock, semlock, set < 0 ? NULL : Py_NewRef(Py_None));
        rc = done == NULL ? -1 : 0;
        Py_XDECREF(done);
    }
    Py_DECREF(obj);
    Py_DECREF(lock);
    return rc;
}

static PyMemberDef field_members[] = {
    {"name", T_OBJECT_EX, offsetof(FieldObject, name), READONLY, "The guarded attribute."},
    {"__doc__", T_OBJECT, offsetof(FieldObject, doc), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject FieldType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "serentak._os._native.GuardedField",
    .tp_doc = "GuardedField(name, doc=None)\n\nOn a Guarded subclass: the attribute `name` of "
              "its ctypes object,\nread and written under its lock.",
    .tp_basicsize = sizeof(FieldObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)field_init,
    .tp_dealloc = (destructor)field_dealloc,
    .tp_descr_get = (descrgetfunc)field_get,
    .tp_descr_set = (descrsetfunc)field_set,
    .tp_members = field_members,
};

int
serentak_guarded_init(PyObject *module)
{
    str_acquire = PyUnicode_InternFromString("acquire");
    str_release = PyUnicode_InternFromString("release");
    str_enter = PyUnicode_InternFromString("__enter__");
    str_exit = PyUnicode_InternFromString("__exit__");
    str_value = PyUnicode_InternFromString("value");
    if (str_acquire == NULL || str_release == NULL || str_enter == NULL || str_exit == NULL ||
        str_value == NULL) {
        return -1;
    }
    if (PyType_Ready(&GuardedType) < 0 || PyType_Ready(&FieldType) < 0) {
        return -1;
    }
    Py_INCREF(&GuardedType);
    if (PyModule_AddObject(module, "Guarded", (PyObject *)&GuardedType) < 0) {
        Py_DECREF(&GuardedType);
        return -1;
    }
    Py_INCREF(&FieldType);
    if (PyModule_AddObject(module, "GuardedField", (PyObject *)&FieldType) < 0) {
        Py_DECREF(&FieldType);
        return -1;
    }
    return 0;
}
